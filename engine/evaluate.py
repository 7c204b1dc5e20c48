"""Evaluation: validation during training, the test split with per-modality metrics, latency.

``test(cfg)`` is what test_<model>.py runs: the best checkpoint over the whole test split, the
paper's per-image metrics overall and for VL and IR, the model's forward latency measured apart
from data loading, the parameter count; written to results/<model>.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data import MODALITIES
from data.decode import probe_file
from models import count_parameters, optimize_for_inference, to_channels_last

from . import distributed as dist
from .breakdown import (
    EvalFrames,
    ImageRecords,
    PredictionWriter,
    best_threshold,
    by_sequence,
    by_size,
    collate_list,
    format_breakdowns,
    run_recorded,
    sweep,
    write_csv,
)
from .checkpoint import atomic_write_json, check_writable, load_model
from .config import ConfigError, model_overrides
from .inference_modes import ModeError, Segmenter, check_frame, make_settings
from .latency import measure_latency
from .loaders import ensure_demo_data, make_dataset, make_loader
from .losses import main_logits
from .metrics import METRICS, DiceTotals, MetricTotals
from .setup import build, setup_device

logger = logging.getLogger(__name__)


@torch.inference_mode()
def run_split(
    model: nn.Module, loader: DataLoader, cfg: DictConfig, device: torch.device, desc: str
) -> tuple[DiceTotals, MetricTotals, int]:
    """One pass in eval mode; totals summed over all processes, and the images seen here."""
    model.eval()
    dice, metrics = DiceTotals(device), MetricTotals(MODALITIES, device)
    memory = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    seen = 0
    for batch in tqdm(
        loader, desc=desc, leave=False, disable=not dist.is_main(), dynamic_ncols=True
    ):
        images = batch["image"].to(device, non_blocking=True, memory_format=memory)
        masks = batch["mask"].to(device, non_blocking=True)
        logits = main_logits(model(images)).float()
        dice.update(logits, masks)
        metrics.update(logits, masks, batch["modality"], cfg.trainer.threshold)
        seen += len(images)
    dist.all_reduce_sum(dice.sums)
    dist.all_reduce_sum(metrics.sums)
    return dice, metrics, seen


def validate(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    cfg: DictConfig,
    device: torch.device,
) -> dict[str, float]:
    """Validation loss (Dice over the whole split, see DiceTotals) and the paper's metrics."""
    dice, metrics, _ = run_split(model, loader, cfg, device, "val")
    return {"loss": dice.loss(), **metrics.overall()}


def checkpoint_path(cfg: DictConfig) -> Path:
    return Path(cfg.test.checkpoint or Path(cfg.output.run_dir) / "best.pt")


def results_path(cfg: DictConfig) -> Path:
    """results/<model>.json for the paper's resize protocol, results/<model>_<mode>.json else, so a
    pad or slide run never replaces the paper table's numbers."""
    mode = cfg.test.mode.value
    suffix = "" if mode == "resize" else f"_{mode}"
    return Path(cfg.output.results_dir) / f"{cfg.model.name}{suffix}.json"


