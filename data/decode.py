"""Read one frame and its mask at the network's input size, cheaply and with named errors.

JPEG frames are decoded with Pillow's draft mode (libjpeg DCT scaling): a 1920x1080 frame wanted
at 512x512 is decoded at 960x540, a quarter of the pixels, before the bilinear resize.
Masks: any non-zero pixel is UAV; they are resized bilinear then thresholded at > 0 (the
paper's choice, which slightly grows small targets) or nearest.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .layout import DatasetError

MASK_RESIZES: tuple[str, ...] = ("bilinear", "nearest")
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_ALPHA_MODES = ("LA", "PA", "RGBA")
_TRAILERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


class MaskSizeError(DatasetError):
    """A mask whose size differs from its image's."""


def open_file(path: str, what: str) -> Image.Image:
    """Open an image or mask lazily (header only); DatasetError names the file if it cannot be."""
    try:
        return Image.open(path)
    except _READ_ERRORS as exc:
        raise DatasetError(f"unreadable {what} file '{path}': {exc}") from exc


def _has_trailer(path: str, fmt: str | None) -> bool:
    """Whether a JPEG or PNG file ends with its end marker (a truncated copy does not)."""
    trailer = _TRAILERS.get(fmt or "")
    if trailer is None:
        return True
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
        # Some encoders pad after the end marker with zero bytes.
        return f.read().rstrip(b"\x00").endswith(trailer)


def probe_file(path: str, what: str) -> tuple[int, int]:
    """Check from the header and the file end that a file is a complete image; its size.

    Two small reads, no decoding, so it can run over a whole split.
    """
    with open_file(path, what) as im:
        try:
            complete = _has_trailer(path, im.format)
        except OSError as exc:
            raise DatasetError(f"unreadable {what} file '{path}': {exc}") from exc
        if not complete:
            raise DatasetError(f"truncated {what} file '{path}' (no end marker)")
        return im.size


def probe_pair(image_path: str, mask_path: str) -> tuple[int, int]:
    """``probe_file`` both files of a pair and check that their sizes agree; the size."""
    image_size = probe_file(image_path, "image")
    check_sizes(image_path, mask_path, image_size, probe_file(mask_path, "mask"))
    return image_size


def check_sizes(image_path: str, mask_path: str, image_size: tuple, mask_size: tuple) -> None:
    """Raise MaskSizeError naming both files when a mask's size differs from its image's."""
    if image_size != mask_size:
        raise MaskSizeError(
            f"mask '{mask_path}' is {mask_size[0]}x{mask_size[1]} but its image "
            f"'{image_path}' is {image_size[0]}x{image_size[1]}"
        )


def decode_image(im: Image.Image, path: str, size: tuple[int, int] | None) -> torch.Tensor:
    """An opened frame as a 3xHxW uint8 tensor at ``size`` (height, width), or as stored.

    Draft mode picks the strongest JPEG DCT reduction (1/2, 1/4 or 1/8) whose result still
    covers ``size``; the rest is an antialiased bilinear resize (torch's uint8 kernel: a few
    times faster than Pillow's, and equal to it within one grey level).
    """
    try:
        if size is not None:
            im.draft("RGB", (size[1], size[0]))
        pixels = np.array(im if im.mode == "RGB" else im.convert("RGB"))
    except _READ_ERRORS as exc:
        raise DatasetError(f"unreadable image file '{path}': {exc}") from exc
    image = torch.from_numpy(pixels).permute(2, 0, 1)
    if size is not None and tuple(image.shape[1:]) != tuple(size):
        image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0]
    return image.contiguous()


def _nonzero(im: Image.Image) -> np.ndarray:
    """HxW bool: True wherever any colour channel is non-zero (alpha is ignored)."""
    arr = np.asarray(im)
    if arr.ndim == 3:
        if im.mode in _ALPHA_MODES:
            arr = arr[..., :-1]
        return (arr != 0).any(axis=-1)
    return arr != 0


