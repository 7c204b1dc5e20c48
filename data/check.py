"""Audit a dataset root: counts per split and modality, and every defect by file name.

    python -m data check ROOT [--workers N] [--decode-images]

Masks are decoded (to count empty ones); images are checked from their header and end marker,
or fully decoded with --decode-images. Exit status: 0 clean, 1 defects found, 2 not a dataset.
Empty masks are counted but are no defect: many real frames show no UAV. A mask holding JPEG
data is one: its compression noise becomes UAV pixels under the paper's > 0 rule.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .decode import (
    MaskSizeError,
    check_sizes,
    decode_image,
    decode_mask,
    is_jpeg_mask,
    open_file,
    probe_file,
)
from .index import scan_split
from .layout import MODALITIES, SPLITS, DatasetError, find_layout

COLUMNS = (
    "frames",
    "masks",
    "pairs",
    "frames_without_mask",
    "masks_without_frame",
    "empty_masks",
    "unreadable",
    "size_mismatch",
    "jpeg_masks",
)
DEFECT_COLUMNS = (
    "frames_without_mask",
    "masks_without_frame",
    "unreadable",
    "size_mismatch",
    "jpeg_masks",
)


@dataclass
class Report:
    """Counts per (split, modality) and the defects, one message naming the file(s) each."""

    rows: dict[tuple[str, str], Counter] = field(default_factory=dict)
    defects: list[str] = field(default_factory=list)


def inspect(image_path: str | None, mask_path: str | None, decode: bool) -> tuple[str, str, bool]:
    """Check one pair, or a lone frame or mask: (problem or "", its message, mask is empty)."""
    try:
        if image_path:
            size = probe_file(image_path, "image")
            if decode:
                with open_file(image_path, "image") as im:
                    decode_image(im, image_path, None)
        empty = False
        if mask_path:
            with open_file(mask_path, "mask") as mk:
                if image_path:
                    check_sizes(image_path, mask_path, size, mk.size)
                empty = not decode_mask(mk, mask_path).any()
                if is_jpeg_mask(mk):
                    return "jpeg_masks", f"mask holds JPEG data (lossy): '{mask_path}'", empty
        return "", "", empty
    except MaskSizeError as exc:
        return "size_mismatch", str(exc), False
    except DatasetError as exc:
        return "unreadable", str(exc), False


def _inspect_job(job: tuple[str | None, str | None, bool]) -> tuple[str, str, bool]:
    return inspect(*job)


def check_root(root: str | Path, workers: int = 1, decode_images: bool = False) -> Report:
    """Scan every split afresh (no cache) and inspect every file; see the module docstring."""
    layout = find_layout(root)
    report = Report()
    for split in SPLITS:
        if not (layout.image_split(split).is_dir() and layout.label_split(split).is_dir()):
            report.defects.append(
                f"split '{split}' missing: '{layout.image_split(split)}' or "
                f"'{layout.label_split(split)}' is not a folder"
            )
            continue
        index, _ = scan_split(layout, split)
        for modality in MODALITIES:
            groups = [g for g in index.groups if g.modality == modality]
            row = Counter(index.counts((modality,)))
            row.pop("samples")
            jobs = []
            for g in groups:
                jobs += [(g.image_path(n), g.mask_path(n), decode_images) for n in g.frames]
                jobs += [(g.image_path(n), None, decode_images) for n in g.frames_without_mask]
                jobs += [(None, os.path.join(g.mask_dir, n), False) for n in g.masks_without_frame]
                report.defects += [
                    f"frame without a mask: '{g.image_path(n)}'" for n in g.frames_without_mask
                ]
                report.defects += [
                    f"mask without a frame: '{os.path.join(g.mask_dir, n)}'"
                    for n in g.masks_without_frame
                ]
            if workers > 1 and len(jobs) > 256:
                with ProcessPoolExecutor(workers) as pool:
                    results = list(pool.map(_inspect_job, jobs, chunksize=64))
            else:
                results = [inspect(*job) for job in jobs]
            for problem, message, empty in results:
                row["empty_masks"] += empty
                if problem:
                    row[problem] += 1
                    report.defects.append(message)
            if not jobs:
                report.defects.append(
                    f"split '{split}' has no {modality} frames under '{layout.image_split(split)}'"
                )
            report.rows[split, modality] = row
    return report


def format_report(report: Report, limit: int = 50) -> str:
    """The counts as a table, then the first ``limit`` defects."""
    width = [max(len(c), 7) for c in COLUMNS]
    lines = [
        "split  modality  " + "  ".join(c.rjust(w) for c, w in zip(COLUMNS, width, strict=True))
    ]
    for (split, modality), row in report.rows.items():
        cells = "  ".join(str(row[c]).rjust(w) for c, w in zip(COLUMNS, width, strict=True))
        lines.append(f"{split:<5}  {modality:<8}  {cells}")
    if report.defects:
        lines.append(f"\n{len(report.defects)} defect(s):")
        lines += [f"  {d}" for d in report.defects[:limit]]
        if len(report.defects) > limit:
            lines.append(f"  ... and {len(report.defects) - limit} more")
    else:
        lines.append("\nno defects")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("root", help="dataset root (holds UAVSemanticSegmentationInput/Labels)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument(
        "--decode-images",
        action="store_true",
        help="fully decode every image (slow) instead of header and end marker",
    )
    parser.add_argument("--limit", type=int, default=50, help="defects to list")
    args = parser.parse_args(argv)
    try:
        report = check_root(args.root, args.workers, args.decode_images)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report, args.limit))
    return 1 if report.defects else 0
