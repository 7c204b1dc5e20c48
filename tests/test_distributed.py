"""torchrun with 2 CPU processes (gloo): same weights on both ranks, one checkpoint, and test
metrics equal to a single process's on the same data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from .conftest import HANG_GUARD_S, REPO, run, tiny_args


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *args,
    ]
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )


@pytest.mark.slow
def test_two_processes_train_identical_weights_and_write_one_checkpoint(tiny_root, tmp_path):
    args = tiny_args(tiny_root, tmp_path, "trainer.epochs=1")[1:]  # the worker adds the demo
    done = torchrun(str(REPO / "tests" / "ddp_worker.py"), str(tmp_path), *args)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt", "last.pt"]
    assert not list(run_dir.glob(".*.tmp"))
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 2  # header + 1 epoch
    last = torch.load(run_dir / "last.pt", weights_only=True)
    for key, value in rank0.items():
        assert torch.equal(last["model"][key], value), key


@pytest.mark.slow
def test_parallel_test_metrics_equal_a_single_process(tiny_root, tmp_path):
    train = run("train_thindyunet.py", *tiny_args(tiny_root, tmp_path, "trainer.epochs=1"))
    assert train.returncode == 0, train.stderr[-3000:]
    single = run("test_thindyunet.py", *tiny_args(tiny_root, tmp_path))
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads((tmp_path / "results" / "thindyunet.json").read_text())
    # An odd-sized split (7 images): no rank may count an image twice.
    args = tiny_args(
        tiny_root,
        tmp_path,
        "dataset.test_max_samples=7",
        "output.results_dir=" + str(tmp_path / "par"),
    )
    parallel = torchrun(str(REPO / "test_thindyunet.py"), *args)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    args[args.index("output.results_dir=" + str(tmp_path / "par"))] = "output.results_dir=" + str(
        tmp_path / "seven"
    )
    seven = run("test_thindyunet.py", *args)
    assert seven.returncode == 0, seven.stderr[-3000:]
    par = json.loads((tmp_path / "par" / "thindyunet.json").read_text())
    ref = json.loads((tmp_path / "seven" / "thindyunet.json").read_text())
    assert par["processes"] == 2 and ref["processes"] == 1 and par["overall"]["images"] == 7
    for key in ("precision", "recall", "dice", "miou"):
        assert par["overall"][key] == pytest.approx(ref["overall"][key], abs=1e-9)
    # the breakdowns gather every process's images once
    assert {k: v["images"] for k, v in par["sizes"].items()} == {
        k: v["images"] for k, v in ref["sizes"].items()
    }
    assert len((tmp_path / "par" / "thindyunet_images.csv").read_text().splitlines()) == 1 + 7
    assert one["overall"]["images"] == 8