def _footprints(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """For each output pixel of an antialiased bilinear resize along one axis, the input
    pixels [start, stop) with a positive weight.

    Output j is centred on input coordinate c = (j + 1/2) n_in / n_out; the triangle filter
    reaches r = max(n_in / n_out, 1) input pixels, so pixel i weighs > 0 iff |i + 1/2 - c| < r.
    Multiplied by 2 n_out this is integer arithmetic: exact, with no rounding at the edges.
    """
    j = np.arange(n_out, dtype=np.int64)
    reach = 2 * n_in if n_in >= n_out else 2 * n_out  # 2 r n_out
    low, high = (2 * j + 1) * n_in - reach, (2 * j + 1) * n_in + reach  # bounds on (2i+1) n_out
    start = (low - n_out) // (2 * n_out) + 1
    stop = -((n_out - high) // (2 * n_out))
    return np.clip(start, 0, n_in), np.clip(stop, 0, n_in)


def _nearest(n_in: int, n_out: int) -> np.ndarray:
    """For each output pixel along one axis, the input pixel under its centre."""
    return (2 * np.arange(n_out, dtype=np.int64) + 1) * n_in // (2 * n_out)


def resize_bits(
    bits: np.ndarray,
    offset: tuple[int, int],
    shape: tuple[int, int],
    out: tuple[int, int],
    method: str,
) -> np.ndarray:
    """Resize a bool mask of ``shape`` whose True pixels all lie in ``bits``, placed at
    ``offset`` (row, column), to ``out``: bilinear then > 0, or nearest.

    Bilinear then > 0 marks an output pixel iff a UAV pixel has a positive weight in it; with
    the weights' footprints known exactly (``_footprints``) that is a box sum over ``bits``.
    """
    result = np.zeros(out, dtype=bool)
    if method == "nearest":
        rows, cols = (_nearest(n, m) - o for n, m, o in zip(shape, out, offset, strict=True))
        r = (rows >= 0) & (rows < bits.shape[0])
        c = (cols >= 0) & (cols < bits.shape[1])
        result[np.ix_(r, c)] = bits[np.ix_(rows[r], cols[c])]
        return result
    (r0, r1), (c0, c1) = (
        (np.clip(a - o, 0, k), np.clip(b - o, 0, k))
        for (a, b), o, k in zip(
            (_footprints(shape[0], out[0]), _footprints(shape[1], out[1])),
            offset,
            bits.shape,
            strict=True,
        )
    )
    rows, cols = np.flatnonzero(r1 > r0), np.flatnonzero(c1 > c0)
    table = np.zeros((bits.shape[0] + 1, bits.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = bits.cumsum(0).cumsum(1)  # table[a, b] = UAV pixels in bits[:a, :b]
    a, b, c, d = r0[rows, None], r1[rows, None], c0[None, cols], c1[None, cols]
    result[np.ix_(rows, cols)] = (table[b, d] - table[a, d] - table[b, c] + table[a, c]) > 0
    return result


def decode_mask(
    im: Image.Image, path: str, size: tuple[int, int] | None = None, method: str = "bilinear"
) -> torch.Tensor:
    """An opened mask as a HxW bool tensor at ``size`` (height, width): any non-zero pixel is UAV.

    Only the UAV's bounding box is converted (masks are mostly background), so a 1920x1080
    mask costs about its PNG decode; see ``resize_bits`` for the resize.
    """
    try:
        im.load()
        # Rare: find the UAV pixels the slow way. Pillow < 13 (which gradio needs) takes the
        # bounding box of a 16-bit image over its bytes, not its pixels.
        if im.mode in _ALPHA_MODES or im.mode.startswith(("I", "F")):
            full = _nonzero(im)
            rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
            bbox = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) if rows.size else None
            bits = full[bbox[1] : bbox[3], bbox[0] : bbox[2]] if bbox else None
        else:
            bbox = im.getbbox()
            bits = _nonzero(im.crop(bbox)) if bbox else None
    except _READ_ERRORS as exc:
        raise DatasetError(f"unreadable mask file '{path}': {exc}") from exc
    shape = (im.size[1], im.size[0])
    out = tuple(size) if size is not None else shape
    if bbox is None:
        return torch.zeros(out, dtype=torch.bool)
    return torch.from_numpy(resize_bits(bits, (bbox[1], bbox[0]), shape, out, method))


def read_pair(
    image_path: str,
    mask_path: str,
    size: tuple[int, int] | None = None,
    mask_resize: str = "bilinear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame (3xHxW uint8) and mask (HxW bool) at ``size``; DatasetError names a bad file.

    Sizes are compared from the headers before anything is decoded.
    """
    with open_file(image_path, "image") as im, open_file(mask_path, "mask") as mk:
        check_sizes(image_path, mask_path, im.size, mk.size)
        return decode_image(im, image_path, size), decode_mask(mk, mask_path, size, mask_resize)
