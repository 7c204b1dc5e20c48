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
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from models import count_parameters

from . import distributed as dist
from .checkpoint import (
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from .config import to_yaml
from .evaluate import validate
from .loaders import ensure_demo_data, make_dataset, make_loader
from .losses import SegmentationLoss
from .runfolder import RunFolder
from .setup import autocast, build, saved_kwargs, seed_everything, setup_device
from .visuals import log_examples

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
    """Restore what ``rng_state`` saved."""
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
        with autocast(t.amp.value, device):
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


@dataclass
class Learner:
    """The model and everything its training updates: what ``last.pt`` holds besides progress."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    stopper: EarlyStopping


@dataclass
class Progress:
    """Where a run stands: ``epoch`` finished, ``step`` steps of the next done, the best so far."""

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    best_loss: float = math.inf
    best_epoch: int = 0
    finished: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)


def make_learner(model: nn.Module, cfg: DictConfig, device: torch.device) -> Learner:
    """AdamW, ReduceLROnPlateau, the fp16 grad scaler and early stopping, as configured."""
    t = cfg.trainer
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    return Learner(
        model,
        optimizer,
        make_scheduler(optimizer, cfg),
        torch.amp.GradScaler(device.type, enabled=t.amp.value == "fp16"),
        make_early_stopping(cfg),
    )


def checkpoint_state(
    learner: Learner, progress: Progress, cfg: DictConfig, full: bool = True
) -> dict[str, Any]:
    """A checkpoint; ``full`` adds what resuming needs (best.pt is only the weights)."""
    weights = {
        "model_name": cfg.model.name,
        "model_kwargs": saved_kwargs(cfg),
        "model": learner.model.state_dict(),
        "epoch": progress.epoch,
        "best_val_loss": progress.best_loss,
        "best_epoch": progress.best_epoch,
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
    }
    if not full:
        return weights
    return {
        **weights,
        "optimizer": learner.optimizer.state_dict(),
        "scheduler": learner.scheduler.state_dict(),
        "scaler": learner.scaler.state_dict(),
        "early_stopping": learner.stopper.state_dict(),
        "step": progress.step,
        "loss_sum": progress.loss_sum,
        "finished": progress.finished,
        "rng": rng_state(),
    }


def resume(
    learner: Learner, path: Path, cfg: DictConfig, device: torch.device, command: str
) -> Progress:
    """Restore a run from its ``last.pt``: weights, optimizer, scheduler, RNG and progress."""
    ckpt = load_checkpoint(path, device, train_hint=command)
    if "optimizer" not in ckpt:
        raise CheckpointError(
            f"checkpoint '{path}' holds only weights (like every best.pt), not the training "
            f"state a resume needs; resume from the run's last.pt: --resume without a path, or "
            f"--resume <run folder>/last.pt"
        )
    load_weights(learner.model, ckpt, path, cfg.model.name)
    learner.optimizer.load_state_dict(ckpt["optimizer"])
    learner.scheduler.load_state_dict(ckpt["scheduler"])
    learner.scaler.load_state_dict(ckpt["scaler"])
    learner.stopper.load_state_dict(ckpt["early_stopping"])
    set_rng_state(ckpt["rng"])
    apply_changed_settings(learner, ckpt.get("config") or {}, cfg)
    progress = Progress(
        ckpt["epoch"],
        ckpt["step"],
        ckpt["loss_sum"],
        ckpt["best_val_loss"],
        ckpt["best_epoch"],
        ckpt["finished"],
    )
    progress.rows = read_csv(Path(cfg.output.run_dir) / "metrics.csv", progress.epoch)
    return progress


def apply_changed_settings(learner: Learner, saved: dict[str, Any], cfg: DictConfig) -> None:
    """Settings that the restored optimizer and scheduler state would silently override:
    where the config now differs from the checkpoint's, the new value is applied, and said.

    A changed ``trainer.lr`` restarts the schedule's reductions from the new value.
    """
    t, old = cfg.trainer, saved.get("trainer") or {}
    changes = []
    for key in ("lr", "weight_decay"):
        before, now = old.get(key), t[key]
        if before is not None and before != now:
            for group in learner.optimizer.param_groups:
                group[key] = now
            changes.append(f"trainer.{key} {before:g} -> {now:g}")
    for key in ("factor", "patience", "cooldown"):
        before, now = (old.get("scheduler") or {}).get(key), t.scheduler[key]
        if before is not None and before != now:
            setattr(learner.scheduler, key, now)
            changes.append(f"trainer.scheduler.{key} {before:g} -> {now:g}")
    if changes:
        logger.warning(
            "resuming with changed settings, applied to the restored optimizer and scheduler: %s",
            "; ".join(changes),
        )


def can_extend(progress: Progress, learner: Learner, cfg: DictConfig, run_dir: Path) -> bool:
    """A finished run resumed with more epochs (and patience left) goes on; else say how to."""
    t, stopper = cfg.trainer, learner.stopper
    if progress.epoch < t.epochs and stopper.bad_epochs < stopper.patience:
        logger.info(
            "extending the run in %s from epoch %d to %d", run_dir, progress.epoch, t.epochs
        )
        progress.finished = False
        return True
    how = f"trainer.epochs={progress.epoch + 10} (more than {progress.epoch})"
    if stopper.bad_epochs >= stopper.patience:
        how += (
            f" and trainer.early_stopping.patience={stopper.bad_epochs + 5} (it stopped early "
            f"after {stopper.bad_epochs} epochs without improvement)"
        )
    logger.warning(
        "the run in %s already finished at epoch %d; to train it further, resume with %s",
        run_dir,
        progress.epoch,
        how,
    )
    return False


def wrap_for_training(model: nn.Module, cfg: DictConfig, device: torch.device) -> nn.Module:
    """DistributedDataParallel under torchrun, then torch.compile if asked."""
    if dist.is_distributed():
        # PSPNet's smp encoder keeps resnet34 stages it never runs; DDP must be told.
        model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.model.name == "pspnet",
        )
    if cfg.trainer.compile:
        model = torch.compile(model)
    return model


def record_epoch(
    run_dir: Path,
    writer: Any,
    progress: Progress,
    epoch: int,
    train_loss: float,
    val: dict[str, float],
    lr: float,
    seconds: float,
    improved: bool,
) -> None:
    """One epoch into metrics.csv, TensorBoard and the log (main process only)."""
    row = {
        "epoch": epoch,
        "train_loss": f"{train_loss:.6f}",
        "val_loss": f"{val['loss']:.6f}",
        "lr": f"{lr:.3g}",
        "seconds": f"{seconds:.1f}",
        **{k: f"{val[k]:.6f}" for k in ("precision", "recall", "dice", "miou")},
    }
    progress.rows.append(row)
    write_csv(run_dir / "metrics.csv", progress.rows)
    for key in ("train_loss", "val_loss", "precision", "recall", "dice", "miou", "lr"):
        writer.add_scalar(key, float(row[key]), epoch)
    writer.flush()
    logger.info(
        "epoch %d: train loss %.4f, val loss %.4f, mIoU %.4f, Dice %.4f%s",
        epoch,
        train_loss,
        val["loss"],
        val["miou"],
        val["dice"],
        " (best)" if improved else "",
    )


def mean_train_loss(loss_sum: float, steps: int, device: torch.device) -> float:
    """This process's mean training loss, averaged over processes."""
    total = dist.all_reduce_sum(torch.tensor([loss_sum, steps], dtype=torch.float64, device=device))
    return (total[0] / total[1].clamp_min(1)).item()


def summary(run_dir: Path, progress: Progress, resumed: bool, **extra: Any) -> dict[str, Any]:
    """What ``train`` returns (and the script prints)."""
    return {
        "run_dir": str(run_dir),
        "best_epoch": progress.best_epoch,
        "best_val_loss": progress.best_loss,
        "epochs": progress.epoch,
        "resumed": resumed,
        **extra,
    }


def open_writer(run_dir: Path, cfg: DictConfig, first_epoch: int) -> Any:
    """Write config.yaml and open TensorBoard (main process only; None elsewhere)."""
    if not dist.is_main():
        return None
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(run_dir / "tb", purge_step=first_epoch)


def interrupted(
    signum: int, learner: Learner, progress: Progress, cfg: DictConfig, run_dir: Path, command: str
) -> Interrupted:
    """Save ``last.pt`` mid-epoch (``progress.step`` steps of the next epoch done) and say how
    to resume."""
    if dist.is_main():
        save_checkpoint(run_dir / "last.pt", checkpoint_state(learner, progress, cfg))
    return Interrupted(
        f"{signal.Signals(signum).name} received: stopped at epoch {progress.epoch + 1}, step "
        f"{progress.step}; '{run_dir / 'last.pt'}' saved. Resume with: {command} "
        f"trainer.resume=true".strip()
    )


def end_epoch(
    learner: Learner, progress: Progress, epoch: int, val_loss: float, cfg: DictConfig
) -> tuple[bool, bool]:
    """The scheduler, the best epoch and early stopping see the validation loss; (improved,
    stop early)."""
    val_loss = val_loss if math.isfinite(val_loss) else math.inf
    learner.scheduler.step(val_loss)
    improved = val_loss < progress.best_loss
    if improved:
        progress.best_loss, progress.best_epoch = val_loss, epoch
    stop_early = learner.stopper.step(val_loss)
    progress.epoch, progress.step, progress.loss_sum = epoch, 0, 0.0
    progress.finished = stop_early or epoch == cfg.trainer.epochs
    return improved, stop_early


def save_epoch(
    run_dir: Path, learner: Learner, progress: Progress, cfg: DictConfig, improved: bool
) -> None:
    """``best.pt`` (weights) when the validation loss improved, and ``last.pt`` (everything)."""
    if improved:
        save_checkpoint(run_dir / "best.pt", checkpoint_state(learner, progress, cfg, full=False))
    save_checkpoint(run_dir / "last.pt", checkpoint_state(learner, progress, cfg))


def train(cfg: DictConfig, command: str = "") -> dict[str, Any]:
    """Train the configured model; returns a summary (best epoch and loss, run folder, model).

    Everything that can fail on a setting or the data does so before the run folder is made.
    """
    t = cfg.trainer
    device = setup_device(cfg)
    model = build(cfg, device, training=True)
    ensure_demo_data(cfg)
    train_set, val_set = make_dataset(cfg, "train"), make_dataset(cfg, "val")
    train_loader = make_loader(cfg, train_set, True, cfg.dataset.batch_size, device)
    val_loader = make_loader(cfg, val_set, False, cfg.dataset.batch_size, device)
    logger.info("train: %s; val: %s", train_set, val_set)
    # Same initial weights everywhere; then a different random stream per process (augmentation,
    # loader workers), as one process with a bigger batch would have.
    seed_everything(cfg.dataset.seed + dist.rank(), t.deterministic)
    logger.info("%s: %s parameters on %s", cfg.model.name, f"{count_parameters(model):,}", device)
    criterion = SegmentationLoss(t.aux_weight)
    learner = make_learner(model, cfg, device)

    with RunFolder(cfg) as run_dir:
        resume_path = Path(t.resume_from) if t.resume_from else None
        if t.resume and resume_path is None:
            resume_path = run_dir / "last.pt"
        progress = Progress()
        if resume_path is not None:
            progress = resume(learner, resume_path, cfg, device, command)
            if progress.finished and not can_extend(progress, learner, cfg, run_dir):
                return summary(run_dir, progress, resumed=True)
            logger.info("resuming %s at epoch %d", resume_path, progress.epoch + 1)
        net = wrap_for_training(model, cfg, device)
        writer = open_writer(run_dir, cfg, progress.epoch + 1)
        stop_early = False
        with (
            StopSignal() as stop,
            contextlib.closing(writer) if writer else contextlib.nullcontext(),
        ):
            for epoch in range(progress.epoch + 1, t.epochs + 1):
                started = time.perf_counter()
                train_loader.sampler.set_epoch(epoch)
                loss_sum, steps, skipped = train_one_epoch(
                    net,
                    train_loader,
                    criterion,
                    learner.optimizer,
                    learner.scaler,
                    cfg,
                    device,
                    epoch,
                    stop,
                    progress.step,
                    progress.loss_sum if progress.step else 0.0,
                )
                if stop.received is not None:
                    progress.step, progress.loss_sum = steps, loss_sum
                    raise interrupted(stop.received, learner, progress, cfg, run_dir, command)
                train_loss = mean_train_loss(loss_sum, steps - skipped, device)
                val = validate(net, val_loader, criterion, cfg, device)
                improved, stop_early = end_epoch(learner, progress, epoch, val["loss"], cfg)
                if dist.is_main():
                    lr = learner.optimizer.param_groups[0]["lr"]
                    seconds = time.perf_counter() - started
                    log_examples(writer, model, val_set, cfg, device, epoch)
                    record_epoch(
                        run_dir, writer, progress, epoch, train_loss, val, lr, seconds, improved
                    )
                    save_epoch(run_dir, learner, progress, cfg, improved)
                if stop_early:
                    logger.info(
                        "early stopping at epoch %d (best epoch %d)", epoch, progress.best_epoch
                    )
                    break
    dist.barrier()
    return summary(
        run_dir, progress, resume_path is not None, stopped_early=stop_early, model=model
    )
