"""Index one split of the dataset: which frames have masks, per sequence and modality.

The full dataset holds over 600,000 files, so the listing is built once and cached as JSON (in
the dataset root when it is writable, else under ~/.cache/uavseg). The cache records the
modification time of the split folders and of every modality folder; adding, removing or
renaming a file changes its folder's time, so re-opening only stats those folders (O(folders),
not O(files)) to know whether the cached listing still holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .layout import (
    IMAGE_SUFFIXES,
    MASK_SUFFIX,
    MODALITIES,
    Layout,
    find_layout,
    require_split,
)

logger = logging.getLogger(__name__)

CACHE_VERSION = 2
CACHE_PREFIX = ".uavseg_index_"


def _join(names: list[str]) -> str:
    return "\n".join(names)


def _split(text: str) -> list[str]:
    return text.split("\n") if text else []


def _count(text: str) -> int:
    """How many names a joined list holds, without splitting it."""
    return text.count("\n") + 1 if text else 0


@dataclass
class Group:
    """The files of one sequence and modality: frames with masks, and the unmatched ones.

    File names are kept newline-joined and split on first use, so re-opening a cached index
    of 600,000 files creates a few hundred strings rather than one object per file.
    """

    sequence: str
    modality: str
    frame_text: str  # image file names that have a mask, sorted, newline-joined
    unmatched_frame_text: str = ""  # image file names without a mask
    unmatched_mask_text: str = ""  # mask file names without an image
    image_dir: str = ""
    mask_dir: str = ""

    @cached_property
    def frames(self) -> list[str]:
        return _split(self.frame_text)

    @property
    def frames_without_mask(self) -> list[str]:
        return _split(self.unmatched_frame_text)

    @property
    def masks_without_frame(self) -> list[str]:
        return _split(self.unmatched_mask_text)

    def __len__(self) -> int:
        """Frames with a mask."""
        return _count(self.frame_text)

    def image_path(self, name: str) -> str:
        return os.path.join(self.image_dir, name)

    def mask_path(self, name: str) -> str:
        return os.path.join(self.mask_dir, frame_id(name) + MASK_SUFFIX)


@dataclass
class SplitIndex:
    """The scan of one split: its groups and the number of frames seen in both modalities."""

    layout: Layout
    split: str
    groups: list[Group]
    pairs: int

    def __post_init__(self) -> None:
        image_root = self.layout.image_split(self.split)
        label_root = self.layout.label_split(self.split)
        for g in self.groups:
            g.image_dir = os.path.join(image_root, g.sequence, g.modality)
            g.mask_dir = os.path.join(label_root, g.sequence, g.modality)

    def counts(self, modalities: tuple[str, ...] = MODALITIES) -> dict[str, int]:
        """File counts over the groups of the given modalities."""
        groups = [g for g in self.groups if g.modality in modalities]
        with_mask = sum(_count(g.frame_text) for g in groups)
        no_mask = sum(_count(g.unmatched_frame_text) for g in groups)
        no_frame = sum(_count(g.unmatched_mask_text) for g in groups)
        return {
            "frames": with_mask + no_mask,
            "masks": with_mask + no_frame,
            "samples": with_mask,
            "pairs": self.pairs,
            "frames_without_mask": no_mask,
            "masks_without_frame": no_frame,
        }


def frame_id(file_name: str) -> str:
    """The frame identifier: the image file name without its extension."""
    return file_name.rsplit(".", 1)[0]


def _list_files(folder: str) -> list[str]:
    """Names of the non-hidden files in ``folder``; empty if it does not exist.

    (A name with a line break, which the joined lists cannot hold, is no dataset file.)
    """
    try:
        with os.scandir(folder) as entries:
            return [
                e.name
                for e in entries
                if not e.name.startswith(".") and "\n" not in e.name and e.is_file()
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _list_dirs(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _mtime(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return None


def _sequence_dirs(layout: Layout, split: str, sequences: list[str]) -> list[str]:
    """The modality folders of a split's sequences in both trees, relative to the root.

    Their times (or absence) vouch for the files; the split folder's time vouches for the set
    of sequences, so the sequence folders themselves need no watching.
    """
    tops = (layout.input_dir.name, layout.label_dir.name)
    return [f"{top}/{split}/{seq}/{m}" for top in tops for seq in sequences for m in MODALITIES]


def scan_split(layout: Layout, split: str) -> tuple[SplitIndex, dict[str, int | None]]:
    """Walk one split; return its index and the folder times taken before listing them."""
    image_root, label_root = layout.image_split(split), layout.label_split(split)
    # Each folder's time is read before it is listed: a file added meanwhile invalidates the cache.
    tops = (layout.input_dir.name, layout.label_dir.name)
    times = {f"{top}/{split}": _mtime(layout.root / top / split) for top in tops}
    sequences = sorted(set(_list_dirs(image_root)) | set(_list_dirs(label_root)))
    times |= {d: _mtime(layout.root / d) for d in _sequence_dirs(layout, split, sequences)}
    groups, pairs = [], 0
    for seq in sequences:
        matched: dict[str, set[str]] = {}
        for modality in MODALITIES:
            names = _list_files(os.path.join(image_root, seq, modality))
            images = sorted(n for n in names if n.lower().endswith(IMAGE_SUFFIXES))
            masks = {
                n
                for n in _list_files(os.path.join(label_root, seq, modality))
                if n.endswith(MASK_SUFFIX)
            }
            frames, unmatched, used = [], [], set()
            for name in images:
                mask = frame_id(name) + MASK_SUFFIX
                if mask in masks:
                    frames.append(name)
                    used.add(mask)
                else:
                    unmatched.append(name)
            if images or masks:
                orphans = sorted(masks - used)
                groups.append(Group(seq, modality, _join(frames), _join(unmatched), _join(orphans)))
            matched[modality] = {frame_id(n) for n in frames}
        pairs += len(matched["visible"] & matched["infrared"])
    return SplitIndex(layout, split, groups, pairs), times


# -- cache -------------------------------------------------------------------------------------


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "uavseg"


def cache_files(root: Path, split: str, cache: bool | str | Path = True) -> list[Path]:
    """Candidate cache files, most preferred first: the root itself, then the user cache."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    if cache is True:
        return [root / f"{CACHE_PREFIX}{split}.json", _user_cache_dir() / f"{digest}_{split}.json"]
    return [Path(cache) / f"{digest}_{split}.json"]


