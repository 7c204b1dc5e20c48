"""Benchmark the dataset at scale: index vs re-open, and draft-mode decoding vs a plain decode.

    python benchmarks/bench_data.py [--dir DIR] [--files 100000] [--images 24]

1. Index: a tree of >= --files placeholder files (empty .jpg/_mask.png, which the index never
   opens) in the published layout; the time of the first UAVSegDataset (scan and cache write)
   against re-opening it (stat the folders, read the cache). Target: re-open >= 20x faster.
2. Decode: 1920x1080 JPEG frames (demo scenes with sensor noise added, so that they compress
   like camera frames) loaded at 512x512 by the dataset's loader against a plain full decode
   and bilinear resize of the same files with Pillow, both on one core. Target: >= 2x faster.

The first scan runs with the file system's caches warm (the tree was just written), the most
favourable case for it; on a cold disk or a network share the re-open gains far more.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import UAVSegDataset, generate_demo_dataset  # noqa: E402
from data.decode import decode_image, read_pair  # noqa: E402
from data.index import load_index, scan_split  # noqa: E402
from data.layout import find_layout  # noqa: E402

FRAMES_PER_FOLDER = 250
SIZE = (512, 512)


def build_placeholder_tree(root: Path, files: int) -> int:
    """Empty frames and masks for both modalities in the published layout; the file count."""
    sequences = math.ceil(files / (4 * FRAMES_PER_FOLDER))
    count = 0
    for s in range(sequences):
        for top, suffix in (
            ("UAVSemanticSegmentationInput", ".jpg"),
            ("UAVSemanticSegmentationLabels", "_mask.png"),
        ):
            for modality in ("visible", "infrared"):
                folder = root / top / "train" / f"seq{s:04d}" / modality
                folder.mkdir(parents=True, exist_ok=True)
                for t in range(FRAMES_PER_FOLDER):
                    os.close(os.open(folder / f"{t:06d}{suffix}", os.O_CREAT | os.O_WRONLY))
                    count += 1
    return count


def timed(fn, repeat: int = 1) -> float:
    """Median wall time of ``repeat`` calls, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_index(root: Path, files: int, repeat: int) -> float:
    print(f"building a placeholder tree of >= {files:,} files in {root} ...", flush=True)
    start = time.perf_counter()
    n = build_placeholder_tree(root, files)
    print(f"  {n:,} files written in {time.perf_counter() - start:.1f} s")
    cache = root / ".uavseg_index_train.json"
    cache.unlink(missing_ok=True)
    first = timed(lambda: UAVSegDataset(root, "train"))
    size = cache.stat().st_size
    reopen = timed(lambda: UAVSegDataset(root, "train"), repeat)
    scan = timed(lambda: scan_split(find_layout(root), "train"))
    cached = timed(lambda: load_index(root, "train"), repeat)
    ds = UAVSegDataset(root, "train")
    print(f"  samples: {len(ds):,}, pairs: {ds.stats.pairs:,}, cache file: {size / 1e6:.1f} MB")
    print(f"  first index (scan, write cache): {first * 1e3:8.1f} ms  (scan: {scan * 1e3:.1f} ms)")
    print(
        f"  re-open (stat dirs, read cache): {reopen * 1e3:8.1f} ms  (index: {cached * 1e3:.1f} ms)"
    )
    ratio = first / reopen
    print(f"  re-open speed-up: {ratio:.1f}x (target >= 20x)")
    return ratio


def make_hd_frames(root: Path, images: int) -> list[str]:
    """1920x1080 demo frames with camera-like noise, re-encoded at JPEG quality 92."""
    demo = generate_demo_dataset(
        root / "demo", seed=0, sequences=3, frames=math.ceil(images / 3), size=1920
    )
    paths = sorted(demo.glob("UAVSemanticSegmentationInput/*/*/visible/*.jpg"))[:images]
    rng = np.random.default_rng(0)
    for p in paths:
        pixels = np.asarray(Image.open(p), dtype=np.float32)
        noisy = pixels + rng.normal(0, 6, pixels.shape).astype(np.float32)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(p, quality=92)
    return [str(p) for p in paths]


def plain_load(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((SIZE[1], SIZE[0]), Image.Resampling.BILINEAR))


def draft_load(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return decode_image(im, path, SIZE)


def bench_decode(root: Path, images: int, repeat: int) -> float:
    torch.set_num_threads(1)  # as in a DataLoader worker, and as Pillow runs: one core each
    print(f"writing {images} 1920x1080 JPEG frames ...", flush=True)
    paths = make_hd_frames(root, images)
    mb = np.mean([os.path.getsize(p) for p in paths]) / 1e6
    print(f"  {len(paths)} frames, {mb:.2f} MB each on average")
    for p in paths:  # warm the page cache so that both sides read from memory
        plain_load(p)
    plain = timed(lambda: [plain_load(p) for p in paths], repeat) / len(paths)
    draft = timed(lambda: [draft_load(p) for p in paths], repeat) / len(paths)
    masks = [p.replace("Input", "Labels").replace(".jpg", "_mask.png") for p in paths]
    pair = timed(
        lambda: [read_pair(p, m, SIZE) for p, m in zip(paths, masks, strict=True)], repeat
    ) / len(paths)
    print(f"  plain full decode + resize to 512x512: {plain * 1e3:6.1f} ms/image")
    print(f"  dataset loader (draft + resize):       {draft * 1e3:6.1f} ms/image")
    print(f"  dataset loader, image and mask:        {pair * 1e3:6.1f} ms/pair")
    ratio = plain / draft
    print(f"  decode speed-up: {ratio:.1f}x (target >= 2x)")
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, help="work folder (default: a temporary one, removed)")
    p.add_argument("--files", type=int, default=100_000, help="files in the index tree")
    p.add_argument("--images", type=int, default=24, help="1920x1080 frames to decode")
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions (median)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        index_ratio = bench_index(Path(tmp) / "tree", args.files, args.repeat)
        decode_ratio = bench_decode(Path(tmp), args.images, max(1, args.repeat // 2))
    print(
        f"\nsummary: re-open {index_ratio:.1f}x faster than the first index; "
        f"loading {decode_ratio:.1f}x faster than a plain decode"
    )


if __name__ == "__main__":
    main()
