"""Export a checkpoint to ONNX, checked against PyTorch; optionally an int8 copy.

    python export.py --model dasnet --checkpoint runs/dasnet/best.pt --format onnx
    python export.py --model dasnet --demo --size 512 512 --quantize int8
    python export.py --checkpoint runs/dasnet/best.pt --format safetensors   # exports/dasnet/

The dynamic models export as the paper infers at batch 1 (``--form aggregated``, the default
and the fastest measured: each dynamic convolution is one Conv with the sample's aggregated
kernel, so the graph holds a batch of one); ``--form mixture`` (all K kernels, outputs mixed)
or ``im2col`` give a graph with a dynamic batch axis (models/deploy.py). Other models always
export with a dynamic batch axis. The graph is verified with onnxruntime on random inputs
(batch 1 and 3) and on real images (batch 1 and 2; demo test images, or ``--images``): the
largest absolute difference of the logits must be <= ``--tolerance`` (2e-4) times max(1,
largest |logit|), and the masks (logit > 0) must agree on 99.9% of the pixels, or nothing is
written. ``--quantize int8`` then writes ``<out>.int8.onnx`` (calibrated on ``--calibration``
validation images: DAS-Net and FullDyUNet as tools/onnx_int8.py's int8 graph, every other model
by static QDQ quantization with per-channel weights, weight-only dynamic quantization if static
fails) and prints its mIoU and Dice on ``--eval-images`` test images beside the FP32 graph's,
the share of pixels whose mask equals the FP32 graph's, and both latencies. Latencies are batch
1, measured interleaved.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.checkpoint import check_writable
from models import MODEL_NAMES
from models.deploy import FORMS

from . import (
    DEMO_ROOT,
    ToolError,
    add_size_argument,
    checkpoint_for,
    input_size,
    load_for_inference,
    run_cli,
)
from .onnx_deploy import (
    TOLERANCE,
    Logits,
    blocked_graph,
    deployable,
    evaluate_onnx,
    export_onnx,
    fixed_batch,
    latencies,
    layout_note,
    ort_runner,
    pick_form,
    session,
    session_of,
    verify,
    write_int8,
)
from .predict import collect_inputs, demo_inputs, read_image, to_input

logger = logging.getLogger(__name__)


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


def export_checked(
    model: nn.Module,
    out: Path,
    size: tuple[int, int],
    opset: int,
    batches: dict[str, torch.Tensor],
    exporter: str = "torchscript",
    tolerance: float = TOLERANCE,
    in_channels: int = 3,
    form: str = "auto",
) -> dict[str, dict[str, float]]:
    """Export ``model`` in ``form`` to a temporary file beside ``out``, verify, rename to ``out``.

    The graph is compared with the plain eval model (so the deployment form is checked too).
    ``exporter`` "auto" tries the TorchScript exporter, then the dynamo one.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    form = pick_form(model, form)
    reference = Logits(copy.deepcopy(model).cpu().eval()).eval()
    net = deployable(model, form)
    dynamic = not fixed_batch(form)
    try:
        for name in ("torchscript", "dynamo") if exporter == "auto" else (exporter,):
            try:
                export_onnx(net, partial, size, opset, name, in_channels, dynamic)
                break
            except Exception as exc:
                if exporter != "auto" or name == "dynamo":
                    raise
                logger.warning("the TorchScript exporter failed (%s); trying dynamo", exc)
        results = verify(reference, partial, batches, tolerance)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return {name: r | {"form": form} for name, r in results.items()}


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
    p.add_argument(
        "--format",
        choices=("onnx", "safetensors"),
        default="onnx",
        help="safetensors: a folder (config.json + model.safetensors) for models.from_pretrained",
    )
    add_size_argument(p)
    p.add_argument("--out", help="output file (default: exports/<model>.onnx)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument(
        "--exporter",
        choices=("auto", "torchscript", "dynamo"),
        default="auto",
        help="torch.onnx exporter (auto: TorchScript, dynamo where TorchScript fails)",
    )
    p.add_argument(
        "--form",
        choices=("auto", *FORMS),
        default="auto",
        help="dynamic convolutions: aggregated (batch 1, fastest; the default), im2col or "
        "mixture (any batch)",
    )
    p.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="images or folders to compare on (default: demo test images if any)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help="max |onnx - torch| relative to max(1, |logits|)",
    )
    p.add_argument("--runs", type=int, default=20, help="latency: median of this many runs")
    p.add_argument(
        "--quantize",
        choices=("int8",),
        help="also write <out>.int8.onnx, calibrated on validation images (DAS-Net, "
        "FullDyUNet: tools/onnx_int8.py's graph; other models: static QDQ)",
    )
    p.add_argument("--calibration", type=int, default=16, help="int8: calibration images")
    p.add_argument(
        "--eval-images",
        type=int,
        default=320,
        help="int8: held-out test images (one flipped empty frame moves the mean IoU by 1/N)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line of export.py."""
    args = parser().parse_args(argv)
    return run_cli(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.tolerance <= 0:
        raise ToolError(f"--tolerance {args.tolerance} must be > 0")
    if args.quantize and (args.calibration < 1 or args.eval_images < 1):
        raise ToolError("--calibration and --eval-images must be >= 1")
    path = checkpoint_for(args.model, args.checkpoint, args.demo)
    plain, ckpt = load_for_inference(path, args.model, "cpu", optimize=False)
    name = ckpt["model_name"]
    if args.format == "safetensors":
        from models.hub import PretrainedError, export_checked_folder

        out = Path(args.out or f"exports/{name}")
        try:
            print(export_checked_folder(plain, ckpt, out, args.size, min(args.tolerance, 1e-6)))
        except PretrainedError as exc:
            raise ToolError(str(exc)) from None
        return 0
    size = input_size(ckpt, args.size, plain)
    in_channels = int((ckpt.get("model_kwargs") or {}).get("in_channels", 3))
    out = Path(args.out or f"exports/{name}.onnx")
    check_writable(out.parent)  # before the minutes of export and verification
    splits = _splits(ckpt, size, args) if args.quantize else None
    batches = check_batches(size, real_images(args.images), in_channels)
    results = export_checked(
        plain, out, size, args.opset, batches, args.exporter, args.tolerance, in_channels, args.form
    )
    print(_report(name, out, size, args, results, plain, in_channels))
    if args.quantize:
        print(_quantize(out, splits, plain, size, args, in_channels))
    return 0


def _splits(ckpt: dict[str, Any], size: tuple[int, int], args: argparse.Namespace):
    """Validation images to calibrate on and a held-out test split, from the checkpoint's data."""
    from data import UAVSegDataset

    dataset = (ckpt.get("config") or {}).get("dataset") or {}
    root = Path(dataset.get("root") or DEMO_ROOT)
    if not (root / "UAVSemanticSegmentationInput").is_dir():
        raise ToolError(
            f"dataset '{root}' (the checkpoint's dataset.root) not found: int8 calibration "
            "needs its validation images"
        )
    try:
        val = UAVSegDataset(root, "val", size, max_samples=args.calibration)
        test = UAVSegDataset(root, "test", size, max_samples=args.eval_images)
    except (OSError, ValueError) as exc:
        raise ToolError(f"dataset '{root}': {exc}") from None
    return val, test


def _quantize(
    fp32: Path,
    splits,
    plain: nn.Module,
    size: tuple[int, int],
    args: argparse.Namespace,
    in_channels: int,
) -> str:
    """Write <out>.int8.onnx; FP32 and int8 mIoU/Dice on the test split and their latency."""
    val, test = splits
    out = fp32.with_name(f"{fp32.stem}.int8.onnx")
    partial = out.with_name(f".{out.stem}.partial.onnx")
    calibration = [val[i]["image"][None].numpy() for i in range(len(val))]
    try:
        how = write_int8(plain, fp32, partial, calibration, size)
        sessions = {k: session(f, spinning=False) for k, f in (("fp32", fp32), ("int8", partial))}
        samples = ((s["image"][None].numpy(), s["mask"][None].numpy()) for s in test)
        scores = evaluate_onnx(sessions, samples)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    x = np.random.default_rng(0).random((1, in_channels, *size), dtype=np.float32)
    ms = latencies({k: ort_runner(s, x) for k, s in sessions.items()}, 2, args.runs)
    f, q = scores["fp32"], scores["int8"]
    advice = (
        ["  int8 is not faster than FP32 here: deploy the FP32 file (BENCHMARKS.md says why)"]
        if ms["int8"] >= ms["fp32"]
        else []
    )
    return "\n".join(
        [
            f"int8 -> {out} ({out.stat().st_size / 1e6:.1f} MB; {how})",
            f"  test split, {f['images']} images: mIoU FP32 {f['miou']:.4f}, int8 {q['miou']:.4f} "
            f"({q['miou'] - f['miou']:+.4f}); Dice FP32 {f['dice']:.4f}, int8 {q['dice']:.4f} "
            f"({q['dice'] - f['dice']:+.4f}); masks equal to FP32's on {q['agreement']:.3%} of "
            "the pixels",
            f"  onnxruntime latency, batch 1, interleaved, median of {args.runs}: FP32 "
            f"{ms['fp32']:.2f} ms, int8 {ms['int8']:.2f} ms ({ms['fp32'] / ms['int8']:.2f}x)",
            *advice,
        ]
    )


def _report(
    name: str,
    out: Path,
    size: tuple[int, int],
    args: argparse.Namespace,
    results: dict[str, dict[str, Any]],
    plain: nn.Module,
    in_channels: int,
) -> str:
    form = next(iter(results.values()))["form"]
    batch = "batch 1" if fixed_batch(form) else "dynamic batch"
    how = {
        "plain": "",
        "aggregated": ", dynamic convs as one conv with the per-sample kernel (fastest; "
        "--form mixture for a dynamic batch)",
        "im2col": ", dynamic convs as shifted copies x aggregated kernel",
        "mixture": ", dynamic convs as the mixture of K kernel outputs",
    }[form]
    fast = _optimized(plain)
    x = torch.rand(1, in_channels, *size)
    graph = blocked_graph(out)  # rewritten once: the session and the report's note
    sess = session_of(out, graph, spinning=False)  # timed beside PyTorch
    with torch.inference_mode():
        ms = latencies(
            {"torch": lambda: fast(x), "onnx": ort_runner(sess, x.numpy())},
            min(3, args.runs),
            args.runs,
        )
    lines: list[Any] = [
        f"{name} -> {out} ({out.stat().st_size / 1e6:.1f} MB, opset {args.opset}, "
        f"{size[0]}x{size[1]}, {batch}, form {form}{how})",
        *(
            f"  max |onnx - torch| on {what}: {r['diff']:.2e} (<= {r['bound']:.2e}), "
            f"masks agree {r['agreement']:.4%}"
            for what, r in results.items()
        ),
        f"  latency, batch 1, CPU, interleaved, median of {args.runs}: PyTorch "
        f"(optimize_for_inference) {ms['torch']:.2f} ms, onnxruntime {ms['onnx']:.2f} ms "
        f"({ms['torch'] / ms['onnx']:.2f}x; {layout_note(graph)})",
    ]
    return "\n".join(lines)


def _optimized(model: nn.Module) -> nn.Module:
    from models import optimize_for_inference

    return optimize_for_inference(copy.deepcopy(model))
