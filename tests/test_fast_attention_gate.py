"""models/fast/attention_gate.py: the fused upsample + gate + concatenation against the plain
composition (models/dyunet.upsample, AttentionGate, torch.cat)."""

from __future__ import annotations

import torch

from models.attention_gate import AttentionGate
from models.dyunet import upsample
from models.fast.attention_gate import gated_concat


def _gate_and_grads(fused: bool, low, skip, gate):
    """cat([g, gate(g, skip)]), g = upsample(low), and the gradients of a fixed weighted sum."""
    low, skip = (t.detach().clone().requires_grad_() for t in (low, skip))
    gate.zero_grad()
    if fused:
        out = gated_concat(gate, low, skip)
    else:  # the module's own composition, autograd throughout
        g = upsample(low)
        out = torch.cat([g, gate(g, skip)], dim=1)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return [out.detach(), low.grad, skip.grad, *(p.grad for p in gate.parameters())]


def test_fused_upsample_gate_concat_equals_autograd_forward_and_backward() -> None:
    """UpGatedConcat (CPU training path) against upsample + AttentionGate + cat, in float64."""
    torch.manual_seed(0)
    gate = AttentionGate(16, 16, 8).double()
    low = torch.randn(3, 16, 6, 10, dtype=torch.float64)
    skip = torch.randn(3, 16, 12, 20, dtype=torch.float64)
    fused = _gate_and_grads(True, low, skip, gate)
    plain = _gate_and_grads(False, low, skip, gate)
    names = ["out", "low", "skip", "w_g", "w_x", "psi"]
    for name, a, b in zip(names, fused, plain, strict=True):
        assert a is not None and b is not None, name
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), f"{name}: {(a - b).abs().max()}"


def test_gated_concat_without_autograd_equals_the_plain_gate() -> None:
    torch.manual_seed(0)
    gate = AttentionGate(16, 16, 8)
    low, skip = torch.randn(2, 16, 5, 7), torch.randn(2, 16, 10, 14)
    with torch.no_grad():
        g = upsample(low)
        expected = torch.cat([g, gate(g, skip)], dim=1)
        assert (gated_concat(gate, low, skip) - expected).abs().max().item() <= 1e-4
