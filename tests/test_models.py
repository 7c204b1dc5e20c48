"""The eight networks, checked against SPEC sections 1-3."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models
from models import MODEL_NAMES, AttentionGate, DyConv2d, DyConvBlock, build_model, count_parameters

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
DYNAMIC = ("dasnet", "thindyunet", "fulldyunet", "deepsupdyunet")
DEEP_SUPERVISION = ("dasnet", "deepsupdyunet")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_matches_the_paper_exactly(name: str) -> None:
    assert count_parameters(build_model(name)) == PAPER_PARAMS[name]


def test_model_names_are_the_eight_of_the_final_paper() -> None:
    assert set(MODEL_NAMES) == set(PAPER_PARAMS)


@pytest.mark.parametrize(
    ("c_in", "c_out", "expected"), [(3, 64, 3_596), (64, 64, 74_980), (128, 64, 151_876)]
)
def test_dyconv_block_parameter_counts(c_in: int, c_out: int, expected: int) -> None:
    assert count_parameters(DyConvBlock(c_in, c_out)) == expected


def test_thin_decoder_stage_has_110848_parameters() -> None:
    model = build_model("thindyunet")
    assert count_parameters(model.decoder[0]) == 110_848


def test_attention_branch_width() -> None:
    assert DyConv2d(3, 64).attention[1].out_channels == 2  # h = K for RGB input
    assert DyConv2d(64, 64).attention[1].out_channels == 17  # floor(64 * 0.25) + 1
    assert DyConv2d(128, 64).attention[1].out_channels == 33


def test_kernel_bank_starts_from_a_standard_normal() -> None:
    torch.manual_seed(0)
    w = DyConv2d(128, 64).weight
    assert abs(w.mean().item()) < 0.01
    assert abs(w.std().item() - 1.0) < 0.01


def _per_sample_reference(conv: DyConv2d, x: torch.Tensor) -> torch.Tensor:
    """Each sample alone, convolved with its own aggregated kernel, written out plainly."""
    outs = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        pooled = xb.mean(dim=(2, 3), keepdim=True)
        logits = conv.attention[3](torch.relu(conv.attention[1](pooled))).flatten()
        pi = torch.softmax(logits / 30.0, dim=0)
        kernel = sum(pi[k] * conv.weight[k] for k in range(conv.num_kernels))
        outs.append(F.conv2d(xb, kernel, padding=1))
    return torch.cat(outs)


@pytest.mark.parametrize("method", ["auto", "grouped", "per_sample", "mixture", "unfold"])
def test_batched_dynamic_conv_equals_each_sample_alone(method: str) -> None:
    torch.manual_seed(0)
    conv = DyConv2d(3, 8, method=method)
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        diff = (conv(x) - _per_sample_reference(conv, x)).abs().max().item()
    assert diff <= 1e-5


def test_samples_get_different_kernels() -> None:
    """A batch must not share one kernel: the same image alone and in a batch agree."""
    torch.manual_seed(1)
    conv = DyConv2d(3, 8)
    with torch.no_grad():
        conv.attention[3].bias.copy_(torch.tensor([0.0, 0.0]))
        conv.attention[3].weight.mul_(1000)  # make pi strongly input dependent
        x = torch.cat([torch.zeros(1, 3, 8, 8), torch.rand(1, 3, 8, 8) * 5])
        pi = conv.kernel_weights(x)
        assert not torch.allclose(pi[0], pi[1])
        assert torch.allclose(conv(x)[1:], conv(x[1:]), atol=1e-5)


def test_attention_weights_are_softmax_over_temperature_30_and_sum_to_one() -> None:
    torch.manual_seed(0)
    conv = DyConv2d(64, 64)
    x = torch.randn(3, 64, 8, 8)
    with torch.no_grad():
        pi = conv.kernel_weights(x)
        logits = conv.attention(x).flatten(1)
    assert conv.temperature == 30.0
    assert torch.allclose(pi, torch.softmax(logits / 30.0, dim=1))
    assert torch.allclose(pi.sum(dim=1), torch.ones(3))


def test_unknown_dynamic_conv_method_is_refused() -> None:
    with pytest.raises(ValueError, match="fastest"):
        DyConv2d(3, 8, method="fastest")  # type: ignore[arg-type]


def test_dyconv_block_is_conv_groupnorm8_leakyrelu() -> None:
    block = DyConvBlock(64, 64)
    assert isinstance(block[1], torch.nn.GroupNorm) and block[1].num_groups == 8
    assert block[1].affine
    assert isinstance(block[2], torch.nn.LeakyReLU) and block[2].negative_slope == 0.01


def test_attention_gate_equals_the_formula() -> None:
    torch.manual_seed(0)
    gate = AttentionGate(64, 64, 32)
    g, skip = torch.randn(2, 64, 8, 8), torch.randn(2, 64, 8, 8)
    wg, wx, psi = (
        gate.w_g.weight[:, :, 0, 0],
        gate.w_x.weight[:, :, 0, 0],
        gate.psi.weight[:, :, 0, 0],
    )
    inner = torch.einsum("oc,bchw->bohw", wg, g) + torch.einsum("oc,bchw->bohw", wx, skip)
    alpha = torch.sigmoid(torch.einsum("oc,bchw->bohw", psi, torch.relu(inner)))
    with torch.no_grad():
        assert torch.allclose(gate(g, skip), skip * alpha, atol=1e-6)
    assert gate.w_g.bias is None and gate.w_x.bias is None and gate.psi.bias is None


@pytest.mark.parametrize("name", DYNAMIC)
@pytest.mark.parametrize("size", [128, 256])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shapes(name: str, size: int, batch: int) -> None:
    model = build_model(name)
    x = torch.rand(batch, 3, size, size)
    with torch.no_grad():
        model.eval()
        out = model(x)
        assert isinstance(out, torch.Tensor)
        assert out.shape == (batch, 1, size, size)
        model.train()
        out = model(x)
    if name in DEEP_SUPERVISION:
        main, aux = out
        assert main.shape == (batch, 1, size, size)
        assert isinstance(aux, list) and len(aux) == 3
        assert all(a.shape == (batch, 1, size, size) for a in aux)
    else:
        assert isinstance(out, torch.Tensor) and out.shape == (batch, 1, size, size)


@pytest.mark.parametrize("name", ["unet", "pan", "pspnet", "mobileunet"])
def test_baseline_output_shape(name: str) -> None:
    model = build_model(name).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 128, 128)).shape == (2, 1, 128, 128)


def test_mobileunet_is_smps_unet_on_mobilenet_v2_and_any_smp_encoder_can_be_asked_for() -> None:
    model = build_model("mobileunet")
    assert type(model).__name__ == "Unet" and type(model.encoder).__name__ == "MobileNetV2Encoder"
    assert count_parameters(model.encoder) == 2_223_872  # torchvision's MobileNetV2 features
    small = build_model("unet", encoder_name="resnet18")
    assert count_parameters(small) == 14_328_209
    with pytest.raises(ValueError, match="'resnet35' is not an smp encoder"):
        build_model("unet", encoder_name="resnet35")


def test_aux_heads_only_in_train_mode_and_ordered_coarse_to_fine() -> None:
    torch.manual_seed(0)
    model = build_model("dasnet", width=16, stages=4)
    x = torch.rand(1, 3, 64, 64)
    model.train()
    main, aux = model(x)
    # aux_i is the 1x1 head on a decoder stage at 16, 32, 64 px, upsampled to 64 px:
    # the coarsest map upsampled is smoother than the finest, which is at full size already.
    assert len(aux) == 3
    assert [h.in_channels for h in model.aux_heads] == [16, 16, 16]
    model.eval()
    assert isinstance(model(x), torch.Tensor)


@pytest.mark.parametrize("name", DYNAMIC)
def test_one_backward_pass_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).train()
    out = model(torch.rand(2, 3, 128, 128))
    main, aux = out if isinstance(out, tuple) else (out, [])
    (main.mean() + sum(a.mean() for a in aux)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    # A zero gradient is only legitimate behind the attention branch's ReLU (a dead unit).
    zero = [n for n, p in model.named_parameters() if not p.grad.any() and "attention" not in n]
    assert zero == []


def test_smp_pspnet_leaves_its_deep_encoder_layers_unused() -> None:
    """smp's PSPNet default encoder_depth=3 keeps resnet34's layer3/4 (counted in the paper's
    21.4 M) but never runs them: distributed training must allow unused parameters."""
    model = build_model("pspnet").train()
    model(torch.rand(2, 3, 128, 128)).mean().backward()
    unused = {n.split(".")[1] for n, p in model.named_parameters() if p.grad is None}
    assert unused == {"layer3", "layer4"}


def test_deep_supervision_switches_follow_the_ablation_table() -> None:
    expect = {
        "thindyunet": (False, False, False),
        "fulldyunet": (True, False, False),
        "deepsupdyunet": (False, False, True),
        "dasnet": (True, True, True),
    }
    for name, switches in expect.items():
        m = build_model(name)
        assert (m.dynamic_decoder, m.attention_gates, m.deep_supervision) == switches
        assert models.has_deep_supervision(m) == switches[2]


@pytest.mark.parametrize("size", [(100, 128), (128, 192), (64, 64)])
def test_input_side_not_a_multiple_of_128_is_refused(size: tuple[int, int]) -> None:
    model = build_model("dasnet").eval()
    with pytest.raises(ValueError, match=rf"{size[0]}x{size[1]}.*multiple of 128"):
        model(torch.rand(1, 3, *size))


def test_smaller_stages_change_the_required_multiple() -> None:
    model = build_model("thindyunet", stages=3, width=8).eval()
    assert model(torch.rand(1, 3, 24, 40)).shape == (1, 1, 24, 40)
    with pytest.raises(ValueError, match="multiple of 8"):
        model(torch.rand(1, 3, 20, 40))


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


def test_python_m_models_lists_the_eight_measured_beside_the_authors_table() -> None:
    from models.__main__ import parameter_table

    table = parameter_table()
    rows = [line for line in table.splitlines()[2:] if line.startswith("| ")]
    assert [row.split(" | ")[0][2:] for row in rows] == list(MODEL_NAMES)
    assert all(" | yes | " in row for row in rows)
    assert "| mobileunet | 6,628,945 (6.63 M) | 6,628,945 | yes | 6.0 M |" in table