def test(cfg: DictConfig, command: str = "") -> dict[str, Any]:
    """Evaluate the checkpoint on the test split; write and return the results.

    Everything that can be checked before the first test image is: the device, the model keys
    and sizes, the checkpoint, the results folder, the data.
    """
    device = setup_device(cfg)
    model = build(cfg, device)
    ckpt_path = checkpoint_path(cfg)
    # ours into the configured model (a mismatch names the tensor); the authors' file is built
    # at its own width (models/authors.py)
    model, ckpt = load_model(ckpt_path, device, cfg.model.name, train_hint=command, into=model)
    authors = ckpt.get("source") == "authors"
    if authors:
        model = model.to(device)
        model = to_channels_last(model) if cfg.trainer.channels_last else model
    out = results_path(cfg)
    if dist.is_main():
        check_writable(out.parent)
    ensure_demo_data(cfg)
    test_set = make_dataset(cfg, "test")
    logger.info("test: %s", test_set)

    params = count_parameters(model)
    model = model.eval()
    if cfg.test.optimize:
        model = optimize_for_inference(model)
    segmenter = make_segmenter(cfg, model, test_set)

    chosen = None
    if cfg.test.tune_threshold:
        val_records = ImageRecords(cfg.test.thresholds, cfg.trainer.threshold)
        evaluate_split(cfg, model, segmenter, make_dataset(cfg, "val"), device, val_records, "val")
        best = best_threshold(sweep(val_records.gathered()))
        chosen = {"threshold": best["threshold"], "val_dice": best["dice"], "chosen_on": "val"}

    records = ImageRecords(cfg.test.thresholds, cfg.trainer.threshold)
    saver = PredictionWriter(out, cfg.trainer.threshold) if cfg.test.save_predictions else None
    try:
        started = time.perf_counter()
        metrics, seen = evaluate_split(
            cfg, model, segmenter, test_set, device, records, "test", saver
        )
        seen = dist.all_reduce_sum(torch.tensor([float(seen)], device=device)).item()
        throughput = seen / (time.perf_counter() - started)
        records = records.gathered()
        dist.barrier()

        results: dict[str, Any] = {
            "model": cfg.model.name,
            "params": params,
            "checkpoint": str(ckpt_path),
            "checkpoint_epoch": ckpt.get("epoch"),
            "split": "test",
            "protocol": protocol(cfg, segmenter),
            "overall": metrics.overall(),
            "modalities": metrics.by_group(),
            "throughput_images_per_s": throughput,
            "processes": dist.world_size(),
            "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
            "model_kwargs": ckpt["model_kwargs"] if authors else model_overrides(cfg),
        }
        results.update(breakdowns(records, chosen, out, saver))
        if cfg.test.latency and dist.is_main():
            results["latency"] = measure_latency(
                model,
                tuple(cfg.test.latency_size),
                device,
                cfg.test.latency_warmup,
                cfg.test.latency_runs,
                cfg.trainer.channels_last,
                cfg.model.in_channels,
            )
            results["latency"]["optimized"] = bool(cfg.test.optimize)
        if dist.is_main():
            write_csv(csv_path(out), records)
            if saver is not None:
                saver.commit()
            atomic_write_json(out, results)
            logger.info("results written to %s", out)
    finally:
        if saver is not None:
            saver.discard()
    dist.barrier()
    return results


TEST_KEYS = {
    "mode": "config key 'test.mode'",
    "size": "config key 'dataset.image_size'",
    "tile": "config key 'test.tile'",
    "stride": "config key 'test.stride'",
    "padding": "config key 'test.padding'",
    "scale": "config key 'test.scale'",
    "tile_batch": "config key 'test.batch_size'",
}


def make_segmenter(cfg: DictConfig, model: nn.Module, dataset) -> Segmenter | None:
    """None for test.mode=resize (the paper's path, unchanged); else the Segmenter for the mode,
    checked against the model's size multiple and the split's frame sizes before anything runs.

    slide's tile defaults to dataset.image_size: the scale the model was trained at.
    """
    t = cfg.test
    if t.mode.value == "resize":
        return None
    tile = t.tile if t.tile is not None or t.mode.value != "slide" else cfg.dataset.image_size
    settings = make_settings(
        t.mode.value, None, tile, t.stride, t.padding.value, t.scale, t.batch_size
    )
    try:
        segmenter = Segmenter(model, settings, TEST_KEYS)
        seen = set()
        for s in dataset.samples:  # one frame per sequence and modality: frames share a size
            if (s.sequence, s.modality) not in seen:
                seen.add((s.sequence, s.modality))
                width, height = probe_file(s.image_path, "image")
                check_frame(settings, height, width, TEST_KEYS)
    except ModeError as exc:
        raise ConfigError(str(exc)) from None
    return segmenter


