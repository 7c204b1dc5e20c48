"""Additive attention gate (Oktay et al., 2018) on a U-Net skip connection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pointwise import pointwise


class AttentionGate(nn.Module):
    """skip * sigmoid(psi(ReLU(W_g(g) + W_x(skip)))): lets the decoder mute irrelevant skips.

    ``g`` is the upsampled decoder feature map, at the skip's resolution. All three projections
    are 1x1 convolutions without bias, as in the paper (computed by ``pointwise``).
    """

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.w_g = nn.Conv2d(gate_channels, inter_channels, 1, bias=False)
        self.w_x = nn.Conv2d(skip_channels, inter_channels, 1, bias=False)
        self.psi = nn.Conv2d(inter_channels, 1, 1, bias=False)

    def coefficients(self, g: Tensor, skip: Tensor) -> Tensor:
        """The gate's B x 1 x H x W weights in (0, 1)."""
        act = pointwise(g, self.w_g.weight) + pointwise(skip, self.w_x.weight)
        return torch.sigmoid(pointwise(torch.relu(act), self.psi.weight))

    def forward(self, g: Tensor, skip: Tensor) -> Tensor:
        return skip * self.coefficients(g, skip)

    def joint_weight(self) -> Tensor:
        """[W_g W_x] side by side, inter x (gate + skip channels): W_g g + W_x skip is one
        matrix product with the pixels of cat([g, skip])."""
        return torch.cat([self.w_g.weight, self.w_x.weight], dim=1).flatten(1)


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
