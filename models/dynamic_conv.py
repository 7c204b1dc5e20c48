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

from .pointwise import reshape

Method = Literal["auto", "grouped", "per_sample", "mixture", "unfold"]
METHODS: tuple[str, ...] = ("auto", "grouped", "per_sample", "mixture", "unfold")


def attention_hidden(in_channels: int, num_kernels: int, ratio: float = 0.25) -> int:
    """Width of the attention branch: K for RGB input, else floor(C_in * ratio) + 1."""
    return num_kernels if in_channels == 3 else int(in_channels * ratio) + 1


def _aggregate(weight: Tensor, pi: Tensor) -> Tensor:
    """B x C_out x C_in x kh x kw: each sample's kernel sum_k pi[b, k] * weight[k].

    A bank stored channels-last (see ``bank_to_channels_last``) gives channels-last kernels, so
    oneDNN need not reorder them for NHWC inputs.
    """
    k, b = weight.shape[0], pi.shape[0]
    nhwc = weight.permute(0, 1, 3, 4, 2)
    if nhwc.is_contiguous() and not weight.is_contiguous():
        return (pi @ nhwc.reshape(k, -1)).reshape(b, *nhwc.shape[1:]).permute(0, 1, 4, 2, 3)
    return (pi @ weight.reshape(k, -1)).reshape(b, *weight.shape[1:])


def bank_to_channels_last(weight: Tensor) -> Tensor:
    """The same K x C_out x C_in x kh x kw values, laid out with C_in innermost."""
    return weight.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def _grouped(x: Tensor, weight: Tensor, pi: Tensor, padding: int) -> Tensor:
    """Aggregate one kernel per sample, then run all samples as groups of one convolution."""
    b, c_in, h, w = x.shape
    kernel = _aggregate(weight, pi).flatten(0, 1)
    out = F.conv2d(reshape(x, (1, b * c_in, h, w)), kernel, padding=padding, groups=b)
    return reshape(out, (b, -1, out.shape[-2], out.shape[-1]))


def _per_sample(x: Tensor, weight: Tensor, pi: Tensor, padding: int) -> Tensor:
    """Aggregate one kernel per sample and convolve each sample on its own (batch 1: one conv)."""
    kernels = _aggregate(weight, pi)
    if x.shape[0] == 1:
        return F.conv2d(x, kernels[0], padding=padding)
    return torch.cat(
        [F.conv2d(x[i : i + 1], kernels[i], padding=padding) for i in range(x.shape[0])]
    )


def _mixture(x: Tensor, weight: Tensor, pi: Tensor, padding: int) -> Tensor:
    """Convolve with all K kernels at once (one dense conv), then mix the K outputs by pi."""
    k, c_out = weight.shape[:2]
    out = F.conv2d(x, weight.reshape(k * c_out, *weight.shape[2:]), padding=padding)
    out = out.unflatten(1, (k, c_out))
    return torch.einsum("bk,bkohw->bohw", pi, out)


def _unfold(x: Tensor, weight: Tensor, pi: Tensor, padding: int) -> Tensor:
    """im2col: each sample's aggregated kernel times its unfolded patches, one batched product.

    For an RGB input the CPU's direct convolution is inefficient (3 input channels per group);
    the 27-row patch matrix is small, and the backward needs no gradient for the image.
    """
    b, _, h, w = x.shape
    kernel = _aggregate(weight, pi).flatten(2)
    cols = F.unfold(x, weight.shape[-2:], padding=padding)
    out = torch.bmm(kernel, cols)
    return out.view(
        b, -1, h + 2 * padding - weight.shape[-2] + 1, w + 2 * padding - weight.shape[-1] + 1
    )


_IMPLS = {
    "grouped": _grouped,
    "per_sample": _per_sample,
    "mixture": _mixture,
    "unfold": _unfold,
}


def choose_method(x: Tensor) -> str:
    """The fastest method measured for this device, batch, layout and grad mode (BENCHMARKS.md).

    Batch 1 is one plain convolution with the aggregated kernel (``per_sample``). On the CPU,
    per-sample convolutions beat the grouped one whenever the input is channels_last (the grouped
    reshape would copy it back to NCHW), and an NCHW image with a few channels (the first layer)
    goes through im2col (``unfold``). On CUDA the grouped convolution is one kernel launch.
    """
    if x.shape[0] == 1:
        return "per_sample"
    if x.is_cuda:
        return "grouped"
    if x.shape[1] <= 4 and x.is_contiguous():
        return "unfold"
    if x.is_contiguous(memory_format=torch.channels_last):
        return "per_sample"
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
        """pi: B x K attention over the kernels, each row summing to 1.

        Computes ``self.attention`` on the pooled B x C vector with linear layers: the same math
        as its 1x1 convolutions on a 1x1 map, without their per-call overhead (forward and back).
        """
        _, fc1, _, fc2 = self.attention
        # sum / n rather than mean: its backward is a broadcast view, not a full-size division
        pooled = x.sum(dim=(2, 3)) / (x.shape[-2] * x.shape[-1])
        hidden = torch.relu(F.linear(pooled, fc1.weight.flatten(1)))
        logits = F.linear(hidden, fc2.weight.flatten(1), fc2.bias)
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
