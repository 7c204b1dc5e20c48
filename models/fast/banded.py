"""Row-banded CPU inference for the DyUNet family: large feature maps without fresh buffers.

On the CPU a fresh tensor above 32 MB costs more than most arithmetic that fills it: glibc maps
every such block anew (a page fault per 4 KB on first touch) and unmaps it on free. At 512x512
the finest stages of DAS-Net make several per call (upsampling, concatenation, gate, convolution
and GroupNorm outputs), about a third of the forward time. Here those maps live in a
``Workspace`` kept between calls, and the 3x3 convolutions that fill them run over bands of a
few MB of rows (which malloc recycles and the cache holds): GroupNorm statistics are gathered
band by band, then the normalisation and activation are applied in place. The arithmetic is the
plain forward's; the result equals it up to float rounding.

``optimize_for_inference`` attaches a workspace on CPU (channels_last, no compile); DyUNet's
forward uses it in eval mode without autograd, one sample at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..dynamic_conv import DyConvBlock
from .dynamic_conv import aggregate, kernel_weights

# pixels, per-channel mean, per-channel sum of squared deviations
Moments = tuple[int, Tensor, Tensor]


class Workspace:
    """Buffers for one model's large feature maps, kept between calls (one set per thread).

    Maps of at least ``min_bytes`` use it: glibc's largest mmap threshold is 32 MiB, and smaller
    blocks are recycled by malloc anyway. Convolutions write ``band_bytes`` of rows at a time.
    """

    def __init__(self, min_bytes: int = 32 << 20, band_bytes: int = 8 << 20) -> None:
        if min_bytes < 0 or band_bytes <= 0:
            raise ValueError(
                f"need min_bytes >= 0 and band_bytes > 0; got {min_bytes=}, {band_bytes=}"
            )
        self.min_bytes, self.band_bytes = min_bytes, band_bytes
        self._local = threading.local()

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        # a copied or pickled model gets an empty workspace of its own
        return type(self), (self.min_bytes, self.band_bytes)

    @property
    def _buffers(self) -> dict[str, Tensor]:
        if not hasattr(self._local, "buffers"):
            self._local.buffers = {}
        return self._local.buffers

    def holds(self, like: Tensor, channels: int, h: int, w: int) -> bool:
        """Whether a 1 x channels x h x w map of ``like``'s dtype is large enough to live here."""
        return channels * h * w * like.element_size() >= self.min_bytes

    def flat(self, name: str, like: Tensor, numel: int) -> Tensor:
        """``numel`` uninitialised elements of buffer ``name`` (grown if too small)."""
        buf = self._buffers.get(name)
        if (
            buf is None
            or buf.numel() < numel
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            self._buffers.pop(name, None)  # free the old one before allocating its successor
            buf = self._buffers[name] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf[:numel]

    def map(self, name: str, like: Tensor, channels: int, h: int, w: int) -> Tensor:
        """A 1 x channels x h x w channels_last view of buffer ``name``."""
        return self.flat(name, like, channels * h * w).view(1, h, w, channels).permute(0, 3, 1, 2)

    def rows(self, x: Tensor, channels: int) -> int:
        """Rows per band of an output with ``channels`` channels and x's width (even, >= 2)."""
        rows = self.band_bytes // (channels * x.shape[-1] * x.element_size())
        return max(2, rows - rows % 2)

    def nbytes(self) -> int:
        """Bytes this thread's buffers hold."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def clear(self) -> None:
        """Free this thread's buffers (they are allocated again on the next call)."""
        self._buffers.clear()


def bands(h: int, rows: int) -> Iterator[tuple[int, int]]:
    """(first, end) row pairs covering 0..h in steps of ``rows``."""
    for r0 in range(0, h, rows):
        yield r0, min(r0 + rows, h)


def _moments(y: Tensor) -> Moments:
    """Per-channel count, mean and sum of squared deviations of a 1 x C x h x w band."""
    n = y.shape[2] * y.shape[3]
    # BatchNorm's statistics kernel: one two-pass op, channels_last-aware
    mean, var = torch.batch_norm_update_stats(y, None, None, 0.0)
    return n, mean, var * n


def conv_rows_into(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    out: Tensor,
    rows: int,
    moments: list[Moments] | None = None,
) -> Tensor:
    """out = conv2d(x, weight, bias) with 'same' padding (odd kernel, stride 1), ``rows`` at a time.

    Each band reads its rows plus the kernel's halo; only the first and last band touch the
    border, where the convolution pads (symmetrically, so one of them may compute a spare row).
    With ``moments``, each band's per-channel moments are appended to it.
    """
    h, p = x.shape[2], weight.shape[-1] // 2
    for r0, r1 in bands(h, rows):
        lo, hi = max(r0 - p, 0), min(r1 + p, h)
        pad = max(p - (r0 - lo), p - (hi - r1))
        y = F.conv2d(x[:, :, lo:hi], weight, bias, padding=(pad, p))
        start = r0 - lo + pad - p
        y = y[:, :, start : start + r1 - r0]
        out[:, :, r0:r1].copy_(y)
        if moments is not None:
            moments.append(_moments(y))
    return out


def group_norm_affine(norm: nn.GroupNorm, moments: list[Moments]) -> tuple[Tensor, Tensor]:
    """(scale, shift), 1 x C x 1 x 1: GroupNorm over the bands whose moments are given is
    ``x * scale + shift``. The moments are combined in float64 (Chan et al.'s parallel formula)."""
    counts = torch.tensor([m[0] for m in moments], dtype=torch.float64)
    means = torch.stack([m[1] for m in moments]).double()
    m2s = torch.stack([m[2] for m in moments]).double()
    n = counts.sum()
    mean = (counts[:, None] * means).sum(0) / n
    m2 = m2s.sum(0) + (counts[:, None] * (means - mean) ** 2).sum(0)
    # channels of one group hold equally many pixels: pool them the same way
    g = norm.num_groups
    mean, m2 = mean.view(g, -1), m2.view(g, -1)
    group_mean = mean.mean(1, keepdim=True)
    var = (m2.sum(1, keepdim=True) + n * ((mean - group_mean) ** 2).sum(1, keepdim=True)) / (
        n * mean.shape[1]
    )
    rstd = (var + norm.eps).rsqrt().expand_as(mean).reshape(-1)
    group_mean = group_mean.expand_as(mean).reshape(-1)
    scale = rstd if norm.weight is None else norm.weight.double() * rstd
    shift = -group_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    dtype = norm.weight.dtype if norm.weight is not None else torch.float32
    return scale.to(dtype).view(1, -1, 1, 1), shift.to(dtype).view(1, -1, 1, 1)


def _activate_rows(
    out: Tensor, rows: int, slope: float, scale: Tensor | None = None, shift: Tensor | None = None
) -> None:
    """In place, band by band: out = leaky_relu(out * scale + shift) (no affine if not given)."""
    for r0, r1 in bands(out.shape[2], rows):
        band = out[:, :, r0:r1]
        if scale is not None:
            torch.addcmul(shift, band, scale, out=band)
        F.leaky_relu_(band, slope)


def _conv_chain(block: nn.Module) -> list[nn.Conv2d] | None:
    """The convolutions of a Conv2d / Identity / LeakyReLU chain in which every conv is followed
    by LeakyReLU (a thin decoder stage after BatchNorm folding); None for anything else."""
    convs, slopes = [], []
    for m in block.children() if isinstance(block, nn.Sequential) else ():
        if type(m) is nn.Conv2d:
            same = m.stride == (1, 1) and m.dilation == (1, 1) and m.groups == 1
            square = m.kernel_size[0] == m.kernel_size[1] and m.kernel_size[0] % 2 == 1
            if not (same and square and m.padding == (m.kernel_size[0] // 2,) * 2):
                return None
            convs.append(m)
        elif type(m) is nn.LeakyReLU and len(slopes) < len(convs):
            slopes.append(m)
        elif type(m) is not nn.Identity:
            return None
    return convs if convs and len(slopes) == len(convs) else None


def run_block(block: nn.Module, x: Tensor, ws: Workspace, name: str) -> Tensor:
    """``block(x)`` for a batch-1 NHWC x; the output is buffer ``name`` when it is large enough.

    Handles a DyConvBlock and a thin decoder stage (conv + LeakyReLU chain); any other block,
    or a small output, runs as it is.
    """
    h, w = x.shape[-2:]
    if isinstance(block, DyConvBlock):
        dyconv, norm, act = block
        c = dyconv.out_channels
        if not ws.holds(x, c, h, w) or dyconv.padding != dyconv.weight.shape[-1] // 2:
            return block(x)
        rows = ws.rows(x, c)
        kernel = aggregate(dyconv.weight, kernel_weights(dyconv, x))[0]
        moments: list[Moments] = []
        out = conv_rows_into(x, kernel, None, ws.map(name, x, c, h, w), rows, moments)
        _activate_rows(out, rows, act.negative_slope, *group_norm_affine(norm, moments))
        return out
    convs = _conv_chain(block)
    if convs is None or not ws.holds(x, convs[-1].out_channels, h, w):
        return block(x)
    slopes = [m.negative_slope for m in block.children() if type(m) is nn.LeakyReLU]
    for i, (conv, slope) in enumerate(zip(convs, slopes, strict=True)):
        # each conv reads all of the previous output (its halo): intermediates alternate buffers
        where = name if i == len(convs) - 1 else f"{name}.mid{i % 2}"
        out = ws.map(where, x, conv.out_channels, h, w)
        rows = ws.rows(x, conv.out_channels)
        x = conv_rows_into(x, conv.weight, conv.bias, out, rows)
        _activate_rows(x, rows, slope)
    return x


def max_pool_rows(x: Tensor, ws: Workspace) -> Tensor:
    """2x2 max pooling of a batch-1 NHWC map, a band at a time (no full-size index tensor)."""
    rows = ws.rows(x, x.shape[1])
    parts = [F.max_pool2d(x[:, :, r0:r1], 2) for r0, r1 in bands(x.shape[2], rows)]
    return torch.cat(parts, dim=2)


def concat_into(
    g_source: Tensor,
    skip: Tensor,
    ws: Workspace,
    name: str,
    gate_weights: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """cat([g, skip * alpha]) in buffer ``name.cat``, g = bilinear (align_corners) upsampling of
    ``g_source`` to the skip's size; alpha = sigmoid(psi ReLU(W [g, skip])) with ``gate_weights``
    = (W = [W_g W_x] side by side, psi), or 1 without a gate. Batch-1 NHWC maps. Buffer ``name``
    is scratch here, free for the stage's output afterwards.
    """
    c, h, w = skip.shape[1:]
    both = ws.map(f"{name}.cat", skip, 2 * c, h, w)
    g = ws.map(name, skip, g_source.shape[1], h, w)
    torch.ops.aten.upsample_bilinear2d.out(g_source, [h, w], True, None, None, out=g)
    torch.cat([g, skip], dim=1, out=both)
    if gate_weights is not None:
        w_both, psi = gate_weights
        pixels = both.permute(0, 2, 3, 1).reshape(h * w, -1)
        # g is in `both` now: its buffer holds the gate's hidden activations
        act = ws.flat(name, skip, h * w * w_both.shape[0]).view(h * w, -1)
        torch.mm(pixels, w_both.t(), out=act).relu_()
        alpha = torch.mm(act, psi.t()).sigmoid_()
        both[:, g.shape[1] :].mul_(alpha.view(1, h, w, 1).permute(0, 3, 1, 2))
    return both
