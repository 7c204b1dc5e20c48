"""The DyUNet family: ThinDyUNet, FullDyUNet, DeepSupDyUNet and DAS-Net as one class.

Three switches over one dynamic-convolution encoder, exactly the paper's ablation table:

| model         | dynamic_decoder | attention_gates | deep_supervision |
|---------------|-----------------|-----------------|------------------|
| thindyunet    | no              | no              | no               |
| fulldyunet    | yes             | no              | no               |
| deepsupdyunet | no              | no              | yes              |
| dasnet        | yes             | yes             | yes              |

This file is the definition (SPEC sections 2-3), in plain PyTorch; models/fast/ holds faster
equivalents that ``optimize_for_training`` and ``optimize_for_inference`` swap in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention_gate import AttentionGate
from .dynamic_conv import DyConvBlock, Init

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
        dyconv_init: Init = "paper",
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

        def dyconv_block(c_in: int) -> DyConvBlock:
            return DyConvBlock(c_in, width, num_kernels, init=dyconv_init)

        self.encoder = nn.ModuleList(
            dyconv_block(in_channels if i == 0 else width) for i in range(stages)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = dyconv_block(width)

        def stage_block() -> nn.Module:
            if dynamic_decoder:
                return dyconv_block(2 * width)
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
        size = x.shape[-2:]
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)

        aux = []
        for i, block in enumerate(self.decoder):
            g, skip = upsample(x), skips[-1 - i]
            if self.gates is not None:
                skip = self.gates[i](g, skip)
            x = block(torch.cat([g, skip], dim=1))
            head = i - (self.stages - AUX_HEADS)
            if self.aux_heads is not None and self.training and head >= 0:
                a = self.aux_heads[head](x)
                aux.append(a if a.shape[-2:] == size else upsample(a, size))
        logits = self.head(x)
        return (logits, aux) if aux else logits


VARIANTS: dict[str, dict[str, bool]] = {
    "thindyunet": dict(dynamic_decoder=False, attention_gates=False, deep_supervision=False),
    "fulldyunet": dict(dynamic_decoder=True, attention_gates=False, deep_supervision=False),
    "deepsupdyunet": dict(dynamic_decoder=False, attention_gates=False, deep_supervision=True),
    "dasnet": dict(dynamic_decoder=True, attention_gates=True, deep_supervision=True),
}
