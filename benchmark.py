"""Speed of the eight models: parameters, FLOPs, batch-1 latency, training throughput, memory.

    python benchmark.py [--models dasnet unet ...] [--device cpu|cuda] [--threads 2]
                        [--size 512] [--train-batch 4 --train-size 256] [--repeats N]
                        [--no-optimize] [--onnx] [--amp bf16] [--channels-last] [--compile]

Per model: trainable parameters; forward GFLOPs at --size (FlopCounterMode, multiply-add = 2;
"opt" after optimize_for_inference's exact rewrites); batch-1 latency (warm-up, then the median
of --repeats; CUDA synchronised) and FPS; optionally onnxruntime's CPU latency; training images/s
at --train-batch x --train-size after optimize_for_training (forward, the project's loss of
engine/losses.py, backward, AdamW step); peak memory (CUDA max_memory_allocated, or the
process's RSS sampled above its level before the run). For dasnet the straightforward reference
implementation (tests/reference_dasnet.py, the tests' oracle) is timed interleaved with ours on
the same inputs and weights, and the speed-ups are printed; where ours runs in a CPU workspace
(models/fast/banded.py), ours without it is timed in the same interleaving too.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from engine.cpu import keep_freed_memory
from engine.latency import interleaved
from engine.losses import SegmentationLoss
from engine.setup import autocast
from models import (
    BASELINES,
    MODEL_NAMES,
    build_model,
    count_parameters,
    optimize_for_inference,
    optimize_for_training,
    to_channels_last,
)
from tests.reference_dasnet import reference_from


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--size", type=int, default=512, help="inference input side")
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5, help="timed runs (after warm-up)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-optimize", action="store_true", help="time the plain models")
    p.add_argument("--no-train", action="store_true", help="skip the training measurement")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also time the ONNX deployment (FP32 and int8, onnxruntime CPU) at --onnx-sizes",
    )
    p.add_argument("--onnx-sizes", nargs="+", type=int, default=[512, 128])
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast (CUDA)")
    p.add_argument("--channels-last", action="store_true", help="NHWC model and inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile the models")
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc keeps freed memory (what train/test scripts do on CPU; engine/cpu.py)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def gflops(model: nn.Module, x: Tensor) -> float:
    """Forward GFLOPs of ``model`` on ``x`` (FlopCounterMode counts a multiply-add as 2)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Yield a dict whose "mb" is, on exit, the peak memory the block used above its start."""
    result = {"mb": float("nan")}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        result["mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return
    if not Path("/proc/self/statm").exists():
        yield result
        return
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:  # torch ops release the GIL, so this sees transient peaks (and slows
        # them: a third thread on the cores and for the GIL, so never sample during timing)
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result["mb"] = max(0, max(peak[0], _rss_bytes()) - base) / 2**20


def make_train_step(
    model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace
) -> Callable[[], float]:
    """One AdamW step on (x, y): forward, the training loss (engine/losses.py), backward, update."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = SegmentationLoss()
    device = x.device

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast(args.amp or "off", device):
            out = model(x)
        loss = criterion(out, y)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def onnx_rows(model: nn.Module, name: str, args: argparse.Namespace) -> list[dict[str, object]]:
    """Batch-1 latency at each --onnx-sizes: PyTorch FP32 (optimize_for_inference), ONNX FP32
    and ONNX int8 (tools/onnx_deploy.py: the export's default form; ``write_int8`` calibrated
    on two random images, enough for timing), the three timed interleaved."""
    try:
        from tools import ToolError
        from tools.onnx_deploy import (
            deployable,
            export_onnx,
            fixed_batch,
            ort_runner,
            pick_form,
            session,
            write_int8,
        )
    except ImportError as err:
        return [{"model": name, "error": f"onnxruntime missing ({err})"}]
    model = model.cpu().float().eval()
    form = pick_form(model)
    fast = optimize_for_inference(copy.deepcopy(model))
    rows = []
    for size in args.onnx_sizes:
        row: dict[str, object] = {"model": name, "size": size, "form": form}
        x = torch.rand(1, 3, size, size)
        rng = np.random.default_rng(args.seed)
        calibration = [rng.random((1, 3, size, size), dtype=np.float32) for _ in range(2)]
        with tempfile.TemporaryDirectory() as tmp:
            fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            net, dynamic = deployable(model, form), not fixed_batch(form)
            for exporter in ("torchscript", "dynamo"):  # dynamo where TorchScript fails
                try:
                    export_onnx(net, fp32, (size, size), 17, exporter, dynamic_batch=dynamic)
                    row["exporter"] = exporter
                    break
                except Exception as err:  # report and go on: ONNX is an extra
                    row["error"] = f"{exporter} export failed ({type(err).__name__})"
            if "exporter" not in row:
                rows.append(row)
                continue
            row.pop("error", None)
            fns = {
                "torch_ms": lambda x=x: fast(x),
                "onnx_ms": ort_runner(session(fp32, args.threads, spinning=False), x.numpy()),
            }
            try:
                write_int8(model, fp32, int8, calibration, (size, size))
                int8_session = session(int8, args.threads, spinning=False)
                fns["int8_ms"] = ort_runner(int8_session, x.numpy())
            except ToolError as err:  # no int8 form: say so, go on
                row["int8"] = f"none ({err})"
            with torch.no_grad():
                t = interleaved(fns, torch.device("cpu"), args.repeats, args.warmup)
        row.update({k: v * 1e3 for k, v in t.items()})
        rows.append(row)
        print(f"  {name} onnx @{size}: done", flush=True)
    return rows


