"""The paper's baselines, straight from segmentation_models_pytorch: UNet, PAN, PSPNet, and the
final version's MobileUNet (smp's Unet on a MobileNetV2 encoder)."""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

BASELINES: dict[str, type[nn.Module]] = {
    "unet": smp.Unet,
    "pan": smp.PAN,
    "pspnet": smp.PSPNet,
    "mobileunet": smp.Unet,
}
ENCODERS = {
    "unet": "resnet34",
    "pan": "resnet34",
    "pspnet": "resnet34",
    "mobileunet": "mobilenet_v2",
}
ENCODER_WEIGHTS = ("imagenet", None)


class PretrainedWeightsError(RuntimeError):
    """The ImageNet encoder weights could not be fetched (offline machine, blocked hub)."""


def check_encoder(encoder_name: str) -> None:
    """Refuse a name smp does not know (its own error is a KeyError listing 76 names)."""
    if encoder_name.startswith("tu-") or encoder_name in smp.encoders.get_encoder_names():
        return
    raise ValueError(
        f"encoder_name={encoder_name!r} is not an smp encoder; valid: e.g. resnet18, resnet34, "
        f"mobilenet_v2, efficientnet-b0 or tu-<timm name> "
        f"(all: segmentation_models_pytorch.encoders.get_encoder_names())"
    )


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
    encoder_name: str | None = None,
    encoder_weights: str | None = None,
) -> nn.Module:
    """An smp baseline (encoder: the paper's, ``ENCODERS[name]``, unless ``encoder_name``);
    ``encoder_weights='imagenet'`` downloads the encoder as the paper did."""
    weights = normalise_weights(encoder_weights)
    encoder_name = encoder_name or ENCODERS[name]
    check_encoder(encoder_name)
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
