"""Where a model fails: per-image records of a test pass and the breakdowns built from them.

One pass over a split records, for every image, its file, modality, sequence, original frame
size, ground-truth UAV area (a fraction of the original-size mask) and the paper's four metrics
at every threshold of a sweep. From those records come the results' breakdowns: per sequence,
per UAV size bin (frames without a UAV counted apart, with their false-positive rate), the
threshold sweep, and the per-image CSV for the user's own analysis.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.decode import decode_mask, open_file, read_pair

from . import distributed as dist
from .checkpoint import atomic_write_text
from .inference_modes import Segmenter
from .metrics import METRICS, MetricTotals, per_image_scores

# Ground-truth UAV area as a fraction of the frame: [low, high).
SIZE_BINS: tuple[tuple[str, float, float], ...] = (
    ("tiny", 0.0, 0.001),
    ("small", 0.001, 0.01),
    ("medium", 0.01, 0.05),
    ("large", 0.05, math.inf),
)
EMPTY = "empty"  # frames without a UAV
CSV_COLUMNS = (
    "file",
    "modality",
    "sequence",
    "height",
    "width",
    "uav_area",
    "iou",
    "dice",
    "precision",
    "recall",
)


def size_bin(area: float) -> str:
    """The bin of a ground-truth UAV area fraction; 0 is ``empty``."""
    if area <= 0:
        return EMPTY
    for name, low, high in SIZE_BINS:
        if low <= area < high:
            return name
    raise ValueError(f"UAV area fraction {area} outside [0, 1]")


class ImageRecords:
    """Per-image rows of one split at the main threshold, and their scores at every sweep
    threshold (images x thresholds x METRICS), gathered from every process on demand."""

    def __init__(self, thresholds: Sequence[float], threshold: float) -> None:
        self.thresholds = [float(t) for t in thresholds]
        self.threshold = float(threshold)
        self.rows: list[dict[str, Any]] = []
        self.sweep: list[list[list[float]]] = []

    def add(self, logits: Tensor, masks: Tensor, info: Sequence[dict[str, Any]]) -> None:
        """A batch's logits and masks (Bx1xHxW) and, per image, file/modality/sequence/size/area."""
        main = per_image_scores(logits, masks, self.threshold)
        swept = torch.stack(
            [
                torch.stack([s[m] for m in METRICS], 1)
                for s in (per_image_scores(logits, masks, t) for t in self.thresholds)
            ],
            1,
        )  # B x T x METRICS
        for i, item in enumerate(info):
            self.rows.append(
                {
                    "file": item["file"],
                    "modality": item["modality"],
                    "sequence": item["sequence"],
                    "height": int(item["height"]),
                    "width": int(item["width"]),
                    "uav_area": float(item["area"]),
                    "iou": main["miou"][i].item(),
                    "dice": main["dice"][i].item(),
                    "precision": main["precision"][i].item(),
                    "recall": main["recall"][i].item(),
                }
            )
        self.sweep += swept.double().cpu().tolist()

    def gathered(self) -> ImageRecords:
        """Every process's records in one (the same object with one process)."""
        if not dist.is_distributed():
            return self
        parts: list[Any] = [None] * dist.world_size()
        torch.distributed.all_gather_object(parts, (self.rows, self.sweep))
        out = ImageRecords(self.thresholds, self.threshold)
        for rows, sweep in parts:
            out.rows += rows
            out.sweep += sweep
        order = sorted(range(len(out.rows)), key=lambda i: out.rows[i]["file"])
        out.rows = [out.rows[i] for i in order]
        out.sweep = [out.sweep[i] for i in order]
        return out

    def __len__(self) -> int:
        return len(self.rows)


class EvalFrames(Dataset):
    """A split's items with what the breakdowns need: file, sequence, original frame size and
    UAV area of the original-size mask.

    ``native=False`` keeps the dataset's own item (resized image and mask, the paper's path) and
    reads the original mask only for its area; ``native=True`` gives the image and mask as
    stored (for pad and slide), so items differ in size: batch them with ``collate_list``.
    """

    def __init__(self, dataset, native: bool) -> None:
        self.dataset, self.native = dataset, native
        self.samples = dataset.samples

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        if self.native:
            image, mask = read_pair(s.image_path, s.mask_path, None)
            item = {
                "image": image.float().div_(255),
                "mask": mask[None].float(),
                "modality": s.modality,
                "name": s.name,
            }
        else:
            item = self.dataset[i]
            with open_file(s.mask_path, "mask") as im:
                mask = decode_mask(im, s.mask_path, None)
        height, width = mask.shape[-2:]
        item.update(
            file=s.image_path,
            sequence=s.sequence,
            height=height,
            width=width,
            area=mask.sum().item() / (height * width),
        )
        return item


