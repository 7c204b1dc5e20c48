"""The published folder layout of the UAV segmentation dataset (SPEC section 4) and its errors.

    <root>/UAVSemanticSegmentationInput/<split>/<sequence>/{visible,infrared}/<frame>.jpg
    <root>/UAVSemanticSegmentationLabels/<split>/<sequence>/{visible,infrared}/<frame>_mask.png

Older copies name the two top folders ``input`` and ``labels``; both namings are accepted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

INPUT_DIRS: tuple[str, ...] = ("UAVSemanticSegmentationInput", "input")
LABEL_DIRS: tuple[str, ...] = ("UAVSemanticSegmentationLabels", "labels")
SPLITS: tuple[str, ...] = ("train", "val", "test")
MODALITIES: tuple[str, ...] = ("visible", "infrared")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = "_mask.png"
DEMO_HINT = "python -m data.synthetic --out {root}"


class DatasetError(Exception):
    """A dataset that cannot be used as asked; the message names the offending path(s)."""


def check_choice(argument: str, value: object, choices: tuple[str, ...]) -> None:
    """Refuse a value outside ``choices`` with a message naming the argument and the choices."""
    if value not in choices:
        raise ValueError(f"{argument}={value!r} is not valid; choose one of: {', '.join(choices)}")


@dataclass(frozen=True)
class Layout:
    """Where the images and the masks of one dataset root live."""

    root: Path
    input_dir: Path
    label_dir: Path

    def image_split(self, split: str) -> Path:
        return self.input_dir / split

    def label_split(self, split: str) -> Path:
        return self.label_dir / split

    def splits(self) -> list[str]:
        """The standard splits present in the image tree."""
        return [s for s in SPLITS if self.image_split(s).is_dir()]


def _pick(root: Path, names: tuple[str, ...], what: str) -> Path:
    found = [root / n for n in names if (root / n).is_dir()]
    if not found:
        raise DatasetError(
            f"no {what} folder in dataset root '{root}' (expected one of: {', '.join(names)}); "
            f"to create a demo dataset run: {DEMO_HINT.format(root=root)}"
        )
    if len(found) > 1:
        logger.warning("both %s and %s exist in '%s'; using %s", *names, root, found[0].name)
    return found[0]


def find_layout(root: str | Path) -> Layout:
    """Locate the image and label trees under ``root`` or raise a DatasetError naming the path."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"dataset root '{root}' does not exist; download the dataset there, or generate a "
            f"demo dataset with: {DEMO_HINT.format(root=root)}"
        )
    return Layout(root, _pick(root, INPUT_DIRS, "image"), _pick(root, LABEL_DIRS, "label"))


def require_split(layout: Layout, split: str) -> None:
    """Raise a DatasetError naming the split folder when it is missing from either tree."""
    check_choice("split", split, SPLITS)
    for folder in (layout.image_split(split), layout.label_split(split)):
        if not folder.is_dir():
            present = ", ".join(layout.splits()) or "none"
            raise DatasetError(
                f"split folder '{folder}' not found (splits with images: {present}); "
                f"to create a demo dataset run: {DEMO_HINT.format(root=layout.root)}"
            )
