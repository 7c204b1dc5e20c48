"""Tools around trained models: predict, export, seed statistics and figures.

Each tool is a module with a ``main(argv) -> int`` that the top-level script of the same name
calls. What they share lives here: one-line errors with exit code 2, the demo checkpoint, the
device and the model's input size.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data import DatasetError
from engine.checkpoint import CheckpointError, WriteError, load_model
from engine.config import ConfigError
from engine.inference_modes import size_multiple
from engine.setup import pick_device as engine_pick_device
from models import optimize_for_inference

DEMO_RUNS = Path("runs/demo")
DEMO_ROOT = Path("demo_data/uav")


class ToolError(RuntimeError):
    """An expected failure of a tool (bad input, missing file); the message names what."""


EXPECTED_ERRORS = (
    ToolError,
    CheckpointError,
    DatasetError,
    ConfigError,
    WriteError,
    FileNotFoundError,
    PermissionError,
)


def run_cli(body: Callable[[], int]) -> int:
    """Run a tool's body; an expected failure becomes one ``error:`` line and exit code 2."""
    # force: a handler from an earlier call may hold a stream that is closed now
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    try:
        return body()
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: stopped by Ctrl-C", file=sys.stderr)
        return 130


def demo_checkpoint(model: str) -> Path:
    """runs/demo/<model>/best.pt, or an error saying how to make it."""
    path = DEMO_RUNS / model / "best.pt"
    if not path.is_file():
        raise ToolError(
            f"demo checkpoint '{path}' not found; train it first: python train_{model}.py --demo"
        )
    return path


def checkpoint_for(model: str | None, checkpoint: str | None, demo: bool) -> Path:
    """The checkpoint a tool should load: ``checkpoint``, or with ``demo`` the model's demo one."""
    if checkpoint:
        return Path(checkpoint)
    if demo:
        if not model:
            raise ToolError("--demo needs --model to find runs/demo/<model>/best.pt")
        return demo_checkpoint(model)
    raise ToolError("give --checkpoint PATH (or --demo with --model)")


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else Apple MPS, else CPU (engine.setup.pick_device)."""
    return engine_pick_device(name, key="--device")


def load_for_inference(
    path: str | Path,
    model: str | None = None,
    device: torch.device | str = "cpu",
    optimize: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint's model on ``device`` in eval mode (optimized), and the checkpoint dict."""
    net, ckpt = load_model(path, map_location=device, name=model)
    net = net.to(device).eval()
    return (optimize_for_inference(net) if optimize else net), ckpt


def add_size_argument(parser: argparse.ArgumentParser) -> None:
    """``--size H W``, read by ``input_size``: the tools' model input size option."""
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="model input size (default: the size the checkpoint was trained at)",
    )


def input_size(ckpt: dict[str, Any], size: list[int] | None, model: nn.Module) -> tuple[int, int]:
    """The (height, width) to feed ``model``: ``size`` or the size it was trained at.

    Sides must be multiples of the model's own multiple (engine.inference_modes.size_multiple).
    """
    if size is None:
        size = ((ckpt.get("config") or {}).get("dataset") or {}).get("image_size")
        if not size:
            raise ToolError("the checkpoint does not record its image size; give --size H W")
    if len(size) != 2 or min(size) < 1:
        raise ToolError(f"--size {size}: give two positive sides, height and width")
    height, width = int(size[0]), int(size[1])
    multiple = size_multiple(model)
    if height % multiple or width % multiple:
        raise ToolError(
            f"size {height}x{width}: {ckpt.get('model_name')} needs sides that are multiples of "
            f"{multiple}, e.g. --size {multiple * 4} {multiple * 4}"
        )
    return height, width
