"""Training augmentation beyond the paper's none: named transforms on image and mask together.

``dataset.augment`` is ``none`` (the paper) or names joined by ``+``, e.g. ``flip+scale``:

- ``flip``: horizontal flip with probability 1/2;
- ``scale``: zoom in by a random factor in ``SCALE_RANGE`` and crop back to the input size, the
  crop placed so that the UAVs stay in view (those near a random one when all do not fit);
- ``color``: brightness, contrast and saturation jitter, on visible frames only: an infrared
  frame's grey level is a temperature, not a lighting condition.

Geometry is applied to a ``tv_tensors.Image`` and a ``tv_tensors.Mask`` through the same
torchvision.transforms.v2 kernels, so the mask is resized with nearest neighbours and both move
together. Randomness comes from torch's generator (seeded per DataLoader worker).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

TRANSFORMS: tuple[str, ...] = ("flip", "scale", "color")
SCALE_RANGE: tuple[float, float] = (1.0, 1.5)
DEFAULT = "flip+scale+color"  # what ``augment=True`` means


def parse_augment(spec: str) -> tuple[str, ...]:
    """``"flip+scale"`` as ``("flip", "scale")``, ``"none"`` as ``()``; ValueError if unknown."""
    if spec.strip() == "none":
        return ()
    names = tuple(name.strip() for name in spec.split("+"))
    bad = [name for name in names if name not in TRANSFORMS]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(
            f"augment '{spec}': give none, or one or more of {', '.join(TRANSFORMS)} joined "
            f"by '+' (each once), e.g. flip+scale"
        )
    return names


def _offset(size: int, window: int, coords: Tensor) -> int:
    """A random start of a ``window`` within ``size`` holding all of ``coords`` (which fit)."""
    if coords.numel() == 0:
        return int(torch.randint(0, size - window + 1, ()))
    lo, hi = int(coords.min()), int(coords.max()) + 1
    first, last = max(0, hi - window), min(lo, size - window)
    return int(torch.randint(first, last + 1, ()))


class PairAugment:
    """The named transforms of ``parse_augment``, called as ``(image, mask, modality)``.

    image: CxHxW (uint8 or float), mask: 1xHxW; returns both transformed, as plain tensors.
    """

    def __init__(self, names: tuple[str, ...], scale_range: tuple[float, float] = SCALE_RANGE):
        from torchvision.transforms import v2

        self.names = names
        self.scale_range = scale_range
        self.color = v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3)

    def scale_crop(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Zoom in by a random factor, then crop the input size around the UAV."""
        from torchvision.transforms.v2 import functional as F

        low, high = self.scale_range
        factor = low + (high - low) * float(torch.rand(()))
        height, width = image.shape[-2:]
        size = [round(height * factor), round(width * factor)]
        if size == [height, width]:
            return image, mask
        image, mask = F.resize(image, size, antialias=True), F.resize(mask, size)
        ys, xs = torch.nonzero(mask[0], as_tuple=True)
        if ys.numel() and (ys.max() - ys.min() >= height or xs.max() - xs.min() >= width):
            # Too spread out for one crop: keep the target pixels near a random one of them.
            pick = torch.randint(0, ys.numel(), ())
            near = ((ys - ys[pick]).abs() < height // 2) & ((xs - xs[pick]).abs() < width // 2)
            ys, xs = ys[near], xs[near]
        top, left = _offset(size[0], height, ys), _offset(size[1], width, xs)
        return F.crop(image, top, left, height, width), F.crop(mask, top, left, height, width)

    def __call__(self, image: Tensor, mask: Tensor, modality: str) -> tuple[Tensor, Tensor]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        dtype = mask.dtype
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask.to(torch.uint8))
        if "flip" in self.names and float(torch.rand(())) < 0.5:
            image, mask = F.horizontal_flip(image), F.horizontal_flip(mask)
        if "scale" in self.names:
            image, mask = self.scale_crop(image, mask)
        if "color" in self.names and modality == "visible":
            image = self.color(image)
        return image.as_subclass(Tensor), mask.as_subclass(Tensor).to(dtype)

    def __repr__(self) -> str:
        return f"PairAugment({'+'.join(self.names) or 'none'})"


def make_augment(augment: bool | str | Callable | None) -> Callable | None:
    """The dataset's transform: None for none/False, ``PairAugment`` for a name, else as given.

    True means ``DEFAULT``; a callable is a torchvision.transforms.v2 transform taking
    ``(tv_tensors.Image, tv_tensors.Mask)``.
    """
    if augment is None or augment is False:
        return None
    if augment is True:
        augment = DEFAULT
    if isinstance(augment, str):
        names = parse_augment(augment)
        return PairAugment(names) if names else None
    return augment


def apply_augment(
    transform: Callable, image: Tensor, mask: Tensor, modality: str
) -> tuple[Tensor, Tensor]:
    """Run ``transform`` on one sample's image and mask (a ``PairAugment`` also sees modality)."""
    if isinstance(transform, PairAugment):
        return transform(image, mask, modality)
    from torchvision import tv_tensors

    image, mask = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
    return image.as_subclass(Tensor), mask.as_subclass(Tensor)
