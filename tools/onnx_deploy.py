"""ONNX deployment: export forms, the check against PyTorch, int8 quantization, evaluation.

Shared by export.py (writes and checks the files), predict.py (``--onnx``) and benchmark.py
(``--onnx``). The dynamic models export in one of the forms of ``models/deploy.py``; the check
compares onnxruntime with the plain PyTorch model at a tolerance relative to the logits'
magnitude, and reports how many pixels get the same mask.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.latency import interleaved
from engine.losses import main_logits
from models import optimize_for_inference
from models.deploy import FORMS, batch_independent, deploy_copy, has_dynamic_convs

from . import ToolError

logger = logging.getLogger(__name__)

TOLERANCE = 2e-4  # x max(1, largest |logit|): float32 rounding measured at 9e-5 of it (512)
MIN_MASK_AGREEMENT = 0.999  # fraction of pixels whose mask (logit > 0) must be the same
DEFAULT_FORM = "aggregated"  # fastest exact form measured (BENCHMARKS.md, "ONNX deployment")
BATCH_FORM = "mixture"  # fastest measured form whose graph takes any batch


class Logits(nn.Module):
    """The model's main logits only, so every model exports one output tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return main_logits(self.model(image))


def pick_form(model: nn.Module, form: str = "auto") -> str:
    """The export form: ``plain`` for models without DyConv2d, else ``form`` (auto: fastest)."""
    if not has_dynamic_convs(model):
        return "plain"
    if form == "auto":
        return DEFAULT_FORM
    if form not in FORMS:
        raise ToolError(f"unknown --form {form!r}; valid: auto, {', '.join(FORMS)}")
    return form


def deployable(model: nn.Module, form: str) -> nn.Module:
    """A CPU eval copy computing ``model``'s logits in ``form``, with the exact weight folds.

    The DyConv2d modules are swapped first, then ``optimize_for_inference`` folds BatchNorms and
    the DyUNet head in the standard NCHW layout (no workspace: a graph has no buffers to keep).
    """
    net = copy.deepcopy(model).cpu().eval() if form == "plain" else deploy_copy(model, form)
    try:
        net = optimize_for_inference(net, channels_last=False, workspace=False)
    except Exception as exc:  # an optimization that does not apply: the copy is still exact
        logger.warning("optimize_for_inference skipped for export: %s", exc)
    return Logits(net).eval()


def fixed_batch(form: str) -> bool:
    """Whether a graph of ``form`` holds a batch of one (``plain`` graphs take any batch)."""
    return form != "plain" and not batch_independent(form)


def export_onnx(
    net: nn.Module,
    path: Path,
    size: tuple[int, int],
    opset: int,
    exporter: str = "torchscript",
    in_channels: int = 3,
    dynamic_batch: bool = True,
) -> None:
    """Write ``net`` to ``path`` with input 'image' and output 'logits'."""
    example = torch.rand(1, in_channels, *size)
    with warnings.catch_warnings(), torch.no_grad():
        # Shape checks on the fixed height and width are traced as constants, as intended.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        if exporter == "dynamo":
            shapes = {"image": {0: torch.export.Dim("batch", min=1, max=1024)}}
            program = torch.onnx.export(
                net,
                (example,),
                input_names=["image"],
                output_names=["logits"],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=shapes if dynamic_batch else None,
            )
            program.save(str(path), external_data=False)  # one self-contained file
        else:
            axes = {"image": {0: "batch"}, "logits": {0: "batch"}}
            torch.onnx.export(
                net,
                (example,),
                str(path),
                input_names=["image"],
                output_names=["logits"],
                opset_version=opset,
                dynamo=False,
                dynamic_axes=axes if dynamic_batch else None,
            )


def session(path: Path | str, threads: int = 0):
    """An onnxruntime CPU session for ``path`` (``threads`` 0: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ToolError(f"onnxruntime cannot load '{path}': {str(exc).splitlines()[0]}") from None


def graph_batch(sess) -> int | None:
    """The batch size the graph's input is fixed to, or None for a dynamic batch axis."""
    dim = sess.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) else None


def run_onnx(sess, batch: np.ndarray) -> np.ndarray:
    """Logits of ``batch`` (N x C x H x W float32); a batch-1 graph runs sample by sample."""
    name = sess.get_inputs()[0].name
    if graph_batch(sess) == 1 and len(batch) != 1:
        return np.concatenate(
            [sess.run(None, {name: batch[i : i + 1]})[0] for i in range(len(batch))]
        )
    return sess.run(None, {name: batch})[0]


def compare(expected: np.ndarray, got: np.ndarray, tolerance: float) -> dict[str, float]:
    """Largest |difference|, the bound it must meet and the fraction of equal mask pixels."""
    if got.shape != expected.shape:
        raise ToolError(f"onnxruntime returned shape {got.shape}, PyTorch {expected.shape}")
    scale = max(1.0, float(np.abs(expected).max()))
    return {
        "diff": float(np.abs(got - expected).max()),
        "bound": tolerance * scale,
        "agreement": float(((got > 0) == (expected > 0)).mean()),
    }