def inference_model(
    model: nn.Module, args: argparse.Namespace, workspace: bool | None = None
) -> nn.Module:
    if args.no_optimize:
        m = model.eval()
        if args.channels_last:
            m = to_channels_last(m)
        return torch.compile(m) if args.compile else m
    return optimize_for_inference(
        model,
        compile=args.compile,
        channels_last=True if args.channels_last else None,
        workspace=workspace,
    )


def uses_workspace(model: nn.Module, x: Tensor) -> bool:
    """Whether ``model(x)`` runs in a workspace (models/fast/banded.py): only large maps do."""
    ws = getattr(model, "workspace", None)
    if ws is None:
        return False
    model(x)
    return ws.nbytes() > 0


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    """All figures for one model (and, for dasnet, the reference's beside ours)."""
    torch.manual_seed(args.seed)
    kwargs = {"encoder_weights": None} if name in BASELINES else {}  # never download weights
    model = build_model(name, **kwargs).to(device)
    row: dict[str, object] = {"model": name, "params": count_parameters(model)}
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.rand(1, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    row["gflops"] = gflops(model.eval(), x)
    fast = inference_model(model, args)
    row["gflops_opt"] = float("nan") if args.compile else gflops(fast, x)

    reference = reference_from(model).to(device).eval() if name == "dasnet" else None
    forward = {"ours": lambda: fast(x)}
    if reference is not None:
        x_ref = x.contiguous()  # the straightforward path stays NCHW
        forward["reference"] = lambda: reference(x_ref)
    with torch.no_grad(), autocast(args.amp or "off", device):
        if reference is not None and uses_workspace(fast, x):  # what it adds, in the same run
            no_ws = inference_model(model, args, workspace=False)
            forward["no_workspace"] = lambda: no_ws(x)
        t = interleaved(forward, device, args.repeats, args.warmup)
        # memory in its own untimed run (the CPU sampler thread would slow the timed ones), the
        # first of a fresh copy: that includes the buffers a workspace keeps between calls
        fresh = fast if args.compile else inference_model(model, args)
        with peak_memory(device) as mem:
            fresh(x)
        del fresh
    row["ms"] = t["ours"] * 1e3
    row["fps"] = 1.0 / t["ours"]
    row["infer_mb"] = mem["mb"]
    if reference is not None:
        row["ref_ms"] = t["reference"] * 1e3
    if "no_workspace" in t:
        row["no_ws_ms"] = t["no_workspace"] * 1e3
    if args.onnx:
        row["onnx"] = onnx_rows(model, name, args)

    if not args.no_train:
        b, s = args.train_batch, args.train_size
        xt = torch.rand(b, 3, s, s, device=device).contiguous(memory_format=fmt)
        yt = (torch.rand(b, 1, s, s, device=device) > 0.9).float()
        model.train()
        if not args.no_optimize:
            optimize_for_training(model)
        if args.channels_last:
            to_channels_last(model)
        trained = torch.compile(model) if args.compile else model
        steps = {"ours": make_train_step(trained, xt, yt, args)}
        if reference is not None:
            ref_train = reference.train()
            steps["reference"] = make_train_step(ref_train, xt.contiguous(), yt, args)
        t = interleaved(steps, device, args.repeats, args.warmup)
        with peak_memory(device) as mem:
            steps["ours"]()
        row["train_ips"] = b / t["ours"]
        row["train_mb"] = mem["mb"]
        if reference is not None:
            row["ref_train_ips"] = b / t["reference"]
    return row


def _cell(value: object, digits: int = 1) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def markdown(rows: list[dict[str, object]], args: argparse.Namespace) -> str:
    """The results as a markdown table, then the reference comparison for dasnet."""
    cols = [
        ("model", "model", 0),
        ("params", "params", 0),
        ("gflops", f"GFLOPs@{args.size}", 1),
        ("gflops_opt", "GFLOPs opt", 1),
        ("ms", "ms (b1)", 1),
        ("fps", "FPS", 2),
    ]
    if not args.no_train:
        cols += [
            ("train_ips", f"train img/s (b{args.train_batch}@{args.train_size})", 2),
            ("train_mb", "train peak MB", 0),
        ]
    cols.append(("infer_mb", "infer peak MB", 0))
    lines = [
        "| " + " | ".join(c[1] for c in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k), d) for k, _, d in cols) + " |")
    for r in rows:
        if "ref_ms" not in r:
            continue
        lines.append("")
        lines.append(
            f"dasnet forward b1@{args.size}: reference {r['ref_ms']:.1f} ms, ours "
            f"{r['ms']:.1f} ms -> speed-up {r['ref_ms'] / r['ms']:.2f}x"
        )
        if "no_ws_ms" in r:
            lines.append(
                f"  ours without the workspace {r['no_ws_ms']:.1f} ms (speed-up "
                f"{r['ref_ms'] / r['no_ws_ms']:.2f}x); the workspace gains "
                f"{r['no_ws_ms'] / r['ms']:.2f}x"
            )
        if "ref_train_ips" in r:
            lines.append(
                f"dasnet train step b{args.train_batch}@{args.train_size}: reference "
                f"{r['ref_train_ips']:.2f} img/s, ours {r['train_ips']:.2f} img/s -> "
                f"speed-up {r['train_ips'] / r['ref_train_ips']:.2f}x"
            )
    onnx = [o for r in rows for o in r.get("onnx", [])]
    if onnx:
        lines += ["", onnx_markdown(onnx, args)]
    return "\n".join(lines)


