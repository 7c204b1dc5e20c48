"""What every run sets up before its first batch: the device, the seeds, the model, autocast.

Training, testing and the tools start here, so each of these facts has one home: what device
``auto`` means and whether a named one exists, how the config builds a model, which input
sides that model accepts, and what ``trainer.amp`` turns on.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from models import build_model, optimize_for_training, to_channels_last

from . import distributed as dist
from .config import ConfigError, model_overrides
from .cpu import keep_freed_memory
from .inference_modes import size_multiple

DEVICES = "auto, cpu, cuda, cuda:N, mps"


def pick_device(name: str = "auto", key: str = "config key 'trainer.device'") -> torch.device:
    """``auto``: CUDA when present, else Apple MPS, else CPU; a named device must exist here.

    ``key`` names the setting in the error (``--device`` for the tools).
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{key} = '{name}': not a device; valid: {DEVICES}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{key} = '{name}': no CUDA GPU is available here; use auto or cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{key} = '{name}': this machine has {count} GPU(s), cuda:0..")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{key} = '{name}': Apple MPS is not available here; use auto or cpu")
    elif device.type != "cpu":
        raise ConfigError(f"{key} = '{name}': not supported; valid: {DEVICES}")
    return device


def setup_device(cfg: DictConfig) -> torch.device:
    """This process's device (joining torchrun's group if launched by it); on the CPU, glibc is
    told to keep freed memory unless ``trainer.keep_freed_memory`` is off."""
    device = dist.setup(pick_device(cfg.trainer.device))
    if device.type == "cpu" and cfg.trainer.keep_freed_memory:
        keep_freed_memory()
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build(cfg: DictConfig, device: torch.device, training: bool = False) -> nn.Module:
    """The configured model on its device (channels_last if asked), seeded for its init; for
    ``training``, with the fast training modules where ``trainer.fused`` says so.

    Settings the model refuses (e.g. too few stages for deep supervision) are a ConfigError
    naming the model keys; the configured input sides are checked against the model.
    """
    seed_everything(cfg.dataset.seed, cfg.trainer.deterministic)
    kwargs = model_overrides(cfg)
    try:
        model = build_model(cfg.model.name, **kwargs)
    except ValueError as exc:
        keys = ", ".join(f"model.{k}={v}" for k, v in kwargs.items() if k != "encoder_weights")
        raise ConfigError(f"config keys {keys or 'model.*'}: {exc}") from None
    check_image_size(cfg, model)
    model = model.to(device)
    if training and use_fused(cfg, device):
        model = optimize_for_training(model)
    if cfg.trainer.channels_last:
        model = to_channels_last(model)
    return model


def check_image_size(cfg: DictConfig, model: nn.Module) -> None:
    """Refuse configured input sides ``model`` cannot take, before any data is read."""
    multiple = size_multiple(model)
    for key in ("dataset.image_size", "test.latency_size"):
        size = list(OmegaConf.select(cfg, key))
        if any(side % multiple for side in size):
            raise ConfigError(
                f"config key '{key}' = {size}: {cfg.model.name} needs sides that are multiples "
                f"of {multiple}, e.g. [{multiple * 4}, {multiple * 4}]"
            )


def use_fused(cfg: DictConfig, device: torch.device) -> bool:
    """``trainer.fused``: ``auto`` uses models/fast/'s training modules where they pay (the CPU,
    FP32, eager: BENCHMARKS.md), ``always`` everywhere, ``never`` nowhere."""
    t = cfg.trainer
    if t.fused.value == "auto":
        return device.type == "cpu" and t.amp.value == "off" and not t.compile
    return t.fused.value == "always"


def saved_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The model's build arguments as stored in checkpoints (never re-download encoder weights)."""
    kwargs = model_overrides(cfg)
    if "encoder_weights" in kwargs:
        kwargs["encoder_weights"] = None
    return kwargs


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision as ``amp`` says (``trainer.amp``: bf16, fp16 or off)."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
