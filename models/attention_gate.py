"""Additive attention gate (Oktay et al., 2018) on a U-Net skip connection (SPEC section 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AttentionGate(nn.Module):
    """skip * sigmoid(psi(ReLU(W_g(g) + W_x(skip)))): lets the decoder mute irrelevant skips.

    ``g`` is the upsampled decoder feature map, at the skip's resolution. All three projections
    are 1x1 convolutions without bias, as in the paper.
    """

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.w_g = nn.Conv2d(gate_channels, inter_channels, 1, bias=False)
        self.w_x = nn.Conv2d(skip_channels, inter_channels, 1, bias=False)
        self.psi = nn.Conv2d(inter_channels, 1, 1, bias=False)

    def coefficients(self, g: Tensor, skip: Tensor) -> Tensor:
        """The gate's B x 1 x H x W weights in (0, 1)."""
        return torch.sigmoid(self.psi(torch.relu(self.w_g(g) + self.w_x(skip))))

    def forward(self, g: Tensor, skip: Tensor) -> Tensor:
        return skip * self.coefficients(g, skip)
