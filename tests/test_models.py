"""models/__init__.py: the eight networks behind build_model (SPEC section 1) and the smp
baselines (models/baselines.py)."""

from __future__ import annotations

import pytest
import torch

import models
from models import MODEL_NAMES, build_model, count_parameters

PAPER_PARAMS = {
    "dasnet": 1_657_672,
    "thindyunet": 1_341_385,
    "fulldyunet": 1_628_581,
    "deepsupdyunet": 1_341_580,
    "unet": 24_436_369,
    "pan": 21_475_816,
    "pspnet": 21_437_985,
    "mobileunet": 6_628_945,  # smp 0.5; the authors' final table prints "6.0 M"
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_matches_the_paper_exactly(name: str) -> None:
    assert count_parameters(build_model(name)) == PAPER_PARAMS[name]


def test_model_names_are_the_eight_of_the_final_paper() -> None:
    assert set(MODEL_NAMES) == set(PAPER_PARAMS)


@pytest.mark.parametrize("name", ["unet", "pan", "pspnet", "mobileunet"])
def test_baseline_output_shape(name: str) -> None:
    model = build_model(name).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 128, 128)).shape == (2, 1, 128, 128)


def test_smp_pspnet_leaves_its_deep_encoder_layers_unused() -> None:
    """smp's PSPNet default encoder_depth=3 keeps resnet34's layer3/4 (counted in the paper's
    21.4 M) but never runs them: distributed training must allow unused parameters."""
    model = build_model("pspnet").train()
    model(torch.rand(2, 3, 128, 128)).mean().backward()
    unused = {n.split(".")[1] for n, p in model.named_parameters() if p.grad is None}
    assert unused == {"layer3", "layer4"}


def test_unknown_model_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="dasnet2.*dasnet, thindyunet"):
        build_model("dasnet2")


def test_unknown_override_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"\['depth'\].*in_channels, classes, width, stages"):
        build_model("dasnet", depth=5)
    with pytest.raises(ValueError, match=r"\['width'\].*encoder_weights"):
        build_model("unet", width=32)


def test_overrides_reach_the_network() -> None:
    model = build_model("fulldyunet", in_channels=1, classes=2, width=16, stages=3)
    out = model.eval()(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 2, 32, 32)
    assert build_model("unet", in_channels=1, classes=3)(torch.rand(1, 1, 64, 64)).shape[1] == 3


def test_failed_weight_download_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import segmentation_models_pytorch.encoders as encoders

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(encoders, "hf_hub_download", offline)
    monkeypatch.setattr(encoders, "load_state_dict_from_url", offline, raising=False)
    with pytest.raises(models.PretrainedWeightsError, match="model.encoder_weights=none"):
        build_model("unet", encoder_weights="imagenet")


def test_bad_encoder_weights_value_is_refused() -> None:
    with pytest.raises(ValueError, match="'ssl'.*imagenet"):
        build_model("pan", encoder_weights="ssl")


def test_mobileunet_is_smps_unet_on_mobilenet_v2_and_any_smp_encoder_can_be_asked_for() -> None:
    model = build_model("mobileunet")
    assert type(model).__name__ == "Unet" and type(model.encoder).__name__ == "MobileNetV2Encoder"
    assert count_parameters(model.encoder) == 2_223_872  # torchvision's MobileNetV2 features
    small = build_model("unet", encoder_name="resnet18")
    assert count_parameters(small) == 14_328_209
    with pytest.raises(ValueError, match="'resnet35' is not an smp encoder"):
        build_model("unet", encoder_name="resnet35")


def test_python_m_models_lists_the_eight_measured_beside_the_authors_table() -> None:
    from models.__main__ import parameter_table

    table = parameter_table()
    rows = [line for line in table.splitlines()[2:] if line.startswith("| ")]
    assert [row.split(" | ")[0][2:] for row in rows] == list(MODEL_NAMES)
    assert all(" | yes | " in row for row in rows)
    assert "| mobileunet | 6,628,945 (6.63 M) | 6,628,945 | yes | 6.0 M |" in table
