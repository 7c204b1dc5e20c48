"""A straightforward DAS-Net, written plainly from SPEC sections 2-3: a test oracle, and the
baseline benchmark.py times ours against.

Kernel aggregation and one grouped convolution over the batch, NCHW, every step as the paper
describes it (upsample, gate, concatenate, convolve; a 3x3 then a 1x1 output conv), nothing
fused. It shares no code with ``models`` so that it checks our DAS-Net independently, and
``load_from_dasnet`` maps our state_dict onto it, so both run on the same weights.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReferenceDynamicConv(nn.Module):
    """Dynamic 3x3 conv (K kernels, softmax(logits / 30) attention) + GroupNorm(8) + LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 2) -> None:
        super().__init__()
        hidden = k if c_in == 3 else int(c_in * 0.25) + 1
        self.kernels = nn.Parameter(torch.randn(k, c_out, c_in, 3, 3))
        self.fc1 = nn.Conv2d(c_in, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, k, 1, bias=True)
        self.norm = nn.GroupNorm(8, c_out)

    def forward(self, x: Tensor) -> Tensor:
        b, c_in, h, w = x.shape
        k, c_out = self.kernels.shape[:2]
        pooled = F.adaptive_avg_pool2d(x, 1)
        logits = self.fc2(F.relu(self.fc1(pooled))).view(b, k)
        pi = F.softmax(logits / 30.0, dim=1)
        kernel = torch.mm(pi, self.kernels.view(k, -1)).view(b * c_out, c_in, 3, 3)
        out = F.conv2d(x.view(1, b * c_in, h, w), kernel, padding=1, groups=b)
        out = out.view(b, c_out, h, w)
        return F.leaky_relu(self.norm(out), 0.01)


class ReferenceGate(nn.Module):
    """Additive attention gate: skip * sigmoid(psi(ReLU(W_g g + W_x skip)))."""

    def __init__(self, channels: int = 64, inter: int = 32) -> None:
        super().__init__()
        self.theta_g = nn.Conv2d(channels, inter, 1, bias=False)
        self.theta_x = nn.Conv2d(channels, inter, 1, bias=False)
        self.psi = nn.Conv2d(inter, 1, 1, bias=False)

    def forward(self, g: Tensor, skip: Tensor) -> Tensor:
        alpha = torch.sigmoid(self.psi(F.relu(self.theta_g(g) + self.theta_x(skip))))
        return skip * alpha


class ReferenceDASNet(nn.Module):
    """DAS-Net: 7 dynamic encoder stages, a dynamic bottleneck, 7 gated dynamic decoder stages,
    3x3+1x1 output convs and three deep-supervision heads on the last three decoder stages."""

    deep_supervision = True

    def __init__(self, in_channels: int = 3, classes: int = 1, width: int = 64, stages: int = 7):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            ReferenceDynamicConv(in_channels if i == 0 else width, width) for i in range(stages)
        )
        self.center = ReferenceDynamicConv(width, width)
        self.up_blocks = nn.ModuleList(
            ReferenceDynamicConv(2 * width, width) for _ in range(stages)
        )
        self.gates = nn.ModuleList(ReferenceGate(width, width // 2) for _ in range(stages))
        self.ds_heads = nn.ModuleList(nn.Conv2d(width, classes, 1) for _ in range(3))
        self.out_conv = nn.Conv2d(width, width, 3, padding=1)
        self.out_proj = nn.Conv2d(width, classes, 1)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, list[Tensor]]:
        size = x.shape[-2:]
        skips = []
        for block in self.down_blocks:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.center(x)
        aux = []
        stages = len(self.up_blocks)
        for i in range(stages):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
            skip = self.gates[i](x, skips[stages - 1 - i])
            x = self.up_blocks[i](torch.cat([x, skip], dim=1))
            j = i - (stages - 3)
            if self.training and j >= 0:
                a = self.ds_heads[j](x)
                aux.append(F.interpolate(a, size=size, mode="bilinear", align_corners=True))
        logits = self.out_proj(self.out_conv(x))
        return (logits, aux) if self.training else logits


# Our DyUNet's names -> the reference's, applied in order to each state_dict key.
_KEY_RULES = (
    (r"^encoder\.", "down_blocks."),
    (r"^bottleneck\.", "center."),
    (r"^decoder\.", "up_blocks."),
    (r"\.0\.weight$", ".kernels"),
    (r"\.0\.attention\.1\.", ".fc1."),
    (r"\.0\.attention\.3\.", ".fc2."),
    (r"\.1\.(weight|bias)$", r".norm.\1"),
    (r"\.w_g\.", ".theta_g."),
    (r"\.w_x\.", ".theta_x."),
    (r"^aux_heads\.", "ds_heads."),
    (r"^head\.0\.", "out_conv."),
    (r"^head\.1\.", "out_proj."),
)


def map_dasnet_key(key: str) -> str:
    """The reference's name for one of our DAS-Net's state_dict keys."""
    if key.startswith(("encoder.", "bottleneck", "decoder.")):
        for pattern, repl in _KEY_RULES[:7]:
            key = re.sub(pattern, repl, key)
        return key
    for pattern, repl in _KEY_RULES[7:]:
        key = re.sub(pattern, repl, key)
    return key


def load_from_dasnet(reference: ReferenceDASNet, state_dict: dict[str, Tensor]) -> None:
    """Load our DAS-Net's state_dict (strictly: every key must map onto the reference)."""
    reference.load_state_dict({map_dasnet_key(k): v for k, v in state_dict.items()})


def reference_from(model: nn.Module) -> ReferenceDASNet:
    """A reference DAS-Net with ``model``'s weights, in ``model``'s train/eval mode."""
    first = model.encoder[0][0]
    ref = ReferenceDASNet(
        first.in_channels, model.head[1].out_channels, first.out_channels, model.stages
    )
    load_from_dasnet(ref, model.state_dict())
    return ref.train(model.training)