def verify(
    reference: nn.Module,
    path: Path,
    batches: dict[str, torch.Tensor],
    tolerance: float = TOLERANCE,
) -> dict[str, dict[str, float]]:
    """Compare the graph with ``reference`` (PyTorch) on each batch; ToolError when it differs.

    A batch passes when max |onnx - torch| <= tolerance * max(1, max |logit|) and at least
    MIN_MASK_AGREEMENT of the pixels fall on the same side of the threshold: float32 rounding
    grows with the logits, a wrong graph changes them by far more.
    """
    sess = session(path)
    results = {}
    for name, batch in batches.items():
        with torch.inference_mode():
            expected = reference(batch).float().numpy()
        results[name] = compare(expected, run_onnx(sess, batch.numpy()), tolerance)
    bad = {
        name: f"max diff {r['diff']:.3g} (bound {r['bound']:.3g}), masks agree {r['agreement']:.4%}"
        for name, r in results.items()
        if not (r["diff"] <= r["bound"] and r["agreement"] >= MIN_MASK_AGREEMENT)
    }
    if bad:
        raise ToolError(
            f"ONNX output differs from PyTorch by more than {tolerance:g} x max(1, |logits|) "
            f"or in more than {1 - MIN_MASK_AGREEMENT:.1%} of mask pixels: {bad}"
        )
    return results


def latencies(runners: dict[str, Callable[[], object]], warmup: int, runs: int) -> dict[str, float]:
    """Median ms of each runner, the runners called in turn so they share the machine's load."""
    seconds = interleaved(runners, torch.device("cpu"), runs, warmup)
    return {name: t * 1e3 for name, t in seconds.items()}


def ort_runner(sess, x: np.ndarray) -> Callable[[], object]:
    """A no-argument call of ``sess`` on ``x`` (for ``latencies``)."""
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x})


# -- int8 ------------------------------------------------------------------------------------


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over a list of N x C x H x W arrays."""

    def __init__(self, name: str, images: Iterable[np.ndarray]) -> None:
        self._feeds = iter([{name: image} for image in images])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # part of the protocol; calibration reads the data once
        pass


def quantize_int8(
    fp32: Path, out: Path, calibration: list[np.ndarray], op_types: list[str] | None = None
) -> str:
    """Write an int8 copy of ``fp32`` to ``out``; returns how it was quantized.

    Static QDQ quantization (activations uint8 with ranges calibrated on ``calibration``,
    weights int8 per output channel); when the static quantizer fails, weight-only dynamic
    quantization of the operators it can handle (the fallback is named in the result).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    sess = session(fp32)
    name = sess.get_inputs()[0].name
    pre = out.with_name(f".{out.stem}.pre.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantizer warns per tensor on the root logger
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        try:
            quantize_static(
                str(pre),
                str(out),
                _Calibration(name, calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                extra_options={"CalibMaxIntermediateOutputs": _flush_every(len(calibration))},
            )
            how = f"static QDQ, per-channel weights, {len(calibration)} calibration images"
        except Exception as exc:
            quantize_dynamic(str(pre), str(out), per_channel=True, weight_type=QuantType.QInt8)
            how = f"dynamic, weights only (static failed: {type(exc).__name__}: {exc})"
    finally:
        root.setLevel(level)
        pre.unlink(missing_ok=True)
    if how.startswith("dynamic"):
        logger.warning("int8: %s", how)
    return how


def _flush_every(n: int) -> int:
    """Calibration images between range merges: small (memory: every activation of each image
    is kept until the merge) and not dividing ``n``, since onnxruntime refuses a last merge
    that finds nothing left."""
    return next(k for k in range(2, n + 2) if n % k)


def evaluate_onnx(
    sessions: dict[str, Any], samples: Iterable[tuple[np.ndarray, np.ndarray]]
) -> dict[str, dict[str, float]]:
    """Mean per-image mIoU and Dice of each session over (image 1xCxHxW, mask 1x1xHxW) samples."""
    from engine.metrics import per_image_scores

    sums = {k: {"miou": 0.0, "dice": 0.0} for k in sessions}
    count = 0
    for image, mask in samples:
        target = torch.from_numpy(mask)
        for key, sess in sessions.items():
            scores = per_image_scores(torch.from_numpy(run_onnx(sess, image)), target)
            sums[key]["miou"] += float(scores["miou"].sum())
            sums[key]["dice"] += float(scores["dice"].sum())
        count += len(image)
    if not count:
        raise ToolError("no images to evaluate the int8 model on")
    return {k: {m: v / count for m, v in s.items()} | {"images": count} for k, s in sums.items()}
