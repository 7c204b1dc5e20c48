"""Deployment forms of the dynamic convolution, for ONNX export.

A trained DyConv2d computes, per sample, ``conv(x, sum_k pi_k W_k)``. An exporter needs that as
a graph whose shape does not depend on anything the graph cannot see, and the forms below write
the same function three ways (``deploy_copy`` swaps every DyConv2d of a copy for one of them):

- ``aggregated``: the paper's batch-1 inference. The attention gives pi, the kernel bank is
  reduced to one kernel (a MatMul), and one Conv takes it as a computed weight. The graph holds
  a batch of one; the cheapest form, the same arithmetic as PyTorch at batch 1.
- ``im2col``: ``aggregated`` for any batch: the k*k shifted copies of the map (slices) times
  each sample's aggregated kernel, one batched MatMul.
- ``mixture``: convolve with all K kernels at once (one Conv with K x C_out outputs) and mix the
  K outputs by pi: batch-independent without a loop, but K times the convolution work.

Only the DyConv2d's kernel bank (``weight``: K x C_out x C_in x k x k), attention branch
(``attention``: image -> B x K logits) and ``temperature`` are read, so the forms do not depend
on how the training module chooses to compute.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dynamic_conv import DyConv2d

Form = Literal["aggregated", "im2col", "mixture"]
FORMS: tuple[str, ...] = ("aggregated", "im2col", "mixture")


class _DeployDyConv(nn.Module):
    """What every form shares: the bank, the attention branch and pi = softmax(logits / T)."""

    def __init__(self, dy: nn.Module) -> None:
        super().__init__()
        self.weight = nn.Parameter(dy.weight.detach().clone().contiguous(), requires_grad=False)
        self.attention = copy.deepcopy(dy.attention)
        self.temperature = float(dy.temperature)
        self.padding = int(self.weight.shape[-1]) // 2

    def kernel_weights(self, x: Tensor) -> Tensor:
        """pi: B x K, softmax over the kernels of the attention logits / temperature."""
        return torch.softmax(self.attention(x).flatten(1) / self.temperature, dim=1)

    def kernels(self, x: Tensor) -> Tensor:
        """B x C_out x C_in x k x k: each sample's aggregated kernel (one MatMul)."""
        k = self.weight.shape[0]
        flat = self.kernel_weights(x) @ self.weight.reshape(k, -1)
        return flat.reshape(-1, *self.weight.shape[1:])

    def extra_repr(self) -> str:
        k, c_out, c_in = self.weight.shape[:3]
        return f"{c_in}, {c_out}, num_kernels={k}, temperature={self.temperature}"


class AggregatedDyConv(_DeployDyConv):
    """Batch 1: one Conv with the sample's aggregated kernel (the paper's inference)."""

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_tracing() and x.shape[0] != 1:
            raise ValueError(f"the aggregated form takes batch 1, got batch {x.shape[0]}")
        return F.conv2d(x, self.kernels(x)[0], padding=self.padding)


class Im2colDyConv(_DeployDyConv):
    """Any batch: each sample's aggregated kernel times its k*k shifted copies (one MatMul).

    The shifted copies are slices of the padded map, so the graph needs no Im2Col operator and
    no group count fixed to the batch.
    """

    def forward(self, x: Tensor) -> Tensor:
        b, c_in, h, w = x.shape
        k, p = self.weight.shape[-1], self.padding
        padded = F.pad(x, (p, p, p, p))
        h_out, w_out = h + 2 * p - k + 1, w + 2 * p - k + 1
        cols = torch.cat(
            [padded[:, :, i : i + h_out, j : j + w_out] for i in range(k) for j in range(k)],
            dim=1,
        ).reshape(b, k * k * c_in, h_out * w_out)
        # kernel rows ordered (i, j, c_in) like the stacked copies
        kernel = self.kernels(x).permute(0, 1, 3, 4, 2).reshape(b, -1, k * k * c_in)
        return (kernel @ cols).reshape(b, -1, h_out, w_out)


class MixtureDyConv(_DeployDyConv):
    """Any batch without a loop: all K kernels in one Conv, the K outputs mixed by pi."""

    def forward(self, x: Tensor) -> Tensor:
        k, c_out = self.weight.shape[:2]
        out = F.conv2d(
            x, self.weight.reshape(k * c_out, *self.weight.shape[2:]), padding=self.padding
        )
        out = out.reshape(out.shape[0], k, c_out, out.shape[-2], out.shape[-1])
        pi = self.kernel_weights(x).reshape(-1, k, 1, 1, 1)
        return (out * pi).sum(dim=1)


_CLASSES: dict[str, type[_DeployDyConv]] = {
    "aggregated": AggregatedDyConv,
    "im2col": Im2colDyConv,
    "mixture": MixtureDyConv,
}


def batch_independent(form: str) -> bool:
    """Whether a graph of this form runs at any batch size (``aggregated`` is batch 1)."""
    return form != "aggregated"


def has_dynamic_convs(model: nn.Module) -> bool:
    """Whether ``model`` holds a DyConv2d (only those have deployment forms)."""
    return any(isinstance(m, DyConv2d) for m in model.modules())


class TapsHead(nn.Module):
    """A conv3x3 with a few outputs (the folded DyUNet head) as one 1x1 product with the nine
    taps' weights, then the nine shifted maps summed (``models.fast.dyunet.head_conv``).

    The same function as the conv; in onnxruntime a MatMul and small adds instead of a blocked
    conv padded to a whole block of outputs (16 for 1 logit channel), measured 21.7 -> ~8 ms at
    512x512.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        from .fast.dyunet import head_conv

        return head_conv(x.contiguous(), self.weight, self.bias)


def taps_heads(model: nn.Module) -> nn.Module:
    """Give each DyUNet whose head is one conv3x3 with at most 4 outputs a ``TapsHead``."""
    from .dyunet import DyUNet

    for module in model.modules():
        head = getattr(module, "head", None)
        if isinstance(module, DyUNet) and isinstance(head, nn.Conv2d) and head.out_channels <= 4:
            module.head = TapsHead(head)
    return model


def deploy_copy(model: nn.Module, form: Form = "aggregated") -> nn.Module:
    """An eval-mode CPU copy of ``model`` whose DyConv2d modules compute in ``form``.

    The caller's model is untouched; a model without DyConv2d comes back as a plain copy.
    """
    if form not in _CLASSES:
        raise ValueError(f"unknown deployment form {form!r}; valid: {', '.join(FORMS)}")
    model = copy.deepcopy(model).cpu().eval()
    cls = _CLASSES[form]
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DyConv2d):
                setattr(parent, name, cls(child))
    return model.requires_grad_(False)
