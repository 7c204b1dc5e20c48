"""Evaluation: validation during training, the test split with per-modality metrics, latency.

``test(cfg)`` is what test_<model>.py runs: the best checkpoint over the whole test split, the
paper's per-image metrics overall and for VL and IR, the model's forward latency measured apart
from data loading, the parameter count; written to results/<model>.json.
"""

from __future__ import annotations

import logging
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data import MODALITIES
from models import VARIANTS, count_parameters, optimize_for_inference, to_channels_last

from . import distributed as dist
from .checkpoint import atomic_write_json, load_model, load_weights
from .config import ConfigError, model_overrides
from .losses import main_logits
from .metrics import METRICS, DiceTotals, MetricTotals

logger = logging.getLogger(__name__)


def check_image_size(cfg: DictConfig) -> None:
    """Dynamic models need sides that are multiples of 2**stages (128 for the paper's 7)."""
    if cfg.model.name not in VARIANTS:
        return
    multiple = 2 ** (cfg.model.stages or 7)
    for key in ("dataset.image_size", "test.latency_size"):
        size = list(OmegaConf.select(cfg, key))
        if any(side % multiple for side in size):
            raise ConfigError(
                f"config key '{key}' = {size}: {cfg.model.name} needs sides that are multiples "
                f"of {multiple} (2**stages), e.g. [{multiple * 4}, {multiple * 4}]"
            )


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


def measure_latency(
    model: nn.Module,
    size: tuple[int, int],
    device: torch.device,
    warmup: int = 10,
    runs: int = 50,
    channels_last: bool = False,
    in_channels: int = 3,
) -> dict[str, Any]:
    """Forward time at batch 1 (FP32, eval), apart from data loading: median of ``runs``.

    On CUDA each run is timed with events after a synchronise, so queued work is not missed.
    """
    model.eval()
    x = torch.rand(1, in_channels, *size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(runs):
            if device.type == "cuda":
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                torch.cuda.synchronize(device)
                start.record()
                model(x)
                end.record()
                torch.cuda.synchronize(device)
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1000)
    ms = statistics.median(times)
    return {
        "ms": ms,
        "fps": 1000.0 / ms,
        "runs": runs,
        "size": list(size),
        "device": device_name(device),
        "threads": torch.get_num_threads(),
    }


def device_name(device: torch.device) -> str:
    """A readable device description for results (GPU model or CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def checkpoint_path(cfg: DictConfig) -> Path:
    return Path(cfg.test.checkpoint or Path(cfg.output.run_dir) / "best.pt")


def results_path(cfg: DictConfig) -> Path:
    return Path(cfg.output.results_dir) / f"{cfg.model.name}.json"


def test(cfg: DictConfig, command: str = "") -> dict[str, Any]:
    """Evaluate the checkpoint on the test split; write and return the results."""
    from .loaders import ensure_demo_data, make_dataset, make_loader
    from .train import build, setup_device

    device = setup_device(cfg)
    check_image_size(cfg)
    ckpt_path = checkpoint_path(cfg)
    # this project's checkpoint or the authors' (models/authors.py: built at the file's width)
    model, ckpt = load_model(ckpt_path, device, cfg.model.name, train_hint=command)
    authors = ckpt.get("source") == "authors"
    out = results_path(cfg)
    ensure_demo_data(cfg)
    test_set = make_dataset(cfg, "test")
    loader = make_loader(cfg, test_set, False, cfg.test.batch_size, device)
    logger.info("test: %s", test_set)

    if authors:
        model = model.to(device)
        model = to_channels_last(model) if cfg.trainer.channels_last else model
    else:  # ours: the configured model must fit the checkpoint (a mismatch names the tensor)
        model = build(cfg, device)
        load_weights(model, ckpt, ckpt_path, cfg.model.name)
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
