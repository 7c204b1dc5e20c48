"""The training loop every model shares: ``train(cfg)`` reads top to bottom.

Paper recipe (SPEC section 5): AdamW, Dice loss (+ 0.4 x each auxiliary loss), validation every
epoch, ReduceLROnPlateau and early stopping on the validation loss, ``best.pt`` at the lowest
validation loss (the one tested) and ``last.pt`` with everything needed to resume.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from models import build_model, count_parameters, optimize_for_training, to_channels_last

from . import distributed as dist
from .checkpoint import (
    atomic_write_text,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from .config import model_overrides, to_yaml
from .cpu import keep_freed_memory
from .evaluate import check_image_size, validate
from .loaders import ensure_demo_data, make_dataset, make_loader
from .losses import SegmentationLoss

logger = logging.getLogger(__name__)

CSV_FIELDS = (
    "epoch",
    "train_loss",
    "val_loss",
    "precision",
    "recall",
    "dice",
    "miou",
    "lr",
    "seconds",
)


class RunFolderError(RuntimeError):
    """The output folder holds another run, or cannot be written."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names epoch and step."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; ``last.pt`` was written and the run can be resumed."""


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without the validation loss improving by ``min_delta``."""

    patience: int
    min_delta: float
    best: float = math.inf
    bad_epochs: int = 0

    def step(self, loss: float) -> bool:
        """Record an epoch's validation loss; True when training should stop."""
        if loss < self.best - self.min_delta:
            self.best, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best, self.bad_epochs = state["best"], int(state["bad_epochs"])


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: DictConfig
) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """ReduceLROnPlateau on the validation loss with the configured factor/patience/cooldown."""
    s = cfg.trainer.scheduler
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=s.factor, patience=s.patience, cooldown=s.cooldown
    )


def make_early_stopping(cfg: DictConfig) -> EarlyStopping:
    """Early stopping with the configured patience and min_delta."""
    e = cfg.trainer.early_stopping
    return EarlyStopping(e.patience, e.min_delta)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain values, so a checkpoint loads with weights_only."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopSignal:
    """Turns SIGINT/SIGTERM into a flag checked after each step (the step is finished first)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Create and check the run folder; refuse one holding a run unless resuming or overwriting."""
    run_dir = Path(cfg.output.run_dir)
    t = cfg.trainer
    if dist.is_main():
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RunFolderError(
                f"output folder '{run_dir}' cannot be written ({exc.strerror}); set "
                f"output.run_dir to a writable folder"
            ) from None
        held = [p for p in ("last.pt", "best.pt", "metrics.csv") if (run_dir / p).exists()]
        if held and not (t.resume or t.resume_from) and not t.overwrite:
            raise RunFolderError(
                f"output folder '{run_dir}' already holds a run ({', '.join(held)}); continue it "
                f"with trainer.resume=true (--resume), replace it with trainer.overwrite=true, or "
                f"choose another output.run_dir"
            )
        if held and t.overwrite and not (t.resume or t.resume_from):
            for name in ("last.pt", "best.pt", "metrics.csv", "config.yaml"):
                (run_dir / name).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "tb", ignore_errors=True)
    dist.barrier()
    return run_dir


def setup_device(cfg: DictConfig) -> torch.device:
    """This process's device (joining torchrun's group if launched by it); on the CPU, glibc is
    told to keep freed memory unless ``trainer.keep_freed_memory`` is off."""
    device = dist.setup(cfg.trainer.device)
    if device.type == "cpu" and cfg.trainer.keep_freed_memory:
        keep_freed_memory()
    return device


def build(cfg: DictConfig, device: torch.device) -> nn.Module:
    """The configured model on its device (channels_last if asked), seeded for its init."""
    seed_everything(cfg.dataset.seed, cfg.trainer.deterministic)
    model = build_model(cfg.model.name, **model_overrides(cfg)).to(device)
    t = cfg.trainer
    # the fast modules pay on the CPU in FP32, eager (BENCHMARKS.md); elsewhere plain PyTorch
    auto = device.type == "cpu" and t.amp.value == "off" and not t.compile
    if t.fused.value == "always" or (t.fused.value == "auto" and auto):
        model = optimize_for_training(model)
    if cfg.trainer.channels_last:
        model = to_channels_last(model)
    return model


def saved_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The model's build arguments as stored in checkpoints (never re-download encoder weights)."""
    kwargs = model_overrides(cfg)
    if "encoder_weights" in kwargs:
        kwargs["encoder_weights"] = None
    return kwargs


