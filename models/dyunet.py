"""The DyUNet family: ThinDyUNet, FullDyUNet, DeepSupDyUNet and DAS-Net as one class.

Three switches over one dynamic-convolution encoder, exactly the paper's ablation table:

| model         | dynamic_decoder | attention_gates | deep_supervision |
|---------------|-----------------|-----------------|------------------|
| thindyunet    | no              | no              | no               |
| fulldyunet    | yes             | no              | no               |
| deepsupdyunet | no              | no              | yes              |
| dasnet        | yes             | yes             | yes              |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention_gate import AttentionGate, UpGatedConcat
from .banded import Workspace, concat_into, max_pool_rows, run_block
from .dynamic_conv import DyConvBlock
from .pointwise import pointwise

AUX_HEADS = 3  # deep supervision taps the last three decoder stages


def thin_decoder_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """The plain decoder stage: two conv3x3 + BatchNorm + LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(0.01, inplace=True),
    )


def fold_head(head: nn.Sequential) -> tuple[Tensor, Tensor]:
    """The one conv3x3 (weight, bias) equal to ``head`` = conv3x3(W1, b1) then conv1x1(W2, b2).

    Nothing nonlinear sits between them, so the pair is conv3x3(W2 W1, W2 b1 + b2) exactly: at
    512x512 this saves a 64->64 conv3x3 (19 GFLOPs, a quarter of DAS-Net's forward).
    """
    conv, proj = head
    w2 = proj.weight.flatten(1)
    weight = torch.einsum("oc,cikl->oikl", w2, conv.weight)
    return weight, w2 @ conv.bias + proj.bias


def autocast_on(x: Tensor) -> bool:
    """Whether autocast is active for x's device (the hand-written backwards assume FP32)."""
    return torch.is_autocast_enabled(x.device.type)


def gated_concat(gate: AttentionGate, low: Tensor, skip: Tensor) -> Tensor:
    """cat([g, gate(g, skip)]) with g = upsample(low): a gated decoder block's input.

    Without autograd, W_g g + W_x skip is one 1x1 conv of cat([g, skip]) with the weights side
    by side, and the skip half of that buffer is then scaled in place: the concatenation the
    decoder needs comes for free. In eager CPU training it is ``UpGatedConcat``, which allocates
    fewer full-size tensors than autograd would; elsewhere (CUDA, autocast, torch.compile: its
    inductor fails on UpGatedConcat) the gate's own forward, then the concatenation.
    """
    if torch.is_grad_enabled():
        plain = low.is_cuda or autocast_on(low) or _tracing()
        if plain or not (low.is_contiguous() and skip.is_contiguous()):
            g = upsample(low)
            return torch.cat([g, gate(g, skip)], dim=1)
        return UpGatedConcat.apply(low, skip, gate.w_g.weight, gate.w_x.weight, gate.psi.weight)
    g = upsample(low)
    both = torch.cat([g, skip], dim=1)
    w_both = gate.joint_weight()[..., None, None]
    alpha = torch.sigmoid_(pointwise(torch.relu_(pointwise(both, w_both)), gate.psi.weight))
    both[:, g.shape[1] :].mul_(alpha)
    return both


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


def upsample(x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Bilinear, align_corners=True: x2 by default, else to ``size``."""
    if size is None:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class DyUNet(nn.Module):
    """U-Net with a dynamic-convolution encoder; see the module docstring for the switches.

    In train mode a deep-supervision model returns ``(main, [aux1, aux2, aux3])``, the auxiliary
    logits ordered coarse to fine and upsampled to the input size; otherwise only the main logits.
    """

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 1,
        width: int = 64,
        stages: int = 7,
        dynamic_decoder: bool = False,
        attention_gates: bool = False,
        deep_supervision: bool = False,
        num_kernels: int = 2,
    ) -> None:
        super().__init__()
        if stages < 1 or width < 8 or width % 8:
            raise ValueError(
                f"stages must be >= 1 and width a multiple of 8; got {stages=}, {width=}"
            )
        if deep_supervision and stages < AUX_HEADS:
            raise ValueError(f"deep supervision needs stages >= {AUX_HEADS}; got {stages=}")
        self.stages, self.width = stages, width
        self.dynamic_decoder = dynamic_decoder
        self.attention_gates = attention_gates
        self.deep_supervision = deep_supervision

        self.encoder = nn.ModuleList(
            DyConvBlock(in_channels if i == 0 else width, width, num_kernels) for i in range(stages)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DyConvBlock(width, width, num_kernels)

        def stage_block() -> nn.Module:
            if dynamic_decoder:
                return DyConvBlock(2 * width, width, num_kernels)
            return thin_decoder_block(2 * width, width)

        self.decoder = nn.ModuleList(stage_block() for _ in range(stages))
        self.gates = (
            nn.ModuleList(AttentionGate(width, width, width // 2) for _ in range(stages))
            if attention_gates
            else None
        )
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(width, classes, 1) for _ in range(AUX_HEADS))
            if deep_supervision
            else None
        )
        self.head = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, classes, 1)
        )
        # optimize_for_inference sets channels_last where that layout is faster (CPU inference)
        # and a workspace for the large maps (models/banded.py)
        self.memory_format = torch.contiguous_format
        self.workspace: Workspace | None = None

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (one halving per stage)."""
        return 2**self.stages

    def check_input(self, x: Tensor) -> None:
        """Refuse inputs whose sides the encoder cannot halve ``stages`` times."""
        h, w = x.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(
                f"input size {h}x{w} is not a multiple of {m} (2**stages, stages={self.stages}); "
                f"resize to e.g. {max(m, h // m * m)}x{max(m, w // m * m)}"
            )

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
        if self.memory_format != torch.channels_last or _tracing():
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
                    None if gate is None else (gate.joint_weight(), gate.psi.weight.flatten(1))
                )
                x = concat_into(x, skip, ws, f"dec{i}", gate_weights)
            else:
                x = self._concat(i, x, skip)
            x = run_block(block, x, ws, f"dec{i}")
        return head_conv(x, *self._head_weights())


def _tracing() -> bool:
    """Whether the forward is being traced or compiled (the banded path is eager-only)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


VARIANTS: dict[str, dict[str, bool]] = {
    "thindyunet": dict(dynamic_decoder=False, attention_gates=False, deep_supervision=False),
    "fulldyunet": dict(dynamic_decoder=True, attention_gates=False, deep_supervision=False),
    "deepsupdyunet": dict(dynamic_decoder=False, attention_gates=False, deep_supervision=True),
    "dasnet": dict(dynamic_decoder=True, attention_gates=True, deep_supervision=True),
}
