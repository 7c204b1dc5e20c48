"""Export a checkpoint to ONNX with a dynamic batch axis, checked against PyTorch.

    python export.py --model dasnet --checkpoint runs/dasnet/best.pt --format onnx
    python export.py --model dasnet --demo --size 128 128

The exported graph is verified with onnxruntime on random inputs (batch 1 and 3) and on real
images (batch 1 and 2; demo test images, or ``--images``): the largest absolute difference of
the logits must be <= ``--tolerance`` (1e-4) or nothing is written. Latency of both runtimes is
reported at batch 1. DyConv's default computation convolves a whole batch as groups of one
convolution, and ONNX's Conv needs its group count fixed in the graph; the exported copy
therefore mixes the outputs of all K kernels instead (``method="mixture"``), the same function
written with a batch-independent graph.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.evaluate import measure_latency
from engine.losses import main_logits
from models import MODEL_NAMES, DyConv2d
from models.fast import FastDyConv2d

from . import (
    DEMO_ROOT,
    ToolError,
    checkpoint_for,
    input_size,
    load_for_inference,
    pick_device,
    run_cli,
)
from .predict import collect_inputs, demo_inputs, read_image, to_input

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4


class Logits(nn.Module):
    """The model's main logits only, so every model exports one output tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return main_logits(self.model(image))


def exportable(model: nn.Module) -> nn.Module:
    """A CPU copy whose DyConvs compute with a graph that does not depend on the batch size."""
    model = copy.deepcopy(model).cpu().eval()
    for module in model.modules():
        if isinstance(module, DyConv2d):
            module.__class__ = FastDyConv2d  # the plain one folds the batch into its groups
            module.method = "mixture"
    return Logits(model).eval()


def export_onnx(
    model: nn.Module,
    path: Path,
    size: tuple[int, int],
    opset: int,
    exporter: str = "torchscript",
    in_channels: int = 3,
) -> None:
    """Write ``model`` (exportable copy) to ``path`` with input 'image' and output 'logits'."""
    example = torch.rand(1, in_channels, *size)
    with warnings.catch_warnings(), torch.no_grad():
        # Shape checks on the fixed height and width are traced as constants, as intended.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1024)
            program = torch.onnx.export(
                model,
                (example,),
                input_names=["image"],
                output_names=["logits"],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={"image": {0: batch}},
            )
            program.save(str(path), external_data=False)  # one self-contained file
        else:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["image"],
                output_names=["logits"],
                opset_version=opset,
                dynamo=False,
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            )


def session(path: Path):
    """An onnxruntime CPU session for the exported file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_diff(model: nn.Module, sess, batch: torch.Tensor) -> float:
    """Largest absolute difference between PyTorch's and onnxruntime's logits on ``batch``."""
    with torch.inference_mode():
        expected = model(batch).numpy()
    got = sess.run(None, {"image": batch.numpy()})[0]
    if got.shape != expected.shape:
        raise ToolError(f"onnxruntime returned shape {got.shape}, PyTorch {expected.shape}")
    return float(np.abs(got - expected).max())


def check_batches(
    size: tuple[int, int], images: list[np.ndarray], in_channels: int = 3, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The inputs to compare on: random at batch 1 and 3, real images at batch 1 and 2."""
    gen = torch.Generator().manual_seed(seed)
    batches = {
        f"random, batch {b}": torch.rand(b, in_channels, *size, generator=gen) for b in (1, 3)
    }
    if images:
        real = torch.stack([to_input(image, size) for image in images[:2]])
        batches["image, batch 1"] = real[:1]
        if len(real) == 2:
            batches["images, batch 2"] = real
    return batches


def verify(
    model: nn.Module, path: Path, batches: dict[str, torch.Tensor], tolerance: float = TOLERANCE
) -> dict[str, float]:
    """Max abs difference per input batch; ToolError when one exceeds ``tolerance``."""
    sess = session(path)
    diffs = {name: max_diff(model, sess, batch) for name, batch in batches.items()}
    bad = {name: d for name, d in diffs.items() if not d <= tolerance}
    if bad:
        raise ToolError(f"ONNX output differs from PyTorch by more than {tolerance:g}: {bad}")
    return diffs


