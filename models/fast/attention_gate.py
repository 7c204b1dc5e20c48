"""A gated decoder stage's input, cat([g, AttentionGate(g, skip)]) with g = upsample(low), fused.

The plain composition is in models/dyunet.py; ``gated_concat`` computes the same tensor with
fewer full-size buffers: without autograd as one 1x1 product over cat([g, skip]), in eager CPU
training as ``UpGatedConcat``, whose forward and backward are written out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attention_gate import AttentionGate
from ..dyunet import upsample
from .pointwise import pointwise


def joint_weight(gate: AttentionGate) -> Tensor:
    """[W_g W_x] side by side, inter x (gate + skip channels): W_g g + W_x skip is one matrix
    product with the pixels of cat([g, skip])."""
    return torch.cat([gate.w_g.weight, gate.w_x.weight], dim=1).flatten(1)


def _bmm_weight(weight: Tensor, batch: int, transpose: bool = False) -> Tensor:
    """A 1x1 conv weight as a batch of matrices (a broadcast view, no copy)."""
    w = weight.flatten(1)
    return (w.t() if transpose else w).expand(batch, -1, -1)


class UpGatedConcat(torch.autograd.Function):
    """cat([g, AttentionGate(g, skip)]) with g = bilinear x2 upsampling (align_corners) of
    ``low``: a gated decoder stage's input, for training on CPU NCHW tensors, forward and backward
    written out so that no full-resolution tensor is allocated that the math does not need.

    On the CPU a fresh full-size tensor costs more in page faults than the arithmetic that fills
    it (glibc maps every block above 32 MB anew). Autograd's version of upsample + gate + concat
    allocates fourteen such tensors at the finest stage (forward and backward), this one five:
    g is upsampled one sample at a time straight into the output, the gate's terms are summed in
    place, and g's gradient goes back through the upsampling one sample at a time. The result is
    the module's up to float summation order.
    """

    @staticmethod
    def forward(ctx, low: Tensor, skip: Tensor, w_g: Tensor, w_x: Tensor, psi: Tensor) -> Tensor:
        b, c, h, w = skip.shape
        out = skip.new_empty(b, 2 * c, h, w)
        for i in range(b):
            out[i, :c] = F.interpolate(
                low[i : i + 1], size=(h, w), mode="bilinear", align_corners=True
            )[0]
        flat_g, flat_skip = out[:, :c].view(b, c, h * w), skip.view(b, c, h * w)
        act = torch.bmm(_bmm_weight(w_g, b), flat_g).baddbmm_(_bmm_weight(w_x, b), flat_skip)
        act.relu_()
        alpha = torch.bmm(_bmm_weight(psi, b), act).sigmoid_()
        torch.mul(skip, alpha.view(b, 1, h, w), out=out[:, c:])
        ctx.low_shape = low.shape
        ctx.save_for_backward(out, skip, w_g, w_x, psi, act, alpha)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        out, skip, w_g, w_x, psi, act, alpha = ctx.saved_tensors
        b, c, h, w = skip.shape
        grad = grad.contiguous().view(b, 2 * c, h * w)
        grad_g_direct, grad_gated = grad[:, :c], grad[:, c:]
        flat_g, flat_skip = out[:, :c].view(b, c, h * w), skip.view(b, c, h * w)

        # d/d alpha of sum(grad_gated * skip * alpha): a channel sum, taken 8 channels at a
        # time so its product never needs a full-size buffer
        grad_alpha = torch.zeros_like(alpha)
        for i in range(0, c, 8):
            grad_alpha += (grad_gated[:, i : i + 8] * flat_skip[:, i : i + 8]).sum(1, keepdim=True)
        grad_logit = grad_alpha.mul_(alpha * (1 - alpha))
        grad_act = torch.bmm(_bmm_weight(psi, b, transpose=True), grad_logit)
        grad_act.masked_fill_(act == 0, 0)  # ReLU: act is its output

        # gradients leave as plain tensors, not views, so autograd may add to them in place
        grad_low = grad_skip = None
        if ctx.needs_input_grad[0]:
            grad_low = grad.new_empty(ctx.low_shape)
            w_g_t = _bmm_weight(w_g, 1, transpose=True)
            for i in range(b):
                s = slice(i, i + 1)
                grad_g = torch.baddbmm(grad_g_direct[s], w_g_t, grad_act[s]).view(1, c, h, w)
                grad_low[s] = torch.ops.aten.upsample_bilinear2d_backward(
                    grad_g, [h, w], [1, *ctx.low_shape[1:]], True, None, None
                )
        if ctx.needs_input_grad[1]:
            grad_skip = torch.bmm(_bmm_weight(w_x, b, transpose=True), grad_act)
            grad_skip = grad_skip.addcmul_(grad_gated, alpha)
            grad_skip = torch.ops.aten._unsafe_view(grad_skip, (b, c, h, w))

        def weight_grad(rows: Tensor, cols: Tensor, like: Tensor) -> Tensor:
            return torch.bmm(rows, cols.transpose(1, 2)).sum(0).view_as(like)

        return (
            grad_low,
            grad_skip,
            weight_grad(grad_act, flat_g, w_g) if ctx.needs_input_grad[2] else None,
            weight_grad(grad_act, flat_skip, w_x) if ctx.needs_input_grad[3] else None,
            weight_grad(grad_logit, act, psi) if ctx.needs_input_grad[4] else None,
        )


def autocast_on(x: Tensor) -> bool:
    """Whether autocast is active for x's device (the hand-written backwards assume FP32)."""
    return torch.is_autocast_enabled(x.device.type)


def tracing() -> bool:
    """Whether the forward is being traced or compiled (the fused paths are eager-only)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def gated_concat(gate: AttentionGate, low: Tensor, skip: Tensor) -> Tensor:
    """cat([g, gate(g, skip)]) with g = upsample(low): a gated decoder block's input.

    Without autograd, W_g g + W_x skip is one 1x1 conv of cat([g, skip]) with the weights side
    by side, and the skip half of that buffer is then scaled in place: the concatenation the
    decoder needs comes for free. In eager CPU training it is ``UpGatedConcat``, which allocates
    fewer full-size tensors than autograd would; elsewhere (CUDA, autocast, torch.compile: its
    inductor fails on UpGatedConcat) the gate's own forward, then the concatenation.
    """
    if torch.is_grad_enabled():
        plain = low.is_cuda or autocast_on(low) or tracing()
        if plain or not (low.is_contiguous() and skip.is_contiguous()):
            g = upsample(low)
            return torch.cat([g, gate(g, skip)], dim=1)
        return UpGatedConcat.apply(low, skip, gate.w_g.weight, gate.w_x.weight, gate.psi.weight)
    g = upsample(low)
    both = torch.cat([g, skip], dim=1)
    w_both = joint_weight(gate)[..., None, None]
    alpha = torch.sigmoid_(pointwise(torch.relu_(pointwise(both, w_both)), gate.psi.weight))
    both[:, g.shape[1] :].mul_(alpha)
    return both
