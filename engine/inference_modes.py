"""How a frame of any size becomes logits at its own size: the inference modes.

- ``resize``: the paper's protocol. The frame is resized to the model's input size and the
  logits are resized back; a distant UAV of a few pixels may shrink below one.
- ``pad``: the frame at native resolution, padded on the bottom and right to the next multiple
  of the model's size multiple (1920x1080 -> 1920x1152 for a 7-stage DyUNet), one forward, the
  logits cropped back. Padding reflects the frame by default: a constant border adds an edge the
  network never saw in training (a dark band can look like a target against the sky), while a
  reflection continues the sky or ground it sits next to. ``zeros`` is there for comparison.
- ``slide``: tiles of ``tile`` pixels every ``stride`` pixels over the native (optionally
  rescaled) frame, run in batches; overlapping logits are averaged. The last tile of a row or
  column is moved back to end at the frame's edge, so every tile lies inside the frame; a frame
  smaller than the tile is padded up to it as in ``pad``. A tile covering the whole padded frame
  therefore gives exactly ``pad``'s logits.

``Segmenter`` is the one entry point shared by predict.py, the test scripts and the Python API;
``check_settings`` refuses a combination that cannot work before anything runs, naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import main_logits

MODES: tuple[str, ...] = ("resize", "pad", "slide")
PADDINGS: tuple[str, ...] = ("reflect", "zeros", "none")


class ModeError(ValueError):
    """A mode/tile/stride/padding combination that cannot work; the message names the key."""


def size_multiple(model: nn.Module) -> int:
    """Input sides must be multiples of this: a DyUNet's 2**stages, 2**depth of an smp encoder.

    An smp encoder halves its input once per level (resnet34 and mobilenet: 5, so 32; PSPNet
    keeps 3, so 8). PAN's encoder reports an output stride of 16 (its last level is dilated), but
    its pyramid attention halves that map three more times, so the encoder's depth is the rule.
    A model with neither attribute accepts any size (1).
    """
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    multiple = getattr(model, "size_multiple", None)
    if multiple is not None:
        return int(multiple)
    encoder = getattr(model, "encoder", None)
    depth = getattr(encoder, "_depth", None)
    if depth is not None:
        return 2 ** int(depth)
    stride = getattr(encoder, "output_stride", None)
    return int(stride) if stride else 1


def _pair(value: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ModeError(f"{value!r} must be one side or [height, width]")
    return (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class Settings:
    """An inference mode and its parameters (sides are (height, width))."""

    mode: str = "resize"
    size: tuple[int, int] | None = None  # resize: the model's input size
    tile: tuple[int, int] | None = None  # slide
    stride: tuple[int, int] | None = None  # slide; default half the tile
    padding: str = "reflect"
    scale: float = 1.0  # pad, slide: the frame is rescaled by this first
    tile_batch: int = 8  # slide: tiles per forward

    @property
    def steps(self) -> tuple[int, int] | None:
        if self.tile is None:
            return None
        return self.stride or (max(1, self.tile[0] // 2), max(1, self.tile[1] // 2))


DEFAULT_KEYS: dict[str, str] = {k: k for k in ("mode", "size", "tile", "stride", "padding")}
DEFAULT_KEYS["scale"] = "scale"


def make_settings(
    mode: str = "resize",
    size: int | tuple[int, int] | list[int] | None = None,
    tile: int | tuple[int, int] | list[int] | None = None,
    stride: int | tuple[int, int] | list[int] | None = None,
    padding: str = "reflect",
    scale: float = 1.0,
    tile_batch: int = 8,
) -> Settings:
    """Settings from plain values (an int side means a square)."""
    return Settings(
        mode, _pair(size), _pair(tile), _pair(stride), padding, float(scale), int(tile_batch)
    )


def check_settings(s: Settings, multiple: int, keys: Mapping[str, str] = DEFAULT_KEYS) -> None:
    """Refuse what cannot work; ``keys`` maps a field to the name the user typed (config key or
    command-line flag), so the message points at it."""

    def fail(field: str, value: object, what: str) -> None:
        raise ModeError(f"{keys.get(field, field)} = {value!r}: {what}")

    def show(pair: tuple[int, int] | None) -> list[int] | None:
        return list(pair) if pair else None

    if s.mode not in MODES:
        fail("mode", s.mode, f"valid modes: {', '.join(MODES)}")
    if s.padding not in PADDINGS:
        fail("padding", s.padding, f"valid: {', '.join(PADDINGS)}")
    if s.mode != "slide":
        for field in ("tile", "stride"):
            if getattr(s, field) is not None:
                fail(field, show(getattr(s, field)), f"applies only to mode slide, not {s.mode}")
    if s.mode == "resize":
        if s.size is None or min(s.size) < 1:
            fail("size", show(s.size), "mode resize needs the model's input [height, width]")
        if any(side % multiple for side in s.size):
            fail("size", show(s.size), _multiples(multiple, s.size))
        return
    if not s.scale > 0:
        fail("scale", s.scale, "must be > 0")
    if s.mode == "pad" and s.padding == "none":
        fail("padding", s.padding, "mode pad needs padding reflect or zeros")
    if s.mode == "slide":
        if s.tile is None or min(s.tile) < 1:
            fail("tile", show(s.tile), "mode slide needs a tile [height, width]")
        if any(side % multiple for side in s.tile):
            fail("tile", show(s.tile), _multiples(multiple, s.tile))
        if s.stride is not None:
            if min(s.stride) < 1:
                fail("stride", show(s.stride), "must be positive")
            if s.stride[0] > s.tile[0] or s.stride[1] > s.tile[1]:
                fail(
                    "stride",
                    show(s.stride),
                    f"larger than the tile {list(s.tile)} would leave pixels unseen; "
                    f"use at most the tile",
                )
        if s.tile_batch < 1:
            fail("tile_batch", s.tile_batch, "must be >= 1")


def _multiples(multiple: int, sides: tuple[int, int]) -> str:
    near = [max(multiple, math.ceil(side / multiple) * multiple) for side in sides]
    return f"the model needs sides that are multiples of {multiple}, e.g. {near}"


def check_frame(s: Settings, height: int, width: int, keys: Mapping[str, str] = DEFAULT_KEYS):
    """Refuse a frame a slide without padding cannot tile (the frame is smaller than the tile)."""
    if s.mode != "slide" or s.padding != "none":
        return
    h, w = scaled_size(s, height, width)
    if h < s.tile[0] or w < s.tile[1]:
        raise ModeError(
            f"{keys.get('tile', 'tile')} = {list(s.tile)}: larger than the frame ({h}x{w}) "
            f"with {keys.get('padding', 'padding')} = 'none'; use a smaller tile or padding "
            f"reflect"
        )


def scaled_size(s: Settings, height: int, width: int) -> tuple[int, int]:
    """The frame's size after ``scale``."""
    if s.scale == 1.0:
        return height, width
    return max(1, round(height * s.scale)), max(1, round(width * s.scale))


