"""What onnxruntime's spinning worker threads do to runners timed beside them.

    python benchmarks/bench_onnx_spinning.py [--model dasnet] [--size 512 512] [--runs 10]

One process, the model's ONNX file (random weights, the export's default form, this project's
blocked session) in a session that spins after each run (onnxruntime's default) and one that
does not (``session_of(spinning=False)``), and PyTorch after ``optimize_for_inference``. Each
runner is timed alone (its own block of runs), then the three interleaved twice: with the
spinning session, and with the non-spinning one. A spinning session's idle workers take the
cores from the runner after it, which is why every interleaved comparison in this project
makes its sessions with ``spinning=False``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import MODEL_NAMES, build_model, optimize_for_inference  # noqa: E402
from tools.onnx_deploy import (  # noqa: E402
    blocked_graph,
    deployable,
    export_onnx,
    fixed_batch,
    latencies,
    ort_runner,
    pick_form,
    session_of,
)


def alone(run: Callable[[], object], runs: int, warmup: int = 2) -> float:
    """Median ms of ``run`` called ``runs`` times in a row, after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="dasnet", choices=MODEL_NAMES)
    p.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, encoder_weights=None) if args.model in MODEL_NAMES[4:] else None
    model = (model or build_model(args.model)).eval()
    size = tuple(args.size)
    form = pick_form(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.model}.onnx"
        net = deployable(model, form)
        export_onnx(net, path, size, 17, dynamic_batch=not fixed_batch(form))
        graph = blocked_graph(path)
        spinning = session_of(path, graph, args.threads, spinning=True)
        quiet = session_of(path, graph, args.threads, spinning=False)
    fast = optimize_for_inference(copy.deepcopy(model))
    x = torch.rand(1, 3, *size)
    runners = {
        "pytorch": lambda: fast(x),
        "onnx, spinning": ort_runner(spinning, x.numpy()),
        "onnx, not spinning": ort_runner(quiet, x.numpy()),
    }
    with torch.inference_mode():
        single = {name: alone(run, args.runs) for name, run in runners.items()}
        mixed = {
            session: latencies(
                {"pytorch": runners["pytorch"], session: runners[session]}, 2, args.runs
            )
            for session in ("onnx, spinning", "onnx, not spinning")
        }
    print(
        f"{args.model} {size[0]}x{size[1]}, batch 1, {args.threads} threads, "
        f"median of {args.runs} (ms):"
    )
    for name, ms in single.items():
        print(f"  alone        {name:20s} {ms:8.1f}")
    for session, ms in mixed.items():
        print(
            f"  interleaved  pytorch {ms['pytorch']:8.1f}  {session} {ms[session]:8.1f}  "
            f"PyTorch / ONNX {ms['pytorch'] / ms[session]:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
