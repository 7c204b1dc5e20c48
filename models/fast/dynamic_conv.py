"""Faster dynamic convolution: the same math as models/dynamic_conv.py, several ways.

Convolution is linear in the kernel, so the weighted kernel can be built first and then applied
(per sample or as one grouped convolution), or every kernel can be applied and the outputs
mixed: ``dynamic_conv2d`` is the single place that decides how, measured per device, batch,
layout and grad mode (BENCHMARKS.md). ``FastDyConv2d`` is the DyConv2d that uses it, swapped in
by ``optimize_for_inference`` and ``to_channels_last``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..dynamic_conv import DyConv2d
from .pointwise import reshape

Method = Literal["auto", "grouped", "per_sample", "mixture"]
METHODS: tuple[str, ...] = ("auto", "grouped", "per_sample", "mixture")


def aggregate(weight: Tensor, pi: Tensor) -> Tensor:
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
    kernel = aggregate(weight, pi).flatten(0, 1)
    out = F.conv2d(reshape(x, (1, b * c_in, h, w)), kernel, padding=padding, groups=b)
    return reshape(out, (b, -1, out.shape[-2], out.shape[-1]))


def _per_sample(x: Tensor, weight: Tensor, pi: Tensor, padding: int) -> Tensor:
    """Aggregate one kernel per sample and convolve each sample on its own (batch 1: one conv)."""
    kernels = aggregate(weight, pi)
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


_IMPLS = {
    "grouped": _grouped,
    "per_sample": _per_sample,
    "mixture": _mixture,
}


def choose_method(x: Tensor) -> str:
    """The fastest method measured for this device, batch, layout and grad mode (BENCHMARKS.md).

    Batch 1 is one plain convolution with the aggregated kernel (``per_sample``). On the CPU,
    per-sample convolutions beat the grouped one whenever the input is channels_last (the grouped
    reshape would copy it back to NCHW). On CUDA the grouped convolution is one kernel launch.
    Training keeps the plain DyConv2d (``optimize_for_training``): with 2 threads, training
    through these methods (and an im2col one for the RGB layer, since dropped) gave gradients
    that differed from run to run (tests/test_determinism.py).
    """
    if x.shape[0] == 1:
        return "per_sample"
    if x.is_cuda:
        return "grouped"
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


def kernel_weights(conv: DyConv2d, x: Tensor) -> Tensor:
    """``conv.kernel_weights(x)`` with linear layers on the pooled B x C vector: the same math
    as the attention branch's 1x1 convolutions on a 1x1 map, without their per-call overhead."""
    _, fc1, _, fc2 = conv.attention
    # sum / n rather than mean: its backward is a broadcast view, not a full-size division
    pooled = x.sum(dim=(2, 3)) / (x.shape[-2] * x.shape[-1])
    hidden = torch.relu(F.linear(pooled, fc1.weight.flatten(1)))
    logits = F.linear(hidden, fc2.weight.flatten(1), fc2.bias)
    return torch.softmax(logits / conv.temperature, dim=1)


class FastDyConv2d(DyConv2d):
    """DyConv2d computed by ``dynamic_conv2d`` (``method``, default ``auto``); same parameters.

    Not built directly: ``optimize_for_training`` / ``optimize_for_inference`` turn a DyConv2d
    into one in place, keeping its Parameter objects.
    """

    method: str = "auto"

    def forward(self, x: Tensor) -> Tensor:
        pi = kernel_weights(self, x)
        return dynamic_conv2d(x, self.weight, pi, self.padding, self.method)  # type: ignore[arg-type]
