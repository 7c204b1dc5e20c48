"""Checkpoints and result files: written atomically, read with ``weights_only=True``.

Every file goes to a temporary name in the same folder and is renamed over the target only
when complete, so a crash, a full disk or a kill mid-write leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

FORMAT = "uavseg-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the model; names the file."""


class WriteError(RuntimeError):
    """A file or folder that cannot be written (no permission, full disk); names the path."""


def check_writable(folder: str | Path) -> None:
    """Fail before the work when ``folder`` (or, if missing, the folder that would hold it)
    cannot be written; nothing is created."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise WriteError(f"cannot write to '{folder}': '{existing}' is not a writable folder")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, sync it, then rename it to ``path``.

    An OSError (no permission, full disk) becomes a WriteError naming ``path``; the previous
    file, if any, is left as it was and no temporary file stays behind.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; ours are not secret
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise WriteError(f"cannot write '{path}': {exc.strerror or exc}") from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (results files)."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Save a checkpoint dict atomically, tagged with this project's format."""
    return atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def read_file(
    path: str | Path, map_location: str | torch.device = "cpu", train_hint: str = ""
) -> Any:
    """``torch.load`` with ``weights_only=True``; errors name the path (and how to make it)."""
    path = Path(path)
    if not path.is_file():
        how = f"; train one first: {train_hint}" if train_hint else ""
        raise CheckpointError(f"checkpoint '{path}' not found{how}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint '{path}' cannot be read: {exc}") from None


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", train_hint: str = ""
) -> dict[str, Any]:
    """Load a checkpoint of this project; errors name the path (and how to make it)."""
    ckpt = read_file(path, map_location, train_hint)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a checkpoint of this project ({FORMAT})")
    return ckpt


def load_weights(model: nn.Module, ckpt: dict[str, Any], path: str | Path, name: str) -> None:
    """Load a checkpoint's weights into ``model``; another model or shape is named, not guessed."""
    if ckpt.get("model_name") != name:
        raise CheckpointError(
            f"checkpoint '{path}' holds model '{ckpt.get('model_name')}', not '{name}'"
        )
    own = model.state_dict()
    theirs = ckpt["model"]
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit model '{name}': missing {missing[:3]}, "
            f"unexpected {unexpected[:3]} (built with {ckpt.get('model_kwargs')})"
        )
    for key, value in theirs.items():
        if value.shape != own[key].shape:
            raise CheckpointError(
                f"checkpoint '{path}' does not fit model '{name}': '{key}' has shape "
                f"{tuple(value.shape)} in the checkpoint and {tuple(own[key].shape)} in the model "
                f"(checkpoint built with {ckpt.get('model_kwargs')})"
            )
    model.load_state_dict(theirs)


def load_model(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    name: str | None = None,
    train_hint: str = "",
    into: nn.Module | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as and load its weights; (model, checkpoint).

    A file saved by the DAS-Net authors' code (or a bare state_dict) loads too: models/authors.py.
    ``into``: load this project's weights into that model instead (it must fit the checkpoint;
    a mismatch names the tensor); an authors' file is still built at its own width.
    """
    from models import build_model
    from models.authors import AuthorsFormatError, load_authors

    ckpt = read_file(path, map_location, train_hint)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        try:
            return load_authors(ckpt, name, map_location)
        except AuthorsFormatError as exc:
            raise CheckpointError(f"checkpoint '{path}' cannot be loaded: {exc}") from None
    name = name or ckpt.get("model_name")
    if ckpt.get("model_name") != name:
        raise CheckpointError(
            f"checkpoint '{path}' holds model '{ckpt.get('model_name')}', not '{name}'"
        )
    if into is not None:
        load_weights(into, ckpt, path, name)
        return into, ckpt
    kwargs = dict(ckpt.get("model_kwargs", {}))
    if "encoder_weights" in kwargs:
        kwargs["encoder_weights"] = None  # the checkpoint holds the weights: never download
    model = build_model(name, **kwargs)
    load_weights(model, ckpt, path, name)
    return model.eval(), ckpt
