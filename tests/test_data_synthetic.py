"""The demo generator writes the published layout, deterministically, with visible targets; and
``python -m data check`` passes it and fails a tree with defects (issue 3)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import UAVSegDataset, generate_demo_dataset
from data.check import COLUMNS
from data.synthetic import generate_sequence, split_sequences

from .conftest import HANG_GUARD_S

REPO = Path(__file__).resolve().parents[1]
SMALL = {"sequences": 3, "frames": 4, "size": 96}


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """A demo dataset large enough for statistics: 8 sequences of 20 frames."""
    return generate_demo_dataset(
        tmp_path_factory.mktemp("demo"), seed=3, sequences=8, frames=20, size=160
    )


def test_the_same_seed_gives_identical_files_and_another_seed_different_ones(tmp_path):
    a = tree_hashes(generate_demo_dataset(tmp_path / "a", seed=7, **SMALL))
    b = tree_hashes(generate_demo_dataset(tmp_path / "b", seed=7, **SMALL))
    c = tree_hashes(generate_demo_dataset(tmp_path / "c", seed=8, **SMALL))
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_the_layout_is_the_published_one_split_by_sequence(tmp_path):
    root = generate_demo_dataset(tmp_path, seed=0, **SMALL)
    frames = [f"{t:06d}" for t in range(SMALL["frames"])]
    by_split = {}
    for split in ("train", "val", "test"):
        inputs = root / "UAVSemanticSegmentationInput" / split
        labels = root / "UAVSemanticSegmentationLabels" / split
        by_split[split] = sorted(p.name for p in inputs.iterdir())
        assert by_split[split] == sorted(p.name for p in labels.iterdir())
        for seq in by_split[split]:
            for modality in ("visible", "infrared"):
                assert sorted(p.name for p in (inputs / seq / modality).iterdir()) == [
                    f"{f}.jpg" for f in frames
                ]
                assert sorted(p.name for p in (labels / seq / modality).iterdir()) == [
                    f"{f}_mask.png" for f in frames
                ]
    assert by_split == {"train": ["seq001"], "val": ["seq002"], "test": ["seq003"]}


def test_frames_are_16_9_visible_and_5_4_infrared_some_single_channel(tmp_path):
    root = generate_demo_dataset(tmp_path, seed=0, **SMALL)
    vl = Image.open(root / "UAVSemanticSegmentationInput/train/seq001/visible/000000.jpg")
    ir_modes = {
        Image.open(p).mode for p in root.glob("UAVSemanticSegmentationInput/*/*/infrared/*.jpg")
    }
    ir = Image.open(root / "UAVSemanticSegmentationInput/train/seq001/infrared/000000.jpg")
    assert vl.size == (96, 54) and vl.mode == "RGB"
    assert ir.size == (48, 38)
    assert ir_modes == {"L", "RGB"}


def test_the_default_demo_gives_800_160_320_images():
    assert split_sequences(16) == {"train": 10, "val": 2, "test": 4}  # x 40 frames x 2 modalities
    with pytest.raises(ValueError, match="sequences"):
        split_sequences(2)


def test_about_a_fifth_of_frames_show_no_uav(demo_root):
    masks = list(demo_root.glob("UAVSemanticSegmentationLabels/*/*/*/*_mask.png"))
    empty = np.mean([not np.asarray(Image.open(p)).any() for p in masks])
    assert 0.1 <= empty <= 0.35


def test_uavs_range_from_a_few_pixels_to_passing_near_the_camera(demo_root):
    extents = []
    for p in demo_root.glob("UAVSemanticSegmentationLabels/*/*/visible/*_mask.png"):
        ys, xs = np.nonzero(np.asarray(Image.open(p)))
        if len(xs):
            extents.append(max(np.ptp(xs), np.ptp(ys)) + 1)
    width = 160
    assert min(extents) <= 0.04 * width and max(extents) >= 0.4 * width
    assert np.median(extents) >= 0.04 * width  # most are visible after resizing to 128x128


def test_the_demo_test_subset_has_every_uav_size_bin_and_frames_without_one(tmp_path):
    # The default demo's test split is sequences 13-16 (indices 12-15); the demo config tests a
    # subset of it. Every size bin of the breakdowns needs at least 10 images there.
    from engine.breakdown import SIZE_BINS, size_bin
    from engine.config import load_config

    counts = split_sequences(16)
    first = counts["train"] + counts["val"]
    for index in range(first, first + counts["test"]):
        generate_sequence(tmp_path, "test", f"seq{index + 1:03d}", 0, index, 40, 320)
    cfg = load_config("dasnet", demo=True)
    ds = UAVSegDataset(
        tmp_path, "test", max_samples=cfg.dataset.test_max_samples, seed=cfg.dataset.seed
    )
    bins = Counter(
        size_bin(np.asarray(Image.open(s.mask_path)).astype(bool).mean()) for s in ds.samples
    )
    assert len(ds) == 160
    for name in [*(b for b, _, _ in SIZE_BINS), "empty"]:
        assert bins[name] >= 10, bins


def test_infrared_targets_are_hot_and_visible_targets_contrast(demo_root):
    for modality in ("infrared", "visible"):
        ds = UAVSegDataset(
            demo_root, "train", image_size=128, modality=modality, mask_resize="nearest"
        )
        inside, contrast = [], []
        for i in range(0, len(ds), 3):
            item = ds[i]
            mask = item["mask"][0].bool()
            if mask.sum() < 4:
                continue
            gray = item["image"].mean(0)
            inside.append(float(gray[mask].mean() - gray[~mask].mean()))
            contrast.append(abs(inside[-1]))
        if modality == "infrared":
            assert np.mean(inside) > 0.2  # bright (hot) against the background
        else:
            assert np.median(contrast) > 0.15


def test_the_cli_output_passes_data_check(tmp_path):
    out = tmp_path / "demo"
    gen = run_module(
        "data.synthetic",
        "--out",
        str(out),
        "--seed",
        "1",
        "--sequences",
        "3",
        "--frames",
        "3",
        "--size",
        "64",
    )
    assert gen.returncode == 0, gen.stderr
    check = run_module("data", "check", str(out))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no defects" in check.stdout
    for split in ("train", "val", "test"):
        ds = UAVSegDataset(out, split, image_size=32)
        assert len(ds) == 6 and len(ds.pairs) == 3


def test_data_check_fails_on_defects_and_names_the_files(tmp_path):
    root = generate_demo_dataset(tmp_path, seed=0, **SMALL)
    frames = root / "UAVSemanticSegmentationInput/train/seq001/visible"
    labels = root / "UAVSemanticSegmentationLabels/train/seq001/visible"
    (labels / "000001_mask.png").unlink()
    truncated = frames / "000002.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    Image.new("L", (10, 10)).save(labels / "000003_mask.png")
    result = run_module("data", "check", str(root))
    assert result.returncode == 1
    assert str(frames / "000001.jpg") in result.stdout
    assert str(truncated) in result.stdout
    assert str(labels / "000003_mask.png") in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("train  visible"))
    counts = dict(zip(COLUMNS, map(int, row.split()[2:]), strict=True))
    assert counts["frames"] == 4 and counts["masks"] == 3 and counts["pairs"] == 3
    assert counts["frames_without_mask"] == 1 and counts["masks_without_frame"] == 0
    assert counts["unreadable"] == 1 and counts["size_mismatch"] == 1


def test_data_check_names_a_missing_root(tmp_path):
    result = run_module("data", "check", str(tmp_path / "absent"))
    assert result.returncode == 2 and str(tmp_path / "absent") in result.stderr


def test_regenerating_replaces_a_demo_but_never_other_data(tmp_path):
    generate_demo_dataset(tmp_path / "demo", seed=0, **SMALL)
    generate_demo_dataset(tmp_path / "demo", seed=0, sequences=3, frames=2, size=96)
    assert len(list((tmp_path / "demo").glob("UAVSemanticSegmentationInput/*/*/*/*.jpg"))) == 12
    (tmp_path / "real" / "UAVSemanticSegmentationInput").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a generated demo"):
        generate_demo_dataset(tmp_path / "real")
