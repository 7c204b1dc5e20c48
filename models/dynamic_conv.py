"""Dynamic convolution (Chen et al., CVPR 2020) as DAS-Net uses it (SPEC section 2).

A block holds K kernels and a small attention branch that, per sample, softmax-weights them;
each sample is convolved with its own weighted kernel. This file is the definition: plain
PyTorch, the paper's math. Faster equivalents live in models/fast/ (``optimize_for_training``,
``optimize_for_inference``) and are tested against these modules.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Init = Literal["paper", "kaiming"]
INITS: tuple[str, ...] = ("paper", "kaiming")


def attention_hidden(in_channels: int, num_kernels: int, ratio: float = 0.25) -> int:
    """Width of the attention branch: K for RGB input, else floor(C_in * ratio) + 1."""
    return num_kernels if in_channels == 3 else int(in_channels * ratio) + 1


class DyConv2d(nn.Module):
    """K-kernel dynamic 3x3 convolution (no bias) with its attention branch.

    pi = softmax(fc2(ReLU(fc1(avgpool(x)))) / 30) weights the K kernels of the bank per sample.
    ``init="paper"`` draws the bank from N(0, 1) as the paper's code does; ``"kaiming"`` scales
    that draw to std sqrt(2 / fan_in), fan_in = C_in * kh * kw (He et al., for LeakyReLU nets).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_kernels: int = 2,
        kernel_size: int = 3,
        temperature: float = 30.0,
        init: Init = "paper",
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"unknown dyconv init {init!r}; valid: {', '.join(INITS)}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_kernels, self.temperature = num_kernels, temperature
        self.padding = kernel_size // 2
        bank = torch.randn(num_kernels, out_channels, in_channels, kernel_size, kernel_size)
        if init == "kaiming":
            bank *= math.sqrt(2.0 / (in_channels * kernel_size * kernel_size))
        self.weight = nn.Parameter(bank)
        hidden = attention_hidden(in_channels, num_kernels)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_kernels, 1, bias=True),
        )

    def kernel_weights(self, x: Tensor) -> Tensor:
        """pi: B x K attention over the kernels, each row summing to 1."""
        return torch.softmax(self.attention(x).flatten(1) / self.temperature, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        b, c_in, h, w = x.shape
        pi = self.kernel_weights(x)
        # sum_k pi[b, k] * weight[k]: one kernel per sample, stacked along the output channels
        kernels = (pi @ self.weight.flatten(1)).view(b * self.out_channels, *self.weight.shape[2:])
        # every sample is one group of a single convolution over the batch folded into channels
        out = F.conv2d(x.reshape(1, b * c_in, h, w), kernels, padding=self.padding, groups=b)
        return out.view(b, self.out_channels, *out.shape[-2:])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, num_kernels={self.num_kernels}, "
            f"temperature={self.temperature}"
        )


class DyConvBlock(nn.Sequential):
    """DyConv2d -> GroupNorm(8) -> LeakyReLU(0.01): the unit of the DyUNet family."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_kernels: int = 2,
        groups: int = 8,
        init: Init = "paper",
    ) -> None:
        super().__init__(
            DyConv2d(in_channels, out_channels, num_kernels, init=init),
            nn.GroupNorm(groups, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )
