"""The paper's baselines, straight from segmentation_models_pytorch: UNet, PAN, PSPNet."""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

BASELINES: dict[str, type[nn.Module]] = {"unet": smp.Unet, "pan": smp.PAN, "pspnet": smp.PSPNet}
ENCODER_WEIGHTS = ("imagenet", None)


class PretrainedWeightsError(RuntimeError):
    """The ImageNet encoder weights could not be fetched (offline machine, blocked hub)."""


def normalise_weights(encoder_weights: str | None) -> str | None:
    """Accept 'imagenet' or none (None, 'none', 'null', ''), as configs and CLIs spell them."""
    if encoder_weights is None or str(encoder_weights).lower() in ("none", "null", ""):
        return None
    if encoder_weights != "imagenet":
        raise ValueError(
            f"encoder_weights={encoder_weights!r} is not supported; valid: 'imagenet' or 'none'"
        )
    return encoder_weights


def build_baseline(
    name: str,
    in_channels: int = 3,
    classes: int = 1,
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
) -> nn.Module:
    """An smp baseline; ``encoder_weights='imagenet'`` downloads the encoder as the paper did."""
    weights = normalise_weights(encoder_weights)
    try:
        return BASELINES[name](
            encoder_name=encoder_name,
            encoder_weights=weights,
            in_channels=in_channels,
            classes=classes,
        )
    except Exception as err:
        if weights is None:
            raise
        raise PretrainedWeightsError(
            f"could not load ImageNet weights for the {name} encoder {encoder_name!r} "
            f"({type(err).__name__}: {err}). This machine may be offline: set "
            f"model.encoder_weights=none (train from scratch) or pre-populate the Hugging Face "
            f"cache (HF_HOME) on a machine with internet."
        ) from err
