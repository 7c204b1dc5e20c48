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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from engine.latency import interleaved
from engine.losses import main_logits
from models.deploy import FORMS, batch_independent, deploy_copy, has_dynamic_convs, taps_heads
from models.fast import fold_weights

from . import ToolError
from .onnx_nchwc import block_size, blocked_dynamic_convs, computed_kernel_convs

if TYPE_CHECKING:
    import onnx

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

    The DyConv2d modules are swapped for ``form`` (models/deploy.py), then BatchNorms and the
    DyUNet head are folded (``fold_weights``). The forward stays the plain one: the speed
    layer's eager tricks (in-place writes into a preallocated concatenation, the nine-tap head)
    trace into slow ONNX (ScatterND, Slice chains), while onnxruntime optimizes the plain graph.
    """
    net = copy.deepcopy(model).cpu().eval() if form == "plain" else deploy_copy(model, form)
    return Logits(taps_heads(fold_weights(net))).eval()


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


def blocked_graph(path: Path | str) -> onnx.ModelProto | None:
    """``path``'s graph with its computed-kernel convolutions in this CPU's NCHWc layout
    (tools/onnx_nchwc.py), or None where nothing is rewritten (no such conv, no layout)."""
    block = block_size()
    if not block:
        return None
    import onnx

    model = onnx.load(str(path))
    try:
        graph, count = blocked_dynamic_convs(model, block)
    except Exception as exc:  # a graph the rewrite does not understand runs as it is
        logger.warning("%s: standard onnxruntime layout (blocked rewrite failed: %s)", path, exc)
        return None
    if not count:
        return None
    graph.doc_string = f"{count} computed-kernel convs in onnxruntime's NCHWc{block} layout"
    return graph


def session(path: Path | str, threads: int = 0, blocked: bool = True, spinning: bool = True):
    """An onnxruntime CPU session for ``path`` (``threads`` 0: onnxruntime's default).

    ``blocked``: convolutions whose kernel the graph computes (the dynamic models' aggregated
    kernels) run in onnxruntime's blocked NCHWc layout, rewritten for this CPU when the session
    is created (``blocked_graph``); the file itself is not changed. ``spinning``: see
    ``session_of``.
    """
    try:
        graph = blocked_graph(path) if blocked else None
    except Exception as exc:
        raise ToolError(f"onnxruntime cannot load '{path}': {str(exc).splitlines()[0]}") from None
    return session_of(path, graph, threads, spinning)


def session_of(
    path: Path | str, graph: onnx.ModelProto | None, threads: int = 0, spinning: bool = True
):
    """An onnxruntime CPU session running ``graph`` (``path``'s blocked graph, from
    ``blocked_graph``), or ``path`` itself where ``graph`` is None.

    ``spinning``: onnxruntime's worker threads keep spinning after each job (its default, the
    lowest latency for a session alone). Sessions timed beside other runners take False: their
    spinning threads would steal the cores from the next runner (PyTorch at 128x128 measured
    56.1 ms interleaved with a spinning session, 28.5 ms without; BENCHMARKS.md).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        source = str(path) if graph is None else graph.SerializeToString()
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ToolError(f"onnxruntime cannot load '{path}': {str(exc).splitlines()[0]}") from None


