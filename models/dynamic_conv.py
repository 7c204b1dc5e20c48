"""Dynamic convolution (Chen et al., CVPR 2020) as DAS-Net uses it.

A block holds K kernels and a small attention branch that, per sample, softmax-weights them.
Convolution is linear in the kernel, so the weighted kernel can be built first and then applied,
or every kernel can be applied and the outputs mixed: ``dynamic_conv2d`` is the single place
that decides how, so the rest of the network never depends on the choice.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Method = Literal["auto", "grouped", "per_sample", "mixture"]
METHODS: tuple[str, ...] = ("auto", "grouped", "per_sample", "mixture")


def attention_hidden(in_channels: int, num_kernels: int, ratio: float = 0.25) -> int:
    """Width of the attention branch: K for RGB input, else floor(C_in * ratio) + 1."""
    return num_kernels if in_channels == 3 else int(in_channels * ratio) + 1


def _grouped(x: Tensor, weight: Tensor, pi: Tensor, padding: int) -> Tensor:
    """Aggregate one kernel per sample, then run all samples as groups of one convolution."""
    b, c_in, h, w = x.shape
    k, c_out = weight.shape[:2]
    kernel = (pi @ weight.reshape(k, -1)).reshape(b * c_out, c_in, *weight.shape[3:])
    out = F.conv2d(x.reshape(1, b * c_in, h, w), kernel, padding=padding, groups=b)
    return out.reshape(b, c_out, out.shape[-2], out.shape[-1])


def _per_sample(x: Tensor, weight: Tensor, pi: Tensor, padding: int) -> Tensor:
    """Aggregate one kernel per sample and convolve each sample on its own."""
    kernels = torch.einsum("bk,koihw->boihw", pi, weight)
    return torch.cat(
        [F.conv2d(x[i : i + 1], kernels[i], padding=padding) for i in range(x.shape[0])]
    )


def _mixture(x: Tensor, weight: Tensor, pi: Tensor, padding: int) -> Tensor:
    """Convolve with all K kernels at once (one dense conv), then mix the K outputs by pi."""
    k, c_out = weight.shape[:2]
    out = F.conv2d(x, weight.reshape(k * c_out, *weight.shape[2:]), padding=padding)
    out = out.unflatten(1, (k, c_out))
    return torch.einsum("bk,bkohw->bohw", pi, out)


_IMPLS = {"grouped": _grouped, "per_sample": _per_sample, "mixture": _mixture}


def choose_method(x: Tensor) -> str:
    """Pick the computation for this input: at batch 1 aggregation is a plain convolution."""
    return "grouped"


def dynamic_conv2d(
    x: Tensor, weight: Tensor, pi: Tensor, padding: int = 1, method: Method = "auto"
) -> Tensor:
    """Convolve sample b of ``x`` with sum_k pi[b, k] * weight[k].

    x: B x C_in x H x W, weight: K x C_out x C_in x kh x kw, pi: B x K. Every method gives the
    same result up to float rounding; ``auto`` picks the fastest known for the input.
    """
    if method == "auto":
        method = choose_method(x)
    try:
        impl = _IMPLS[method]
    except KeyError:
        raise ValueError(f"unknown dynamic conv method {method!r}; valid: {METHODS}") from None
    return impl(x, weight, pi, padding)


class DyConv2d(nn.Module):
    """K-kernel dynamic 3x3 convolution (no bias) with its attention branch.

    The kernel bank starts from a standard normal, as in the paper's code; the mixing weights
    are softmax(logits / temperature) with the fixed temperature 30.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_kernels: int = 2,
        kernel_size: int = 3,
        temperature: float = 30.0,
        method: Method = "auto",
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown dynamic conv method {method!r}; valid: {METHODS}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_kernels, self.temperature, self.method = num_kernels, temperature, method
        self.padding = kernel_size // 2
        hidden = attention_hidden(in_channels, num_kernels)
        self.weight = nn.Parameter(
            torch.randn(num_kernels, out_channels, in_channels, kernel_size, kernel_size)
        )
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_kernels, 1, bias=True),
        )

    def kernel_weights(self, x: Tensor) -> Tensor:
        """pi: B x K attention over the kernels, each row summing to 1."""
        logits = self.attention(x).flatten(1)
        return torch.softmax(logits / self.temperature, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return dynamic_conv2d(x, self.weight, self.kernel_weights(x), self.padding, self.method)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, num_kernels={self.num_kernels}, "
            f"temperature={self.temperature}, method={self.method!r}"
        )


class DyConvBlock(nn.Sequential):
    """DyConv2d -> GroupNorm(8) -> LeakyReLU(0.01): the unit of the DyUNet family."""

    def __init__(
        self, in_channels: int, out_channels: int, num_kernels: int = 2, groups: int = 8
    ) -> None:
        super().__init__(
            DyConv2d(in_channels, out_channels, num_kernels),
            nn.GroupNorm(groups, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )
