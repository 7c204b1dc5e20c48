"""Interruptions cost nothing: SIGKILL + resume equals an unbroken run; SIGTERM leaves `last`."""

from __future__ import annotations

import csv
import signal
import time

import pytest
import torch

from engine.checkpoint import atomic_write, load_checkpoint, save_checkpoint

from .conftest import HANG_GUARD_S, run, start, tiny_args

EPOCHS = ["trainer.epochs=3", "trainer.deterministic=true"]


def weights(path):
    return load_checkpoint(path)["model"]


def wait_for(path, proc, timeout=HANG_GUARD_S):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def unbroken(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("unbroken")
    done = run("train_thindyunet.py", *tiny_args(tiny_root, out, *EPOCHS))
    assert done.returncode == 0, done.stderr[-2000:]
    return out / "run"


@pytest.mark.slow
def test_a_run_killed_after_its_first_checkpoint_and_resumed_equals_an_unbroken_run(
    tiny_root, tmp_path, unbroken
):
    args = tiny_args(tiny_root, tmp_path, *EPOCHS)
    proc = start(args)
    wait_for(tmp_path / "run" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    refused = run("train_thindyunet.py", *args)  # a new run must not clobber the old one
    assert refused.returncode == 2 and "trainer.resume=true" in refused.stderr

    resumed = run("train_thindyunet.py", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run_dir = tmp_path / "run"
    last, ref = load_checkpoint(run_dir / "last.pt"), load_checkpoint(unbroken / "last.pt")
    assert last["epoch"] == ref["epoch"] == 3 and last["finished"]
    assert last["best_epoch"] == ref["best_epoch"]
    for key, value in ref["model"].items():
        assert torch.equal(last["model"][key], value), key
    assert torch.equal(
        weights(run_dir / "best.pt")["head.0.weight"],
        weights(unbroken / "best.pt")["head.0.weight"],
    )
    with open(run_dir / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]


@pytest.mark.slow
def test_sigterm_finishes_the_step_writes_a_loadable_last_and_says_how_to_resume(
    tiny_root, tmp_path, unbroken
):
    args = tiny_args(tiny_root, tmp_path, *EPOCHS)
    proc = start(args)
    wait_for(tmp_path / "run" / "config.yaml", proc)  # written just before the first step
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode != 0
    assert "SIGTERM" in err and "trainer.resume=true" in err
    last = load_checkpoint(tmp_path / "run" / "last.pt")  # weights_only=True inside
    assert not last["finished"]

    resumed = run("train_thindyunet.py", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = load_checkpoint(tmp_path / "run" / "last.pt")
    assert final["finished"] and final["epoch"] == 3
    for key, value in weights(unbroken / "last.pt").items():
        assert torch.equal(final["model"][key], value), key


def test_a_write_interrupted_before_the_rename_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model_name": "old", "model": {}})

    def crash(f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert load_checkpoint(path)["model_name"] == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary file left


def test_overwrite_replaces_a_finished_run_only_when_asked(tiny_root, tmp_path):
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run" / "last.pt", {"model_name": "thindyunet", "model": {}})
    args = tiny_args(tiny_root, tmp_path, "trainer.epochs=1")
    refused = run("train_thindyunet.py", *args)
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    assert load_checkpoint(tmp_path / "run" / "last.pt")["model"] == {}  # untouched
    replaced = run("train_thindyunet.py", *args, "trainer.overwrite=true")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["model_name"] == "thindyunet"