def collate_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items of different sizes stay a list (module level, so DataLoader workers can pickle it)."""
    return items


def _infos(batch: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("file", "modality", "sequence", "height", "width", "area")
    return [{k: batch[k][i] for k in keys} for i in range(len(batch["file"]))]


@torch.inference_mode()
def run_recorded(
    model: torch.nn.Module,
    segmenter: Segmenter | None,
    loader: DataLoader,
    device: torch.device,
    records: ImageRecords,
    groups: Sequence[str],
    memory_format: torch.memory_format = torch.contiguous_format,
    on_prediction=None,
    desc: str = "test",
) -> MetricTotals:
    """One pass over a loader of EvalFrames: the paper's metric totals and per-image records.

    ``segmenter=None`` is the paper's path, exactly as ``evaluate.run_split`` runs it (the
    dataset's resized batch, one forward); otherwise the segmenter runs each group of same-size
    frames at native resolution. ``on_prediction(name, logits)`` sees every image's logits.
    """
    from .losses import main_logits

    model.eval()
    metrics = MetricTotals(groups, device)
    for batch in tqdm(
        loader, desc=desc, leave=False, disable=not dist.is_main(), dynamic_ncols=True
    ):
        if segmenter is None:
            images = batch["image"].to(device, non_blocking=True, memory_format=memory_format)
            masks = batch["mask"].to(device, non_blocking=True)
            parts = [(main_logits(model(images)).float(), masks, _infos(batch), batch["name"])]
        else:
            by_size: dict[tuple[int, ...], list[dict[str, Any]]] = {}
            for item in batch:
                by_size.setdefault(tuple(item["image"].shape), []).append(item)
            parts = []
            for items in by_size.values():
                images = torch.stack([it["image"] for it in items]).to(device)
                masks = torch.stack([it["mask"] for it in items]).to(device)
                parts.append((segmenter(images), masks, items, [it["name"] for it in items]))
        for logits, masks, infos, names in parts:
            metrics.update(logits, masks, [i["modality"] for i in infos], records.threshold)
            records.add(logits, masks, infos)
            if on_prediction is not None:
                for name, logit in zip(names, logits, strict=True):
                    on_prediction(name, logit)
    dist.all_reduce_sum(metrics.sums)
    return metrics


class PredictionWriter:
    """Predicted masks (0/255 PNG, at the resolution the metrics used) under
    ``<results stem>_predictions/<sequence>/<modality>/<frame>.png``.

    Written to a ``.partial`` folder that replaces the old one only when the run completes, so a
    failed run leaves the previous predictions as they were and no half-written folder.
    """

    def __init__(self, results: Path, threshold: float) -> None:
        self.folder = results.with_name(f"{results.stem}_predictions")
        self.partial = self.folder.with_name(f".{self.folder.name}.partial")
        self.threshold = threshold
        shutil.rmtree(self.partial, ignore_errors=True)

    def __call__(self, name: str, logits: Tensor) -> None:
        """Save one image's mask; ``name`` is the sample's ``sequence/modality/frame``."""
        # >= as smp.metrics.get_stats binarises, so the PNG is the mask the metrics scored
        mask = (torch.sigmoid(logits[0]) >= self.threshold).to(torch.uint8).mul_(255)
        path = self.partial / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.cpu().numpy()).save(path)

    def commit(self) -> None:
        """Replace the previous predictions with this run's."""
        if self.folder.exists():
            shutil.rmtree(self.folder)
        if self.partial.exists():
            os.replace(self.partial, self.folder)
        else:
            self.folder.mkdir(parents=True)

    def discard(self) -> None:
        """Drop whatever an unfinished run wrote."""
        shutil.rmtree(self.partial, ignore_errors=True)