def pad_to(x: Tensor, height: int, width: int, padding: str) -> Tensor:
    """Pad a NCHW batch on the bottom and right to ``height`` x ``width``.

    Reflection needs a pad smaller than the side; a frame too small for that (a few pixels
    against a 128 multiple) is extended by repeating its edge instead.
    """
    dh, dw = height - x.shape[-2], width - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    if padding == "zeros":
        return F.pad(x, (0, dw, 0, dh))
    if dh < x.shape[-2] and dw < x.shape[-1]:
        return F.pad(x, (0, dw, 0, dh), mode="reflect")
    return F.pad(x, (0, dw, 0, dh), mode="replicate")


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile offsets along one side: every ``stride``, the last one ending at the edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


class Segmenter:
    """A model and its inference settings: NCHW frames in [0, 1] -> logits at the frames' size.

    ``Segmenter(model, make_settings("pad"))(x)`` for a batch of same-size frames; the model is
    used as given (eval mode, optimised or not is the caller's choice).
    """

    def __init__(self, model: nn.Module, settings: Settings, keys=DEFAULT_KEYS) -> None:
        self.model, self.settings, self.keys = model, settings, keys
        self.multiple = size_multiple(model)
        check_settings(settings, self.multiple, keys)

    def forward(self, x: Tensor) -> Tensor:
        """The model's main logits, float32."""
        return main_logits(self.model(x)).float()

    @torch.inference_mode()
    def __call__(self, x: Tensor) -> Tensor:
        s = self.settings
        height, width = x.shape[-2:]
        if s.mode == "resize":
            if tuple(x.shape[-2:]) != s.size:
                x = F.interpolate(x, size=s.size, mode="bilinear", antialias=True)
            logits = self.forward(x)
        else:
            check_frame(s, height, width, self.keys)
            h, w = scaled_size(s, height, width)
            if (h, w) != (height, width):
                x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True)
            logits = self._pad(x) if s.mode == "pad" else self._slide(x)
        if tuple(logits.shape[-2:]) != (height, width):
            logits = F.interpolate(
                logits, size=(height, width), mode="bilinear", align_corners=False
            )
        return logits

    def _pad(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        m = self.multiple
        padded = pad_to(x, math.ceil(h / m) * m, math.ceil(w / m) * m, self.settings.padding)
        return self.forward(padded)[..., :h, :w]

    def _slide(self, x: Tensor) -> Tensor:
        s = self.settings
        (th, tw), (sh, sw) = s.tile, s.steps
        h, w = x.shape[-2:]
        x = pad_to(x, max(h, th), max(w, tw), s.padding)
        big_h, big_w = x.shape[-2:]
        boxes = [
            (b, y, xx)
            for b in range(x.shape[0])
            for y in tile_starts(big_h, th, sh)
            for xx in tile_starts(big_w, tw, sw)
        ]
        total = x.new_zeros(x.shape[0], 1, big_h, big_w)
        count = x.new_zeros(1, 1, big_h, big_w)
        for start in range(0, len(boxes), s.tile_batch):
            chunk = boxes[start : start + s.tile_batch]
            tiles = torch.stack([x[b, :, y : y + th, xx : xx + tw] for b, y, xx in chunk])
            logits = self.forward(tiles)
            if logits.shape[1] != 1:
                raise ModeError(f"slide blends one-class logits; the model gives {logits.shape}")
            for (b, y, xx), tile_logits in zip(chunk, logits, strict=True):
                total[b, :, y : y + th, xx : xx + tw] += tile_logits
        for y in tile_starts(big_h, th, sh):
            for xx in tile_starts(big_w, tw, sw):
                count[..., y : y + th, xx : xx + tw] += 1
        return (total / count)[..., :h, :w]
