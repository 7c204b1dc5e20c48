"""Shareable weights: a Hugging Face style folder (config.json + model.safetensors).

``save_pretrained`` writes the folder, ``from_pretrained`` rebuilds the model from it. Loading
reads JSON and raw tensors only, so a downloaded folder runs no pickled code (unlike
``torch.load`` without ``weights_only``). The folder is what ``huggingface_hub`` uploads as a
model repository (``huggingface-cli upload USER/dasnet exports/dasnet``); nothing here uses the
network.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = "uavseg-pretrained/1"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


class PretrainedError(ValueError):
    """A folder that is not a complete, consistent pretrained folder; names the file."""


def save_pretrained(
    model: nn.Module,
    name: str,
    kwargs: dict[str, Any],
    folder: str | Path,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder``/model.safetensors and config.json for model ``name`` built with ``kwargs``.

    Each file is written to a temporary name and renamed, so a crash leaves the previous file
    whole; other files in the folder (a model card) are kept. A folder that holds other things
    but no config of this project is refused, never overwritten.
    """
    from . import count_parameters

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PretrainedError(f"'{folder}' is a file; give a folder to write the weights to")
    if folder.is_dir() and any(folder.iterdir()):
        try:
            read_config(folder)
        except PretrainedError:
            raise PretrainedError(
                f"'{folder}' is not empty and holds no {CONFIG} of this project; give an empty "
                f"or new folder (nothing was written)"
            ) from None
    config = {
        "format": FORMAT,
        "model_name": name,
        "model_kwargs": {k: v for k, v in kwargs.items() if k != "encoder_weights"},
        "parameters": count_parameters(model),
        **(info or {}),
    }
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    _replace(folder / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _replace(folder / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return folder


def _replace(path: Path, write: Callable[[str], object]) -> None:
    """``write(temporary path)`` beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_config(folder: str | Path) -> dict[str, Any]:
    """config.json of a pretrained folder, checked."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise PretrainedError(f"'{path}' not found: '{folder}' is not a pretrained folder")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PretrainedError(f"'{path}' cannot be read: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise PretrainedError(f"'{path}' is not a config of this project ({FORMAT})")
    return config


def from_pretrained(folder: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The model a ``save_pretrained`` folder holds, in eval mode (no encoder download)."""
    from . import MODEL_NAMES, build_model

    folder = Path(folder)
    config = read_config(folder)
    name, kwargs = config.get("model_name"), dict(config.get("model_kwargs") or {})
    if name not in MODEL_NAMES:
        raise PretrainedError(
            f"'{folder / CONFIG}' names model {name!r}; valid: {', '.join(MODEL_NAMES)}"
        )
    try:
        model = build_model(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise PretrainedError(f"'{folder / CONFIG}': model_kwargs {kwargs}: {exc}") from None
    path = folder / WEIGHTS
    if not path.is_file():
        raise PretrainedError(f"'{path}' not found")
    try:
        state = load_file(path, device=str(map_location))
    except (OSError, SafetensorError) as exc:
        raise PretrainedError(f"'{path}' cannot be read: {exc}") from None
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise PretrainedError(
            f"'{path}' does not fit {name} built with {kwargs}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, other shapes {wrong[:3]}"
        )
    model.load_state_dict(state)
    return model.to(map_location).eval()


def export_checked_folder(
    model: nn.Module,
    ckpt: dict[str, Any],
    folder: str | Path,
    size: list[int] | tuple[int, int] | None = None,
    tolerance: float = 1e-6,
) -> str:
    """Save a loaded checkpoint's model as a pretrained folder, rebuild it from the folder and
    compare the logits on a random batch; a one-line report (PretrainedError above tolerance)."""
    name, kwargs = ckpt["model_name"], dict(ckpt.get("model_kwargs") or {})
    side = getattr(model, "size_multiple", 32)
    height, width = size or (max(side, 128),) * 2
    info = {"epoch": ckpt.get("epoch"), "source": ckpt.get("source", "uavseg")}
    config_size = ((ckpt.get("config") or {}).get("dataset") or {}).get("image_size")
    if config_size:
        info["image_size"] = list(config_size)
    folder = save_pretrained(model, name, kwargs, folder, info)
    rebuilt = from_pretrained(folder)
    x = torch.rand(2, int(kwargs.get("in_channels", 3)), height, width)
    with torch.no_grad():
        diff = (model.eval()(x) - rebuilt(x)).abs().max().item()
    if diff > tolerance:
        raise PretrainedError(f"'{folder}': logits differ by {diff:.2e} (> {tolerance:g})")
    mb = (folder / WEIGHTS).stat().st_size / 1e6
    return (
        f"{name} -> {folder}/ ({CONFIG}, {WEIGHTS} {mb:.1f} MB); rebuilt with "
        f"models.from_pretrained: max |logits difference| {diff:.1e} at {height}x{width}"
    )