def layout_note(graph: onnx.ModelProto | None) -> str:
    """How a session of ``graph`` (from ``blocked_graph``; None: the file as it is) runs."""
    if graph is None:
        return "onnxruntime's standard layout"
    return f"{graph.doc_string} (tools/onnx_nchwc.py)"


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
    grows with the logits, a wrong graph changes them by far more. Where this machine runs the
    dynamic convolutions blocked (``session``), the file is also checked as any other
    onnxruntime runs it (results named ``<batch> (standard layout)``).
    """
    graph = blocked_graph(path)
    sessions = {"": session_of(path, graph)}
    if graph is not None:
        sessions[" (standard layout)"] = session_of(path, None)
    results = {}
    for name, batch in batches.items():
        with torch.inference_mode():
            expected = reference(batch).float().numpy()
        for suffix, sess in sessions.items():
            results[name + suffix] = compare(expected, run_onnx(sess, batch.numpy()), tolerance)
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
    """Median ms of each runner, the runners called in turn so they share the machine's load
    (onnxruntime runners from sessions made with ``spinning=False``)."""
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

    In a graph with convolutions whose kernel it computes (the dynamic models), only the
    constant-weight convolutions with a spatial kernel are quantized (the thin decoders' 3x3
    convs): onnxruntime's fast int8 convolution needs its weights at load time (a per-image
    int8 kernel ran slower than the FP32 blocked one, BENCHMARKS.md); quantizing the kernel
    attention, the gate scores and the head took the demo DAS-Net's test mIoU from 0.53 to
    0.18, and its gates' 1x1 projections alone moved it by 0.03 to 0.04 and made it slower. A
    graph left with nothing to quantize (DAS-Net, FullDyUNet) is refused with that reason:
    ``write_int8`` builds their int8 graph from the PyTorch model instead.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = session(fp32, blocked=False).get_inputs()[0].name
    pre = out.with_name(f".{out.stem}.pre.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantizer warns per tensor on the root logger
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        import onnx

        model = onnx.load(str(pre))
        graph = model.graph
        computed = set(computed_kernel_convs(model))
        nodes = None
        if computed:
            shapes = {i.name: list(i.dims) for i in graph.initializer}
            nodes = [
                n.name
                for n in graph.node
                if n.op_type == "Conv"
                and n.name not in computed
                and len(shapes.get(n.input[1], [])) == 4
                and shapes[n.input[1]][2] * shapes[n.input[1]][3] > 1  # not the 1x1 gates
            ]
            op_types = ["Conv"]
        kept = f"; {len(computed)} computed-kernel convs kept in FP32" if computed else ""
        if nodes == []:
            raise ToolError(
                f"int8 has nothing to speed up in '{fp32}': its 3x3 convolutions compute their "
                "kernels per image, which onnxruntime's int8 convolution cannot prepare from the "
                "file; export.py --quantize int8 builds this model's int8 graph from its "
                "checkpoint (tools/onnx_int8.py)"
            )
        try:
            quantize_static(
                str(pre),
                str(out),
                _Calibration(name, calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                nodes_to_quantize=nodes,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                extra_options={"CalibMaxIntermediateOutputs": _flush_every(len(calibration))},
            )
            how = f"static QDQ, per-channel weights, {len(calibration)} calibration images{kept}"
        except Exception as exc:
            quantize_dynamic(str(pre), str(out), per_channel=True, weight_type=QuantType.QInt8)
            how = f"dynamic, weights only (static failed: {type(exc).__name__}: {exc})"
    finally:
        root.setLevel(level)
        pre.unlink(missing_ok=True)
    if how.startswith("dynamic"):
        logger.warning("int8: %s", how)
    return how


def write_int8(
    model: nn.Module,
    fp32: Path,
    out: Path,
    calibration: list[np.ndarray],
    size: tuple[int, int],
) -> str:
    """Write an int8 deployment of ``model`` (whose FP32 export is ``fp32``) to ``out``;
    returns how it was quantized.

    A DyUNet whose convolutions are all dynamic (DAS-Net, FullDyUNet) gets the int8 NHWC graph
    of tools/onnx_int8.py (its K constant kernels in int8, mixed by pi at run time), calibrated
    on ``calibration`` through the PyTorch model; any other model onnxruntime's static QDQ
    quantization of ``fp32`` (``quantize_int8``).
    """
    from .onnx_int8 import build_int8, calibrate, supports

    if not supports(model):
        return quantize_int8(fp32, out, calibration)
    import onnx

    ranges = calibrate(model, (torch.from_numpy(image) for image in calibration))
    onnx.save(build_int8(model, ranges, size), str(out))
    return (
        f"int8 NHWC graph (tools/onnx_int8.py): each dynamic conv's {_kernels(model)} kernels "
        f"as int8 convs mixed by pi, ranges calibrated on {len(calibration)} images"
    )


def _kernels(model: nn.Module) -> int:
    from models.dynamic_conv import DyConv2d

    return next(m.num_kernels for m in model.modules() if isinstance(m, DyConv2d))


def _flush_every(n: int) -> int:
    """Calibration images between range merges: small (memory: every activation of each image
    is kept until the merge) and not dividing ``n``, since onnxruntime refuses a last merge
    that finds nothing left."""
    return next(k for k in range(2, n + 2) if n % k)


def evaluate_onnx(
    sessions: dict[str, Any], samples: Iterable[tuple[np.ndarray, np.ndarray]]
) -> dict[str, dict[str, float]]:
    """Mean per-image mIoU and Dice of each session over (image 1xCxHxW, mask 1x1xHxW) samples,
    and for each session after the first the fraction of pixels whose mask (logit > 0) equals
    the first session's ("agreement": steadier than a mean of per-image scores, where one empty
    frame that flips moves the mean by 1/N)."""
    from engine.metrics import per_image_scores

    sums = {k: {"miou": 0.0, "dice": 0.0, "agreement": 0.0} for k in sessions}
    count = pixels = 0
    for image, mask in samples:
        target = torch.from_numpy(mask)
        first = None
        for key, sess in sessions.items():
            logits = run_onnx(sess, image)
            scores = per_image_scores(torch.from_numpy(logits), target)
            sums[key]["miou"] += float(scores["miou"].sum())
            sums[key]["dice"] += float(scores["dice"].sum())
            masks = logits > 0
            first = masks if first is None else first
            sums[key]["agreement"] += float((masks == first).sum())
        count += len(image)
        pixels += first.size if first is not None else 0
    if not count:
        raise ToolError("no images to evaluate the int8 model on")
    return {
        k: {"miou": s["miou"] / count, "dice": s["dice"] / count}
        | {"agreement": s["agreement"] / pixels, "images": count}
        for k, s in sums.items()
    }