def onnx_markdown(rows: list[dict[str, object]], args: argparse.Namespace) -> str:
    """The ONNX deployment rows: batch-1 ms of PyTorch FP32, ONNX FP32 and ONNX int8."""
    lines = [
        f"ONNX deployment, batch 1, {args.threads} threads, interleaved, median of {args.repeats}:",
        "",
        "| model | size | form | PyTorch FP32 ms | ONNX FP32 ms | ONNX int8 ms "
        "| ONNX FP32 / PyTorch | int8 speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r.get('size', '-')} | {r['error']} |  |  |  |  |  |")
            continue
        int8 = r.get("int8_ms")
        int8_ms = f"{int8:.1f}" if int8 else r.get("int8", "-")
        speed_up = f"{r['onnx_ms'] / int8:.2f}x" if int8 else "-"
        lines.append(
            f"| {r['model']} | {r['size']} | {r['form']} | {r['torch_ms']:.1f} | "
            f"{r['onnx_ms']:.1f} | {int8_ms} | {r['onnx_ms'] / r['torch_ms']:.2f} | {speed_up} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory() if args.keep_freed_memory else False
    opt = "plain eval" if args.no_optimize else "optimize_for_inference"
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"amp {args.amp or 'fp32'}, channels_last {args.channels_last}, compile {args.compile}, "
        f"{opt}, repeats {args.repeats}, glibc keeps freed memory {kept}",
        flush=True,
    )
    rows = []
    for name in args.models:
        rows.append(bench_model(name, args, device))
        print(f"  {name}: done", flush=True)
    print(markdown(rows, args))
    return rows


if __name__ == "__main__":
    main()
