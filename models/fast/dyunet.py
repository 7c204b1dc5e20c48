"""FastDyUNet: DyUNet's forward with the fused gate, the folded head and the CPU workspace.

The same network as models/dyunet.py (the same parameters, computed in another order):
- the output head conv3x3 -> conv1x1 is one conv3x3 (``fold_head``), and on NCHW CPU tensors a
  conv3x3 with few outputs is nine taps of one 1x1 product (``head_conv``), shared with the last
  deep-supervision head in training;
- a gated decoder stage's input comes from ``gated_concat`` (models/fast/attention_gate.py);
- in eval mode without autograd on the CPU, a ``Workspace`` holds the large maps
  (models/fast/banded.py), when ``optimize_for_inference`` attached one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..dyunet import AUX_HEADS, DyUNet, upsample
from .attention_gate import gated_concat, joint_weight, tracing
from .banded import Workspace, concat_into, max_pool_rows, run_block
from .pointwise import pointwise


def fold_head(head: nn.Sequential) -> tuple[Tensor, Tensor]:
    """The one conv3x3 (weight, bias) equal to ``head`` = conv3x3(W1, b1) then conv1x1(W2, b2).

    Nothing nonlinear sits between them, so the pair is conv3x3(W2 W1, W2 b1 + b2) exactly: at
    512x512 this saves a 64->64 conv3x3 (19 GFLOPs, a quarter of DAS-Net's forward).
    """
    conv, proj = head
    w2 = proj.weight.flatten(1)
    weight = torch.einsum("oc,cikl->oikl", w2, conv.weight)
    return weight, w2 @ conv.bias + proj.bias


def head_conv(
    x: Tensor, weight: Tensor, bias: Tensor, extra: tuple[Tensor, Tensor] | None = None
) -> Tensor | tuple[Tensor, Tensor]:
    """conv3x3 (padding 1) for a head with few output channels; with ``extra`` = (weight, bias)
    of a 1x1 conv on the same x, also that conv's output: ``(logits, extra_out)``.

    On NCHW CPU tensors: the nine taps (and the extra 1x1 rows) as one 1x1 product, then the
    nine shifted maps summed. The CPU's direct conv kernel is several times slower for C_out = 1,
    forward and backward, and sharing the product with the last deep-supervision head saves a
    full-resolution pass and gradient over x. The result is the same up to float rounding.
    """
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    if x.is_cuda or not (x.is_contiguous() or channels_last) or weight.shape[0] > 4:
        out = F.conv2d(x, weight, bias, padding=1)
        return out if extra is None else (out, pointwise(x, *extra))
    b, _, h, w = x.shape
    o = weight.shape[0]
    rows = weight.permute(2, 3, 0, 1).reshape(9 * o, -1)
    if extra is not None:
        rows = torch.cat([rows, extra[0].flatten(1)])
    products = pointwise(x, rows)
    taps = F.pad(products[:, : 9 * o], (1, 1, 1, 1)).view(b, 3, 3, o, h + 2, w + 2)
    out = bias.view(1, -1, 1, 1)
    for i in range(3):
        for j in range(3):
            out = out + taps[:, i, j, :, i : i + h, j : j + w]
    if extra is None:
        return out
    return out, products[:, 9 * o :] + extra[1].view(1, -1, 1, 1)


class FastDyUNet(DyUNet):
    """DyUNet with the fast paths above; made from a DyUNet in place by ``optimize_for_training``
    or ``optimize_for_inference`` (same Parameter objects, same state_dict keys).

    ``memory_format`` is the layout the input is put in (channels_last where that pays);
    ``workspace`` the CPU buffers for eval-mode inference (None: none).
    """

    memory_format: torch.memory_format = torch.contiguous_format
    workspace: Workspace | None = None

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, list[Tensor]]:
        self.check_input(x)
        x = x.contiguous(memory_format=self.memory_format)
        if self._uses_workspace(x):
            return self._forward_banded(x)
        size = x.shape[-2:]
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)

        with_aux = self.aux_heads is not None and self.training
        aux: list[Tensor] = []
        first_aux_stage = self.stages - AUX_HEADS
        for i, block in enumerate(self.decoder):
            x = block(self._concat(i, x, skips[-1 - i]))
            if with_aux and first_aux_stage <= i < self.stages - 1:
                head = self.aux_heads[i - first_aux_stage]
                a = pointwise(x, head.weight, head.bias)
                aux.append(a if a.shape[-2:] == size else upsample(a, size))
        if not with_aux:
            return head_conv(x, *self._head_weights())
        # the last aux head reads the same full-resolution x as the output head: one product
        last = self.aux_heads[-1]
        logits, last_aux = head_conv(x, *self._head_weights(), extra=(last.weight, last.bias))
        return logits, [*aux, last_aux]

    def _concat(self, stage: int, low: Tensor, skip: Tensor) -> Tensor:
        """Decoder stage ``stage``'s input: upsampled ``low`` and the (gated) skip, concatenated."""
        if self.gates is not None:
            return gated_concat(self.gates[stage], low, skip)
        return torch.cat([upsample(low), skip], dim=1)

    def _head_weights(self) -> tuple[Tensor, Tensor]:
        if isinstance(self.head, nn.Conv2d):  # already folded by optimize_for_inference
            return self.head.weight, self.head.bias
        return fold_head(self.head)

    def _uses_workspace(self, x: Tensor) -> bool:
        """Whether this call runs row-banded in ``self.workspace``: CPU, NHWC, eval, no autograd,
        no tracing, and a finest-stage concatenation large enough to pay."""
        ws = self.workspace
        if ws is None or self.training or x.device.type != "cpu":
            return False
        if self.memory_format != torch.channels_last or tracing():
            return False
        if torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters())
        ):
            return False
        return ws.holds(x, 2 * self.width, *x.shape[-2:])

    def _forward_banded(self, x: Tensor) -> Tensor:
        """The eval forward, one sample at a time, with the large maps in the workspace."""
        if x.shape[0] > 1:
            return torch.cat([self._forward_banded(x[i : i + 1]) for i in range(x.shape[0])])
        ws = self.workspace
        skips = []
        for i, block in enumerate(self.encoder):
            x = run_block(block, x, ws, f"enc{i}")
            skips.append(x)
            x = max_pool_rows(x, ws) if ws.holds(x, *x.shape[1:]) else self.pool(x)
        x = self.bottleneck(x)
        for i, block in enumerate(self.decoder):
            skip = skips[-1 - i]
            if ws.holds(skip, 2 * skip.shape[1], *skip.shape[-2:]):
                gate = None if self.gates is None else self.gates[i]
                gate_weights = (
                    None if gate is None else (joint_weight(gate), gate.psi.weight.flatten(1))
                )
                x = concat_into(x, skip, ws, f"dec{i}", gate_weights)
            else:
                x = self._concat(i, x, skip)
            x = run_block(block, x, ws, f"dec{i}")
        return head_conv(x, *self._head_weights())