def protocol(cfg: DictConfig, segmenter: Segmenter | None) -> dict[str, Any]:
    """Which protocol produced every number of a results file."""
    if segmenter is None:
        size = list(cfg.dataset.image_size)
        return {
            "mode": "resize",
            "resolution": f"model input {size[0]}x{size[1]} (image and mask resized)",
            "input_size": size,
            "threshold": cfg.trainer.threshold,
            "uav_area": "fraction of the original-size mask",
        }
    s = segmenter.settings
    out = {
        "mode": s.mode,
        "resolution": "original frame size",
        "padding": s.padding,
        "size_multiple": segmenter.multiple,
        "scale": s.scale,
        "threshold": cfg.trainer.threshold,
        "uav_area": "fraction of the original-size mask",
    }
    if s.mode == "slide":
        out.update(tile=list(s.tile), stride=list(s.steps), blend="mean of overlapping logits")
    return out


def evaluate_split(
    cfg: DictConfig,
    model: nn.Module,
    segmenter: Segmenter | None,
    dataset,
    device: torch.device,
    records: ImageRecords,
    desc: str,
    saver: PredictionWriter | None = None,
) -> tuple[MetricTotals, int]:
    """One recorded pass over a split in the configured mode; metric totals and images seen."""
    native = segmenter is not None
    frames = EvalFrames(dataset, native)
    collate = collate_list if native else None
    loader = make_loader(cfg, frames, False, cfg.test.batch_size, device, collate)
    memory = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    seen = len(records)
    metrics = run_recorded(
        model, segmenter, loader, device, records, MODALITIES, memory, saver, desc
    )
    return metrics, len(records) - seen


def csv_path(results: Path) -> Path:
    """The per-image CSV beside a results file: results/<stem>_images.csv."""
    return results.with_name(f"{results.stem}_images.csv")


def breakdowns(
    records: ImageRecords, chosen: dict[str, Any] | None, out: Path, saver
) -> dict[str, Any]:
    """Per sequence, per UAV size, the threshold sweep (and the threshold chosen on val, applied
    to test), and where the per-image CSV and the predictions are."""
    rows = sweep(records)
    if chosen is not None:
        at = next(r for r in rows if r["threshold"] == chosen["threshold"])
        chosen = {**chosen, "test": {k: v for k, v in at.items() if k != "threshold"}}
    return {
        "sequences": by_sequence(records),
        "sizes": by_size(records),
        "threshold_sweep": {"split": "test", "test": rows, "chosen": chosen},
        "per_image_csv": str(csv_path(out)),
        "predictions": str(saver.folder) if saver is not None else None,
    }


def format_row(results: dict[str, Any]) -> str:
    """The model's row of the paper's table (markdown)."""
    o = results["overall"]
    lat = results.get("latency") or {}
    ms = f"{lat['ms']:.2f}" if lat else "-"
    fps = f"{lat['fps']:.1f}" if lat else "-"
    cells = [
        results["model"],
        f"{results['params'] / 1e6:.2f}",
        *(f"{o[m]:.4f}" for m in METRICS),
        ms,
        fps,
    ]
    return "| " + " | ".join(cells) + " |"


def format_results(results: dict[str, Any]) -> str:
    """Table row, per-modality rows, and where latency was measured."""
    header = "| Model | Params (M) | Precision | Recall | Dice | mIoU | ms | FPS |\n" + (
        "|---|---|---|---|---|---|---|---|"
    )
    lines = [header, format_row(results)]
    for modality, scores in results["modalities"].items():
        lines.append(
            f"| {results['model']} ({modality}, {scores['images']} images) | | "
            + " | ".join(f"{scores[m]:.4f}" for m in METRICS)
            + " | | |"
        )
    lat = results.get("latency")
    if lat:
        lines.append(
            f"\nlatency: batch 1, {lat['size'][0]}x{lat['size'][1]}, FP32, "
            f"median of {lat['runs']} runs on {lat['device']}"
        )
    lines.append(
        f"test pipeline throughput (decode, model, metrics): "
        f"{results['throughput_images_per_s']:.1f} images/s over "
        f"{results['overall']['images']} images"
    )
    lines.append(format_breakdowns(results))
    return "\n".join(lines)