def autocast(cfg: DictConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision as trainer.amp says (bf16, fp16 or off)."""
    amp = cfg.trainer.amp.value
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def read_csv(path: Path, upto_epoch: int) -> list[dict[str, str]]:
    """Rows of an earlier metrics.csv up to ``upto_epoch`` (a resumed run continues the file)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["epoch"]) <= upto_epoch]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: DictConfig,
    device: torch.device,
    epoch: int,
    stop: StopSignal,
    start_step: int = 0,
    loss_sum: float = 0.0,
) -> tuple[float, int, float]:
    """One pass over the training batches from ``start_step``; (loss sum, steps done, skipped).

    Returns early (steps done < len(loader)) when a stop signal arrived.
    """
    model.train()
    t = cfg.trainer
    total = (
        len(loader) if t.max_steps_per_epoch is None else min(len(loader), t.max_steps_per_epoch)
    )
    bar = tqdm(
        total=total,
        initial=start_step,
        desc=f"epoch {epoch}",
        leave=False,
        disable=not dist.is_main(),
        dynamic_ncols=True,
    )
    step, skipped = start_step, 0
    memory = torch.channels_last if t.channels_last else torch.contiguous_format
    for i, batch in enumerate(loader):
        if i < start_step:
            continue  # already trained on before the interruption
        if step >= total:
            break
        images = batch["image"].to(device, non_blocking=True, memory_format=memory)
        masks = batch["mask"].to(device, non_blocking=True)
        with autocast(cfg, device):
            loss = criterion(model(images), masks)
        if not torch.isfinite(loss):
            if t.non_finite.value == "stop":
                raise TrainingError(
                    f"non-finite training loss ({loss.item()}) at epoch {epoch}, step {step + 1}; "
                    f"lower trainer.lr, check the data, or set trainer.non_finite=skip"
                )
            logger.warning("skipping step %d of epoch %d: non-finite loss", step + 1, epoch)
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
            step += 1
            bar.update()
            continue
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.item()
        step += 1
        bar.update()
        bar.set_postfix(loss=f"{loss_sum / max(step - skipped, 1):.4f}")
        if stop.received is not None:
            break
    bar.close()
    return loss_sum, step, skipped


