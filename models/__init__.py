"""The eight networks of the DAS-Net paper behind one factory, ``build_model``."""

from __future__ import annotations

from typing import Any

from torch import nn

from .attention_gate import AttentionGate
from .baselines import BASELINES, PretrainedWeightsError, build_baseline
from .dynamic_conv import INITS, DyConv2d, DyConvBlock
from .dyunet import VARIANTS, DyUNet
from .fast import optimize_for_inference, optimize_for_training, to_channels_last
from .hub import from_pretrained, save_pretrained

MODEL_NAMES: tuple[str, ...] = (
    "dasnet",
    "thindyunet",
    "fulldyunet",
    "deepsupdyunet",
    "unet",
    "pan",
    "pspnet",
    "mobileunet",
)

# What a user may override per family (the switches are what makes a variant, so they are fixed).
DYNAMIC_OVERRIDES = ("in_channels", "classes", "width", "stages", "num_kernels", "dyconv_init")
BASELINE_OVERRIDES = ("in_channels", "classes", "encoder_name", "encoder_weights")


def valid_overrides(name: str) -> tuple[str, ...]:
    """The keyword overrides ``build_model`` accepts for model ``name``."""
    check_name(name)
    return DYNAMIC_OVERRIDES if name in VARIANTS else BASELINE_OVERRIDES


def check_name(name: str) -> None:
    """Refuse an unknown model name, listing the valid ones."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}")


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build one of MODEL_NAMES; overrides such as in_channels, classes, width, encoder_weights."""
    allowed = valid_overrides(name)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown override(s) {unknown} for model {name!r}; valid: {', '.join(allowed)}"
        )
    if name in VARIANTS:
        return DyUNet(**VARIANTS[name], **overrides)
    return build_baseline(name, **overrides)


def has_deep_supervision(model: nn.Module) -> bool:
    """Whether the model returns auxiliary logits in train mode."""
    return bool(getattr(model, "deep_supervision", False))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, the figure the paper's table reports."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "MODEL_NAMES",
    "AttentionGate",
    "BASELINES",
    "DyConv2d",
    "DyConvBlock",
    "DyUNet",
    "INITS",
    "PretrainedWeightsError",
    "build_model",
    "count_parameters",
    "from_pretrained",
    "has_deep_supervision",
    "optimize_for_inference",
    "optimize_for_training",
    "save_pretrained",
    "to_channels_last",
    "valid_overrides",
]