def onnx_latency(
    path: Path, size: tuple[int, int], warmup: int, runs: int, in_channels: int = 3
) -> float:
    """Median onnxruntime (CPU) time of one batch-1 inference, in ms."""
    sess = session(path)
    x = np.random.default_rng(0).random((1, in_channels, *size), dtype=np.float32)
    for _ in range(warmup):
        sess.run(None, {"image": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, {"image": x})
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def export_checked(
    model: nn.Module,
    out: Path,
    size: tuple[int, int],
    opset: int,
    batches: dict[str, torch.Tensor],
    exporter: str = "torchscript",
    tolerance: float = TOLERANCE,
    in_channels: int = 3,
) -> dict[str, float]:
    """Export to a temporary file beside ``out``, verify it, then rename it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    net = exportable(model)
    try:
        export_onnx(net, partial, size, opset, exporter, in_channels)
        diffs = verify(net, partial, batches, tolerance)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return diffs


def real_images(paths: list[str] | None) -> list[np.ndarray]:
    """Up to two images for the check: ``--images``, else demo test images when present."""
    if paths:
        jobs = [job for job in collect_inputs(paths) if not job.is_video]
    elif (DEMO_ROOT / "UAVSemanticSegmentationInput" / "test").is_dir():
        jobs = demo_inputs()
    else:
        return []
    return [read_image(job.path) for job in jobs[:2]]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=MODEL_NAMES, help="default: the checkpoint's model")
    p.add_argument("--checkpoint", help="a best.pt or last.pt of a run")
    p.add_argument("--demo", action="store_true", help="the demo checkpoint of --model")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument(
        "--size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="input size (default: the size the checkpoint was trained at)",
    )
    p.add_argument("--out", help="output file (default: exports/<model>.onnx)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument(
        "--exporter",
        choices=("torchscript", "dynamo"),
        default="torchscript",
        help="torch.onnx exporter (torchscript: fast; dynamo: torch.export based)",
    )
    p.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="images or folders to compare on (default: demo test images if any)",
    )
    p.add_argument("--tolerance", type=float, default=TOLERANCE)
    p.add_argument("--runs", type=int, default=20, help="latency: median of this many runs")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line of export.py."""
    args = parser().parse_args(argv)
    return run_cli(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    path = checkpoint_for(args.model, args.checkpoint, args.demo)
    plain, ckpt = load_for_inference(path, args.model, "cpu", optimize=False)
    name = ckpt["model_name"]
    size = input_size(ckpt, args.size)
    in_channels = int((ckpt.get("model_kwargs") or {}).get("in_channels", 3))
    out = Path(args.out or f"exports/{name}.onnx")
    batches = check_batches(size, real_images(args.images), in_channels)
    model, optimized = _optimized(plain), True
    try:
        diffs = export_checked(
            model, out, size, args.opset, batches, args.exporter, args.tolerance, in_channels
        )
    except Exception as exc:  # an inference rewrite that does not export: keep the plain model
        logger.warning(
            "optimized model did not export (%s); exporting the plain eval model",
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
        model, optimized = plain, False
        diffs = export_checked(
            model, out, size, args.opset, batches, args.exporter, args.tolerance, in_channels
        )
    report = _report(name, out, size, args, diffs, optimized, model, in_channels)
    print(report)
    return 0


def _optimized(model: nn.Module) -> nn.Module:
    from models import optimize_for_inference

    return optimize_for_inference(copy.deepcopy(model))


def _report(
    name: str,
    out: Path,
    size: tuple[int, int],
    args: argparse.Namespace,
    diffs: dict[str, float],
    optimized: bool,
    model: nn.Module,
    in_channels: int,
) -> str:
    warmup = min(3, args.runs)
    torch_ms = measure_latency(
        model, size, pick_device("cpu"), warmup=warmup, runs=args.runs, in_channels=in_channels
    )["ms"]
    ort_ms = onnx_latency(out, size, warmup, args.runs, in_channels)
    lines: list[Any] = [
        f"{name} -> {out} ({out.stat().st_size / 1e6:.1f} MB, opset {args.opset}, "
        f"{size[0]}x{size[1]}, dynamic batch, {'optimized' if optimized else 'plain'} model)",
        *(
            f"  max |onnx - torch| on {what}: {d:.2e} (<= {args.tolerance:g})"
            for what, d in diffs.items()
        ),
        f"  latency, batch 1, CPU, median of {args.runs}: PyTorch {torch_ms:.2f} ms, "
        f"onnxruntime {ort_ms:.2f} ms",
    ]
    return "\n".join(lines)