def _read_cache(path: Path, layout: Layout, split: str) -> SplitIndex | None:
    """The cached index if the file exists, matches this layout and no folder changed."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    try:
        if (
            data["version"] != CACHE_VERSION
            or data["split"] != split
            or data["input"] != layout.input_dir.name
            or data["labels"] != layout.label_dir.name
        ):
            return None
        root = str(layout.root)
        for rel, recorded in data["dirs"].items():
            if _mtime(f"{root}/{rel}") != recorded:
                logger.debug("index cache %s is stale: %s changed", path, rel)
                return None
        groups = [Group(*g) for g in data["groups"]]
        return SplitIndex(layout, split, groups, data["pairs"])
    except (KeyError, TypeError, ValueError):
        logger.debug("index cache %s is malformed; rescanning", path)
        return None


def _write_cache(paths: list[Path], index: SplitIndex, times: dict[str, int | None]) -> Path | None:
    """Write the index atomically to the first writable candidate; None if none is."""
    data = {
        "version": CACHE_VERSION,
        "split": index.split,
        "input": index.layout.input_dir.name,
        "labels": index.layout.label_dir.name,
        "dirs": times,
        "pairs": index.pairs,
        "groups": [
            [g.sequence, g.modality, g.frame_text, g.unmatched_frame_text, g.unmatched_mask_text]
            for g in index.groups
        ],
    }
    text = json.dumps(data, separators=(",", ":"))
    for path in paths:
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the index is not secret
            os.replace(tmp, path)
            return path
        except OSError as exc:
            logger.debug("cannot write index cache %s: %s", path, exc)
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    return None


def load_index(root: str | Path, split: str, cache: bool | str | Path = True) -> SplitIndex:
    """The index of ``split`` under ``root``: from the cache when still valid, else scanned.

    ``cache`` is True (root, then ~/.cache/uavseg), False (always scan) or a folder to use.
    """
    layout = find_layout(root)
    require_split(layout, split)
    paths = cache_files(layout.root, split, cache) if cache is not False else []
    for path in paths:
        index = _read_cache(path, layout, split)
        if index is not None:
            logger.debug("index of %s/%s read from %s", layout.root, split, path)
            return index
    index, times = scan_split(layout, split)
    if paths:
        written = _write_cache(paths, index, times)
        logger.debug("index of %s/%s cached in %s", layout.root, split, written)
    return index
