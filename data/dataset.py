"""The paired visible/infrared UAV segmentation dataset as a PyTorch Dataset (SPEC section 4).

As in the paper, every visible and every infrared image is its own 3-channel sample; the pairing
of the two images of a frame is kept (``pairs``, ``partner``) for fusion or per-modality work.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .augment import apply_augment, make_augment
from .decode import MASK_RESIZES, MaskSizeError, probe_pair, read_pair
from .index import Group, SplitIndex, frame_id, load_index
from .layout import MODALITIES, SPLITS, DatasetError, check_choice

logger = logging.getLogger(__name__)

MODALITY_CHOICES: tuple[str, ...] = ("both", *MODALITIES)


@dataclass(frozen=True)
class Sample:
    """One image of the dataset and where its mask is."""

    image_path: str
    mask_path: str
    modality: str
    sequence: str
    frame: str

    @property
    def name(self) -> str:
        """Relative id, unique within a split, e.g. ``seq001/visible/000012``."""
        return f"{self.sequence}/{self.modality}/{self.frame}"


@dataclass
class SplitStats(Mapping):
    """What the scan of a split found and what the dataset kept; read as attributes or keys."""

    frames: int
    masks: int
    pairs: int
    frames_without_mask: int
    masks_without_frame: int
    samples: int = 0
    selected: int = 0
    skipped_unreadable: int = 0
    skipped_size_mismatch: int = 0

    def __getitem__(self, key: str) -> int:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class UAVSegDataset(Dataset):
    """One split of the UAV dataset; an item is ``{"image", "mask", "modality", "name"}``.

    image: float32 3xHxW in [0, 1] (single-channel IR replicated); mask: float32 1xHxW in {0, 1}.
    ``image_size`` is (height, width); ``max_samples`` keeps a random subset drawn with ``seed``.
    ``skip_unreadable`` checks every kept pair up front (headers and file ends) and drops the
    unreadable, truncated or mis-sized ones, counting them in ``stats``; otherwise a bad file
    raises DatasetError when loaded. ``augment`` is False, a name such as ``"flip+scale"`` (see
    ``data.augment``; True is its default), or a torchvision.transforms.v2 transform called on
    (tv_tensors.Image, tv_tensors.Mask).
    ``cache`` is True, False or a folder for the file index (see ``data.index``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        image_size: int | tuple[int, int] = (512, 512),
        modality: str = "both",
        max_samples: int | None = None,
        seed: int = 42,
        mask_resize: str = "bilinear",
        skip_unreadable: bool = False,
        augment: bool | str | Callable = False,
        cache: bool | str | Path = True,
    ) -> None:
        check_choice("split", split, SPLITS)
        check_choice("modality", modality, MODALITY_CHOICES)
        check_choice("mask_resize", mask_resize, MASK_RESIZES)
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size={image_size!r} must be (height, width) > 0")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples={max_samples!r} must be a positive int or None")
        self.root, self.split, self.modality = Path(root), split, modality
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.mask_resize = mask_resize
        self.transform = make_augment(augment)

        self.index: SplitIndex = load_index(root, split, cache=cache)
        modalities = MODALITIES if modality == "both" else (modality,)
        self._groups = [g for g in self.index.groups if g.modality in modalities]
        self.stats = SplitStats(**self.index.counts(modalities))
        self._log_unmatched()

        counts = np.array([len(g) for g in self._groups], dtype=np.int64)
        total = int(counts.sum())
        if total == 0:
            raise DatasetError(
                f"split folder '{self.index.layout.image_split(split)}' has no {modality} "
                f"images with a mask (frames: {self.stats.frames}, masks: {self.stats.masks})"
            )
        # Flat (group, position) arrays instead of one object per sample: cheap to build from
        # the cached index and cheap to share with DataLoader workers.
        self._gid = np.repeat(np.arange(len(self._groups), dtype=np.int32), counts)
        self._pos = (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)).astype(
            np.int32
        )
        if max_samples is not None and max_samples < total:
            keep = np.array(sorted(random.Random(seed).sample(range(total), max_samples)))
            self._gid, self._pos = self._gid[keep], self._pos[keep]
        self.stats.samples = total
        if skip_unreadable:
            self._drop_unreadable()
        self.stats.selected = len(self._gid)
        self._samples: list[Sample] | None = None
        self._pairs: list[tuple[int, int]] | None = None
        self._partner: dict[int, int] = {}

    def _log_unmatched(self) -> None:
        s = self.stats
        if s.frames_without_mask or s.masks_without_frame:
            example = next(
                (
                    g.image_path(g.frames_without_mask[0])
                    for g in self._groups
                    if g.frames_without_mask
                ),
                None,
            )
            logger.warning(
                "%s/%s (%s): skipped %d frames without a mask%s; %d masks without a frame",
                self.root,
                self.split,
                self.modality,
                s.frames_without_mask,
                f" (e.g. {example})" if example else "",
                s.masks_without_frame,
            )

    def _drop_unreadable(self) -> None:
        keep = []
        for i in range(len(self._gid)):
            g, name = self._locate(i)
            try:
                probe_pair(g.image_path(name), g.mask_path(name))
                keep.append(i)
            except MaskSizeError as exc:
                self.stats.skipped_size_mismatch += 1
                logger.debug("skipped: %s", exc)
            except DatasetError as exc:
                self.stats.skipped_unreadable += 1
                logger.debug("skipped: %s", exc)
        skipped = len(self._gid) - len(keep)
        if skipped:
            logger.warning(
                "%s/%s: skipped %d unreadable and %d mis-sized image/mask pairs",
                self.root,
                self.split,
                self.stats.skipped_unreadable,
                self.stats.skipped_size_mismatch,
            )
            self._gid, self._pos = self._gid[keep], self._pos[keep]
        if not keep:
            raise DatasetError(f"no readable samples left in '{self.root}' split {self.split}")

    def _locate(self, i: int) -> tuple[Group, str]:
        """The group and image file name of item ``i``."""
        g = self._groups[self._gid[i]]
        return g, g.frames[self._pos[i]]

    def __len__(self) -> int:
        return len(self._gid)

    def __getitem__(self, i: int) -> dict[str, Any]:
        g, name = self._locate(i)
        image, mask = read_pair(
            g.image_path(name), g.mask_path(name), self.image_size, self.mask_resize
        )
        mask = mask.unsqueeze(0)
        if self.transform is not None:
            image, mask = apply_augment(self.transform, image, mask, g.modality)
        return {
            "image": image.float().div_(255),
            "mask": mask.float(),
            "modality": g.modality,
            "name": f"{g.sequence}/{g.modality}/{frame_id(name)}",
        }

    @property
    def samples(self) -> list[Sample]:
        """One record per item, built on first use (the index itself holds only names)."""
        if self._samples is None:
            self._samples = []
            for i in range(len(self)):
                g, name = self._locate(i)
                self._samples.append(
                    Sample(
                        g.image_path(name),
                        g.mask_path(name),
                        g.modality,
                        g.sequence,
                        frame_id(name),
                    )
                )
        return self._samples

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(visible index, infrared index) of every frame whose two images are both items.

        Only a dataset with modality "both" has pairs; the pairing over a whole split is
        ``UAVSegDataset(root, split).pairs`` (no re-scan: the index is cached).
        """
        if self._pairs is None:
            self._build_pairs()
        return self._pairs

    def partner(self, i: int) -> int | None:
        """Index of the other modality's image of item ``i``'s frame, if that is an item."""
        if self._pairs is None:
            self._build_pairs()
        return self._partner.get(i)

    def _build_pairs(self) -> None:
        seen: dict[tuple[str, str], int] = {}
        pairs = []
        for i, s in enumerate(self.samples):
            other = seen.pop((s.sequence, s.frame), None)
            if other is None:
                seen[(s.sequence, s.frame)] = i
            else:
                pairs.append((other, i) if s.modality == "infrared" else (i, other))
        self._pairs = sorted(pairs)
        self._partner = {a: b for vis, ir in pairs for a, b in ((vis, ir), (ir, vis))}

    def __repr__(self) -> str:
        return (
            f"UAVSegDataset(root='{self.root}', split={self.split!r}, modality={self.modality!r}, "
            f"samples={len(self)}, image_size={self.image_size})"
        )
