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
from models import count_parameters, optimize_for_inference, to_channels_last

from . import distributed as dist
from .checkpoint import atomic_write_json, check_writable, load_model, load_weights
from .config import model_overrides
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
    return Path(cfg.output.results_dir) / f"{cfg.model.name}.json"


def test(cfg: DictConfig, command: str = "") -> dict[str, Any]:
    """Evaluate the checkpoint on the test split; write and return the results.

    Everything that can be checked before the first test image is: the device, the model keys
    and sizes, the checkpoint, the results folder, the data.
    """
    device = setup_device(cfg)
    model = build(cfg, device)
    ckpt_path = checkpoint_path(cfg)
    # this project's checkpoint or the authors' (models/authors.py: built at the file's width)
    loaded, ckpt = load_model(ckpt_path, device, cfg.model.name, train_hint=command)
    authors = ckpt.get("source") == "authors"
    if authors:
        model = loaded.to(device)
        model = to_channels_last(model) if cfg.trainer.channels_last else model
    else:  # ours: the configured model must fit the checkpoint (a mismatch names the tensor)
        load_weights(model, ckpt, ckpt_path, cfg.model.name)
    out = results_path(cfg)
    if dist.is_main():
        check_writable(out.parent)
    ensure_demo_data(cfg)
    test_set = make_dataset(cfg, "test")
    loader = make_loader(cfg, test_set, False, cfg.test.batch_size, device)
    logger.info("test: %s", test_set)

    params = count_parameters(model)
    model = model.eval()
    if cfg.test.optimize:
        model = optimize_for_inference(model)

    started = time.perf_counter()
    _, metrics, seen = run_split(model, loader, cfg, device, "test")
    seconds = time.perf_counter() - started
    throughput = dist.all_reduce_sum(torch.tensor([float(seen)], device=device)).item() / seconds

    results: dict[str, Any] = {
        "model": cfg.model.name,
        "params": params,
        "checkpoint": str(ckpt_path),
        "checkpoint_epoch": ckpt.get("epoch"),
        "split": "test",
        "overall": metrics.overall(),
        "modalities": metrics.by_group(),
        "throughput_images_per_s": throughput,
        "processes": dist.world_size(),
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model_kwargs": ckpt["model_kwargs"] if authors else model_overrides(cfg),
    }
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
        atomic_write_json(out, results)
        logger.info("results written to %s", out)
    dist.barrier()
    return results


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
    return "\n".join(lines)
