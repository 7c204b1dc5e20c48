"""models/fast/dynamic_conv.py: every dynamic-convolution method, and FastDyConv2d against the
plain DyConv2d it replaces (FP32 outputs within 1e-4, FP64 gradients within 1e-9 relative)."""

from __future__ import annotations

import copy

import pytest
import torch

from models import DyConv2d
from models.fast.dynamic_conv import METHODS, FastDyConv2d, choose_method, dynamic_conv2d


def _conv_and_grads(method: str, x: torch.Tensor, weight: torch.Tensor, pi: torch.Tensor):
    x, weight, pi = (t.detach().clone().requires_grad_() for t in (x, weight, pi))
    out = dynamic_conv2d(x, weight, pi, padding=1, method=method)
    grad = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    out.backward(grad)
    return out.detach(), x.grad, weight.grad, pi.grad


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_all_dynamic_conv_methods_agree_forward_and_backward(batch: int, channels_last: bool):
    torch.manual_seed(0)
    x = torch.randn(batch, 16, 12, 12)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(2, 8, 16, 3, 3) * 0.1
    pi = torch.softmax(torch.randn(batch, 2), dim=1)
    expected = _conv_and_grads("grouped", x, weight, pi)
    for method in METHODS:
        got = _conv_and_grads(method, x, weight, pi)
        for name, a, b in zip(("out", "d x", "d weight", "d pi"), expected, got, strict=True):
            diff = (a - b).abs().max().item()
            assert diff <= 1e-4, f"{method}, {name}: {diff}"


def test_auto_picks_one_plain_conv_at_batch_one_and_a_known_method_otherwise() -> None:
    assert choose_method(torch.zeros(1, 8, 4, 4)) == "per_sample"
    for x in (
        torch.zeros(4, 8, 4, 4),
        torch.zeros(4, 3, 4, 4),
        torch.zeros(4, 8, 4, 4).to(memory_format=torch.channels_last),
    ):
        assert choose_method(x) in METHODS


def test_unknown_dynamic_conv_method_is_refused() -> None:
    x, weight, pi = torch.zeros(1, 3, 4, 4), torch.zeros(2, 8, 3, 3, 3), torch.ones(1, 2) / 2
    with pytest.raises(ValueError, match="fastest"):
        dynamic_conv2d(x, weight, pi, method="fastest")  # type: ignore[arg-type]


def _fast_twin(conv: DyConv2d, method: str) -> DyConv2d:
    fast = copy.deepcopy(conv)
    fast.__class__ = FastDyConv2d
    fast.method = method
    return fast


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("c_in", "batch"), [(3, 4), (16, 3), (16, 1)])
def test_fast_dyconv_equals_the_plain_one(method: str, c_in: int, batch: int) -> None:
    torch.manual_seed(0)
    conv = DyConv2d(c_in, 8)
    fast = _fast_twin(conv, method)
    x = torch.rand(batch, c_in, 12, 10)
    with torch.no_grad():
        assert (fast(x) - conv(x)).abs().max().item() <= 1e-4
    conv, fast, x = conv.double(), fast.double(), x.double().requires_grad_()
    x_fast = x.detach().clone().requires_grad_()
    weights = torch.linspace(-1, 1, batch * 8 * 12 * 10, dtype=torch.float64).view(batch, 8, 12, 10)
    (conv(x) * weights).sum().backward()
    (fast(x_fast) * weights).sum().backward()
    pairs = [("x", x.grad, x_fast.grad)]
    named = zip(conv.named_parameters(), fast.parameters(), strict=True)
    pairs += [(n, p.grad, q.grad) for (n, p), q in named]
    for name, a, b in pairs:
        assert (a - b).abs().max().item() <= 1e-9 * max(1.0, a.abs().max().item()), name
