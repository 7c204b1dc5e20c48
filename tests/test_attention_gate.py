"""models/attention_gate.py: the additive attention gate of SPEC section 3."""

from __future__ import annotations

import torch

from models import AttentionGate


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
        assert torch.allclose(gate.coefficients(g, skip), alpha, atol=1e-6)
    assert gate.w_g.bias is None and gate.w_x.bias is None and gate.psi.bias is None