def _means(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    return {
        "images": n,
        "miou": sum(r["iou"] for r in rows) / n if n else math.nan,
        "dice": sum(r["dice"] for r in rows) / n if n else math.nan,
        "precision": sum(r["precision"] for r in rows) / n if n else math.nan,
        "recall": sum(r["recall"] for r in rows) / n if n else math.nan,
    }


def by_sequence(records: ImageRecords) -> dict[str, dict[str, Any]]:
    """Images, mIoU, Dice (and precision, recall) per sequence, both modalities together."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in records.rows:
        groups.setdefault(row["sequence"], []).append(row)
    return {name: _means(rows) for name, rows in sorted(groups.items())}


def by_size(records: ImageRecords) -> dict[str, dict[str, Any]]:
    """Per size bin (and ``empty``): images and mean metrics; ``empty`` adds the fraction of
    frames where any pixel was predicted (false-positive rate). Every bin is listed, empty or not,
    so the counts always sum to the images of the split."""
    groups: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in SIZE_BINS}
    groups[EMPTY] = []
    for row in records.rows:
        groups[size_bin(row["uav_area"])].append(row)
    out = {}
    for name, low, high in SIZE_BINS:
        out[name] = {"area_from": low, "area_to": high if high != math.inf else None}
        out[name].update(_means(groups[name]))
    empty = groups[EMPTY]
    out[EMPTY] = _means(empty)
    # On a frame without a UAV, precision is 1 (0/0) exactly when nothing was predicted.
    out[EMPTY]["false_positive_rate"] = (
        sum(r["precision"] < 1 for r in empty) / len(empty) if empty else math.nan
    )
    return out


def sweep(records: ImageRecords) -> list[dict[str, float]]:
    """Mean metrics at each threshold of the sweep, from the same pass over the data."""
    n = len(records.sweep)
    rows = []
    for j, t in enumerate(records.thresholds):
        row: dict[str, float] = {"threshold": t}
        for k, name in enumerate(METRICS):
            row[name] = sum(image[j][k] for image in records.sweep) / n if n else math.nan
        rows.append(row)
    return rows


def best_threshold(rows: list[dict[str, float]]) -> dict[str, float]:
    """The sweep row with the highest Dice (the lower threshold on a tie)."""
    return max(rows, key=lambda r: (r["dice"], -r["threshold"]))


def csv_text(records: ImageRecords) -> str:
    """The per-image table as CSV (one row per image, CSV_COLUMNS)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in records.rows:
        writer.writerow({k: row[k] for k in CSV_COLUMNS})
    return buffer.getvalue()


def write_csv(path: Path, records: ImageRecords) -> None:
    """Write the per-image CSV atomically."""
    atomic_write_text(path, csv_text(records))


def format_breakdowns(results: dict[str, Any]) -> str:
    """The breakdowns of a results dict as text for the test script's output."""
    lines = []
    protocol = results.get("protocol")
    if protocol:
        lines.append(
            f"\nprotocol: mode {protocol['mode']}, metrics at {protocol['resolution']}, "
            f"{results['throughput_images_per_s']:.1f} images/s"
        )
    sizes = results.get("sizes")
    if sizes:
        lines.append("\n| UAV size (area of frame) | images | mIoU | Dice | FP rate |")
        lines.append("|---|---|---|---|---|")
        for name, s in sizes.items():
            span = "no UAV" if name == EMPTY else _span(s["area_from"], s["area_to"])
            fp = f"{s['false_positive_rate']:.3f}" if name == EMPTY and s["images"] else ""
            miou = f"{s['miou']:.4f}" if s["images"] else "-"
            dice = f"{s['dice']:.4f}" if s["images"] else "-"
            lines.append(f"| {name} ({span}) | {s['images']} | {miou} | {dice} | {fp} |")
    seqs = results.get("sequences")
    if seqs:
        ranked = sorted(seqs.items(), key=lambda kv: kv[1]["miou"])
        worst = ", ".join(f"{k} {v['miou']:.3f}" for k, v in ranked[:3])
        best = ", ".join(f"{k} {v['miou']:.3f}" for k, v in ranked[::-1][:3])
        lines.append(f"\n{len(seqs)} sequences; worst mIoU: {worst}; best: {best}")
    sw = results.get("threshold_sweep")
    if sw:
        cells = " ".join(f"{r['threshold']:g}:{r['dice']:.3f}" for r in sw["test"])
        lines.append(f"threshold sweep (test Dice): {cells}")
        chosen = sw.get("chosen")
        if chosen:
            lines.append(
                f"threshold chosen on val: {chosen['threshold']:g} (val Dice "
                f"{chosen['val_dice']:.4f}) -> test Dice {chosen['test']['dice']:.4f}, "
                f"mIoU {chosen['test']['miou']:.4f}"
            )
    if results.get("per_image_csv"):
        lines.append(f"per-image CSV: {results['per_image_csv']}")
    return "\n".join(lines)


def _span(low: float, high: float | None) -> str:
    if high is None:
        return f">= {low:.1%}"
    if low == 0:
        return f"< {high:.1%}"
    return f"{low:.1%}-{high:.1%}"
