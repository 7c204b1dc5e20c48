"""What each training path buys: DAS-Net training steps, interleaved in one process.

    python benchmarks/train_paths.py [--size 256] [--batch 4] [--repeats 3] [--threads 2]

Times, with benchmark.py's step (AdamW, the loss of engine/losses.py), the straightforward
reference (tests/reference_dasnet.py), the plain model, ``optimize_for_training(model)``, and
the fast dynamic convolutions in training as well (the path dropped from training because its
gradients were not reproducible at 2 threads; BENCHMARKS.md), on the same weights and batch.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmark  # noqa: E402
from engine.latency import interleaved  # noqa: E402
from models import DyConv2d, build_model, optimize_for_training  # noqa: E402
from models.fast import FastDyConv2d  # noqa: E402
from tests.reference_dasnet import reference_from  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = build_model("dasnet").train()
    x = torch.rand(args.batch, 3, args.size, args.size)
    y = (torch.rand(args.batch, 1, args.size, args.size) > 0.9).float()
    fast_dyconv = optimize_for_training(copy.deepcopy(base))
    for m in fast_dyconv.modules():
        if type(m) is DyConv2d:
            m.__class__ = FastDyConv2d
    models = {
        "reference": reference_from(base).train(),
        "plain": copy.deepcopy(base),
        "optimize_for_training": optimize_for_training(copy.deepcopy(base)),
        "+ fast dyconv (dropped)": fast_dyconv,
    }
    step_args = benchmark.parse_args([])
    steps = {k: benchmark.make_train_step(m, x, y, step_args) for k, m in models.items()}
    t = interleaved(steps, torch.device("cpu"), args.repeats, 1)
    for k, v in t.items():
        print(f"{k}: {v * 1e3:.0f} ms/step, {t['reference'] / v:.2f}x the reference's speed")
    return t


if __name__ == "__main__":
    main()
