"""One dynamic model's ONNX file in onnxruntime's layouts, against PyTorch, in one process.

    python benchmarks/bench_onnx_layout.py [--model dasnet] [--size 512 512] [--runs 7]

Exports the model (random weights, the aggregated form) and times, interleaved on the same
input: PyTorch after ``optimize_for_inference``; the file as any onnxruntime runs it (standard
layout); the computed-kernel convs blocked, each returning to NCHW (tools/onnx_nchwc.py without
``stay_blocked``); and the session this project opens (blocked, the maps kept blocked between the
convs). Prints the medians, the ratios, and the largest difference of each session from PyTorch.
The sessions do not spin between runs (``session_of(spinning=False)``), so that none slows the
runner after it.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx  # noqa: E402

from models import MODEL_NAMES, build_model, optimize_for_inference  # noqa: E402
from tools.onnx_deploy import (  # noqa: E402
    deployable,
    export_onnx,
    latencies,
    ort_runner,
    session_of,
)
from tools.onnx_nchwc import block_size, blocked_dynamic_convs  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="dasnet", choices=MODEL_NAMES[:4])
    p.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    block = block_size()
    if block is None:
        print("onnxruntime has no blocked layout on this CPU: nothing to compare")
        return 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model).eval()
    size = tuple(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.model}.onnx"
        export_onnx(deployable(model, "aggregated"), path, size, 17, dynamic_batch=False)
        graph = onnx.load(str(path))
        sessions = {
            "standard": session_of(path, None, args.threads, False),
            "convs blocked": session_of(
                path,
                blocked_dynamic_convs(copy.deepcopy(graph), block, False)[0],
                args.threads,
                False,
            ),
            "maps blocked": session_of(
                path, blocked_dynamic_convs(copy.deepcopy(graph), block)[0], args.threads, False
            ),
        }
        x = torch.rand(1, 3, *size)
        fast = optimize_for_inference(copy.deepcopy(model))
        with torch.inference_mode():
            expected = fast(x).numpy()
            runners = {"pytorch": lambda: fast(x)}
            runners |= {k: ort_runner(s, x.numpy()) for k, s in sessions.items()}
            ms = latencies(runners, 2, args.runs)
    print(
        f"{args.model} {size[0]}x{size[1]}, batch 1, {args.threads} threads, NCHWc{block}, "
        f"interleaved, median of {args.runs}:"
    )
    for name, t in ms.items():
        line = f"  {name:14s} {t:8.1f} ms   PyTorch / this {ms['pytorch'] / t:5.2f}x"
        if name in sessions:
            got = sessions[name].run(None, {"image": x.numpy()})[0]
            line += f"   max |diff| from PyTorch {abs(got - expected).max():.2e}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
