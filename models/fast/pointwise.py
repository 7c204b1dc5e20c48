"""1x1 convolutions as matrix products, for the attention gates and the output heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _Reshape(torch.autograd.Function):
    """``x.reshape(shape)`` whose gradient is a fresh tensor rather than a view of one.

    Autograd sums the gradients of a tensor used twice in place only when the first one it
    holds is not a view; a view forces an out-of-place add, a new full-size buffer per step.
    """

    @staticmethod
    def forward(ctx, x: Tensor, shape: tuple[int, ...]) -> Tensor:
        ctx.in_shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return torch.ops.aten._unsafe_view(grad.contiguous(), ctx.in_shape), None


def reshape(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``x.reshape(shape)``; under autograd its gradient can be added to in place."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _Reshape.apply(x, shape)
    return x.reshape(shape)


def pointwise(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """1x1 convolution as a matrix product on CPU tensors, 2-3x faster than the CPU's 1x1 conv
    kernel forward and backward. NCHW: one batched product with the weight broadcast over the
    batch (its backward needs no transposed copies of the activations, unlike a plain matmul's);
    channels_last: the pixels are the rows of one [B*H*W, C] matrix, and the output stays NHWC."""
    if x.is_cuda:
        return F.conv2d(x, weight, bias)
    b, c, h, w = x.shape
    w2 = weight.flatten(1)
    if x.is_contiguous():
        out = torch.bmm(w2.expand(b, -1, -1), reshape(x, (b, c, h * w)))
        if bias is not None:
            out = out + bias.view(1, -1, 1)
        return reshape(out, (b, -1, h, w))
    if x.is_contiguous(memory_format=torch.channels_last):
        rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
        out = rows @ w2.t() if bias is None else torch.addmm(bias, rows, w2.t())
        return out.view(b, h, w, -1).permute(0, 3, 1, 2)
    return F.conv2d(x, weight, bias)
