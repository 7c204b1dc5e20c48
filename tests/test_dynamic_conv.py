"""models/dynamic_conv.py: DyConv2d and DyConvBlock as SPEC section 2 describes them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models import DyConv2d, DyConvBlock, build_model, count_parameters


@pytest.mark.parametrize(
    ("c_in", "c_out", "expected"), [(3, 64, 3_596), (64, 64, 74_980), (128, 64, 151_876)]
)
def test_dyconv_block_parameter_counts(c_in: int, c_out: int, expected: int) -> None:
    assert count_parameters(DyConvBlock(c_in, c_out)) == expected


def test_attention_branch_width() -> None:
    assert DyConv2d(3, 64).attention[1].out_channels == 2  # h = K for RGB input
    assert DyConv2d(64, 64).attention[1].out_channels == 17  # floor(64 * 0.25) + 1
    assert DyConv2d(128, 64).attention[1].out_channels == 33


def test_kernel_bank_starts_from_a_standard_normal() -> None:
    torch.manual_seed(0)
    w = DyConv2d(128, 64).weight
    assert abs(w.mean().item()) < 0.01
    assert abs(w.std().item() - 1.0) < 0.01


def test_kaiming_init_scales_the_bank_to_he_std_with_the_same_parameters() -> None:
    torch.manual_seed(0)
    w = DyConv2d(128, 64, init="kaiming").weight
    expected = math.sqrt(2.0 / (128 * 9))  # fan_in = C_in * 3 * 3
    assert abs(w.std().item() / expected - 1.0) < 0.01
    assert abs(w.mean().item()) < 0.01 * expected
    paper, kaiming = build_model("dasnet"), build_model("dasnet", dyconv_init="kaiming")
    assert count_parameters(paper) == count_parameters(kaiming) == 1_657_672
    assert list(paper.state_dict()) == list(kaiming.state_dict())
    first = kaiming.encoder[0][0].weight  # fan_in 27
    assert abs(first.std().item() / math.sqrt(2 / 27) - 1) < 0.1


def test_unknown_init_is_refused() -> None:
    with pytest.raises(ValueError, match="'xavier'.*paper, kaiming"):
        DyConv2d(3, 8, init="xavier")  # type: ignore[arg-type]


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


@pytest.mark.parametrize("c_in", [3, 16])
def test_batched_dynamic_conv_equals_each_sample_alone(c_in: int) -> None:
    torch.manual_seed(0)
    conv = DyConv2d(c_in, 8)
    x = torch.rand(4, c_in, 16, 16)
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


def test_dyconv_block_is_conv_groupnorm8_leakyrelu() -> None:
    block = DyConvBlock(64, 64)
    assert isinstance(block[1], torch.nn.GroupNorm) and block[1].num_groups == 8
    assert block[1].affine
    assert isinstance(block[2], torch.nn.LeakyReLU) and block[2].negative_slope == 0.01