def train(cfg: DictConfig, command: str = "") -> dict[str, Any]:
    """Train the configured model; returns a summary (best epoch and loss, run folder, model)."""
    device = setup_device(cfg)
    t = cfg.trainer
    check_image_size(cfg)
    run_dir = prepare_run_dir(cfg)
    ensure_demo_data(cfg)
    train_set, val_set = make_dataset(cfg, "train"), make_dataset(cfg, "val")
    batch = cfg.dataset.batch_size
    train_loader = make_loader(cfg, train_set, True, batch, device)
    val_loader = make_loader(cfg, val_set, False, batch, device)
    logger.info("train: %s; val: %s", train_set, val_set)

    model = build(cfg, device)
    # Same initial weights everywhere; then a different random stream per process (augmentation,
    # loader workers), as one process with a bigger batch would have.
    seed_everything(cfg.dataset.seed + dist.rank(), cfg.trainer.deterministic)
    logger.info("%s: %s parameters on %s", cfg.model.name, f"{count_parameters(model):,}", device)
    criterion = SegmentationLoss(t.aux_weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = make_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=t.amp.value == "fp16")
    stopper = make_early_stopping(cfg)
    best_loss, best_epoch, start_epoch, start_step, loss_sum = math.inf, 0, 1, 0, 0.0

    last_path, best_path, csv_path = (
        run_dir / "last.pt",
        run_dir / "best.pt",
        run_dir / "metrics.csv",
    )
    resume_path = Path(t.resume_from) if t.resume_from else (last_path if t.resume else None)
    rows: list[dict[str, Any]] = []
    if resume_path is not None:
        ckpt = load_checkpoint(resume_path, device, train_hint=command)
        load_weights(model, ckpt, resume_path, cfg.model.name)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        stopper.load_state_dict(ckpt["early_stopping"])
        best_loss, best_epoch = ckpt["best_val_loss"], ckpt["best_epoch"]
        set_rng_state(ckpt["rng"])
        if ckpt["finished"]:
            logger.info("run in %s already finished at epoch %d", run_dir, ckpt["epoch"])
            return {
                "run_dir": str(run_dir),
                "best_epoch": best_epoch,
                "best_val_loss": best_loss,
                "epochs": ckpt["epoch"],
                "resumed": True,
            }
        # ``epoch`` is the last finished epoch; ``step`` the steps done of the next one.
        start_epoch, start_step, loss_sum = ckpt["epoch"] + 1, ckpt["step"], ckpt["loss_sum"]
        rows = read_csv(csv_path, start_epoch - 1)
        logger.info("resuming %s at epoch %d, step %d", resume_path, start_epoch, start_step)

    core = model
    if dist.is_distributed():
        # PSPNet's smp encoder keeps resnet34 stages it never runs; DDP must be told.
        model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.model.name == "pspnet",
        )
    if t.compile:
        model = torch.compile(model)

    writer = None
    if dist.is_main():
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(run_dir / "tb", purge_step=start_epoch)

    def state(epoch: int, step: int, finished: bool, full: bool = True) -> dict[str, Any]:
        """A checkpoint; ``full`` adds what resuming needs (best.pt is only the weights)."""
        weights = {
            "model_name": cfg.model.name,
            "model_kwargs": saved_kwargs(cfg),
            "model": core.state_dict(),
            "epoch": epoch,
            "best_val_loss": best_loss,
            "best_epoch": best_epoch,
            "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        }
        if not full:
            return weights
        return {
            **weights,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "early_stopping": stopper.state_dict(),
            "step": step,
            "loss_sum": loss_sum,
            "finished": finished,
            "rng": rng_state(),
        }

    epoch, stopped_early = start_epoch - 1, False
    with StopSignal() as stop:
        for epoch in range(start_epoch, t.epochs + 1):
            started = time.perf_counter()
            train_loader.sampler.set_epoch(epoch)
            loss_sum, steps, skipped = train_one_epoch(
                model,
                train_loader,
                criterion,
                optimizer,
                scaler,
                cfg,
                device,
                epoch,
                stop,
                start_step,
                loss_sum if start_step else 0.0,
            )
            start_step = 0
            if stop.received is not None:
                # Mid-epoch: ``epoch - 1`` finished, ``steps`` of this one done.
                if dist.is_main():
                    save_checkpoint(last_path, state(epoch - 1, steps, False))
                name = signal.Signals(stop.received).name
                raise Interrupted(
                    f"{name} received: stopped at epoch {epoch}, step {steps}; '{last_path}' "
                    f"saved. Resume with: {command} trainer.resume=true".rstrip()
                )
            # Training loss: this process's mean, averaged over processes.
            train_loss = dist.all_reduce_sum(
                torch.tensor([loss_sum, steps - skipped], dtype=torch.float64, device=device)
            )
            train_loss = (train_loss[0] / train_loss[1].clamp_min(1)).item()
            val = validate(model, val_loader, criterion, cfg, device)
            val_loss = val["loss"]
            scheduler.step(val_loss if math.isfinite(val_loss) else math.inf)
            improved = math.isfinite(val_loss) and val_loss < best_loss
            if improved:
                best_loss, best_epoch = val_loss, epoch
            stopped_early = stopper.step(val_loss if math.isfinite(val_loss) else math.inf)
            finished = stopped_early or epoch == t.epochs
            loss_sum = 0.0
            if dist.is_main():
                lr = optimizer.param_groups[0]["lr"]
                row = {
                    "epoch": epoch,
                    "train_loss": f"{train_loss:.6f}",
                    "val_loss": f"{val_loss:.6f}",
                    "lr": f"{lr:.3g}",
                    "seconds": f"{time.perf_counter() - started:.1f}",
                    **{k: f"{val[k]:.6f}" for k in ("precision", "recall", "dice", "miou")},
                }
                rows.append(row)
                write_csv(csv_path, rows)
                for key in ("train_loss", "val_loss", "precision", "recall", "dice", "miou", "lr"):
                    writer.add_scalar(key, float(row[key]), epoch)
                writer.flush()
                if improved:
                    save_checkpoint(best_path, state(epoch, 0, finished, full=False))
                save_checkpoint(last_path, state(epoch, 0, finished))
                logger.info(
                    "epoch %d: train loss %.4f, val loss %.4f, mIoU %.4f, Dice %.4f%s",
                    epoch,
                    train_loss,
                    val_loss,
                    val["miou"],
                    val["dice"],
                    " (best)" if improved else "",
                )
            if stopped_early:
                logger.info("early stopping at epoch %d (best epoch %d)", epoch, best_epoch)
                break
    if writer is not None:
        writer.close()
    dist.barrier()
    return {
        "run_dir": str(run_dir),
        "best_epoch": best_epoch,
        "best_val_loss": best_loss,
        "epochs": epoch,
        "stopped_early": stopped_early,
        "resumed": resume_path is not None,
        "model": core,
    }
