"""Runs fail before the work, never lose another run's work, and resume honestly.

Config keys refused by name where they are read; the test script checks its results folder and
keys before the first image; write failures are one line naming the path; Ctrl-C is one line;
one run folder holds one live run (run.lock); a resume applies changed settings and says so.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import engine.checkpoint
import engine.evaluate
import engine.train
from engine import run_script
from engine.checkpoint import WriteError, atomic_write_text, load_checkpoint, save_checkpoint
from engine.cli import parse_args
from engine.runfolder import LOCK_NAME, RunFolderError, RunLock
from tools import export

from .conftest import HANG_GUARD_S, run, start, tiny_args
from .test_tools import make_checkpoint


def script(model: str, train: bool, args: list[str], capsys) -> tuple[int, str]:
    """A script's entry in this process: (exit code, stderr)."""
    code = run_script(model, train, args)
    return code, capsys.readouterr().err


def one_line(err: str, start: str = "error:") -> str:
    """The single ``start`` line of ``err`` (log lines aside), and no traceback."""
    lines = [line for line in err.splitlines() if line.startswith(start)]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def unwritable(tmp_path: Path) -> Path:
    """A folder no one can create, root included: its parent is a file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    return blocker / "out"


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.weight_decay=-1", "trainer.weight_decay"),
        ("trainer.device=cuda:x", "trainer.device"),
        ("model.stages=0", "model.stages"),
        ("dataset.prefetch_factor=0", "dataset.prefetch_factor"),
        ("trainer.max_steps_per_epoch=0", "trainer.max_steps_per_epoch"),
        ("model.in_channels=1", "model.in_channels"),  # the frames are RGB
        ("test.latency_size=[128]", "test.latency_size"),
        *([] if torch.cuda.is_available() else [("trainer.device=cuda", "trainer.device")]),
    ],
)
def test_each_bad_key_is_refused_by_name_before_a_run_folder_exists(
    tiny_root, tmp_path, capsys, override, key
):
    code, err = script("thindyunet", True, tiny_args(tiny_root, tmp_path, override), capsys)
    assert code == 2, err[-2000:]
    assert f"'{key}'" in one_line(err)  # log lines (the config's differences) may precede it
    assert not (tmp_path / "run").exists()


def test_a_run_that_fails_on_a_missing_dataset_leaves_no_folder(tmp_path, capsys):
    args = tiny_args(tmp_path / "nowhere", tmp_path, "dataset.demo=false")
    args[args.index(f"output.run_dir={tmp_path / 'run'}")] = f"output.run_dir={tmp_path}/a/b/run"
    code, err = script("thindyunet", True, args, capsys)
    assert code == 2 and "nowhere" in err
    assert not (tmp_path / "a").exists()


def test_resume_does_not_swallow_the_next_override():
    argv = ["--resume", "trainer.epochs=5", "trainer.lr=1e-3", "--demo", "dataset.seed=1"]
    args, overrides = parse_args("train_x.py", "thindyunet", True, argv)
    assert args.demo and args.resume is True
    assert overrides == [
        "trainer.epochs=5",
        "trainer.lr=1e-3",
        "dataset.seed=1",
        "trainer.resume=true",
    ]
    assert not any(o.startswith("trainer.resume_from") for o in overrides)
    _, overrides = parse_args("train_x.py", "thindyunet", True, ["--resume", "r/last.pt"])
    assert overrides == ["trainer.resume_from=r/last.pt"]


@pytest.fixture
def thin_run(tmp_path) -> Path:
    """A run folder holding an untrained thindyunet best.pt (trained-at 128x128)."""
    (tmp_path / "run").mkdir()
    return make_checkpoint(tmp_path / "run" / "best.pt")


def test_the_test_script_refuses_an_unwritable_results_folder_before_the_first_image(
    tiny_root, tmp_path, thin_run, capsys, monkeypatch
):
    results = unwritable(tmp_path)
    monkeypatch.setattr(engine.evaluate, "run_split", lambda *a: pytest.fail("scored images"))
    args = tiny_args(tiny_root, tmp_path, f"output.results_dir={results}")
    code, err = script("thindyunet", False, args, capsys)
    assert code == 2 and str(results) in one_line(err)


def test_a_full_disk_is_one_error_line_naming_the_file_and_keeps_the_old_one(
    tiny_root, tmp_path, thin_run, capsys, monkeypatch
):
    old = atomic_write_text(tmp_path / "results" / "thindyunet.json", "{}")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine.checkpoint.os, "fsync", full)
    with pytest.raises(WriteError, match="No space left"):
        atomic_write_text(tmp_path / "x.txt", "data")
    assert not list(tmp_path.glob(".x.txt*"))
    code, err = script("thindyunet", False, tiny_args(tiny_root, tmp_path), capsys)
    assert code == 2
    # the per-image CSV is written before the JSON, so it is the file the disk refuses first
    table = old.with_name("thindyunet_images.csv")
    assert one_line(err) == f"error: cannot write '{table}': No space left on device"
    assert old.read_text() == "{}" and not list(old.parent.glob(".*.tmp"))


@pytest.mark.parametrize("train", [True, False])
def test_ctrl_c_during_setup_or_testing_is_one_line(
    tiny_root, tmp_path, thin_run, capsys, monkeypatch, train
):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    target = (engine.train, "make_dataset") if train else (engine.evaluate, "evaluate_split")
    monkeypatch.setattr(*target, interrupt)
    args = tiny_args(tiny_root, tmp_path, "trainer.overwrite=true")
    code, err = script("thindyunet", train, args, capsys)
    assert code == 130 and "Ctrl-C" in one_line(err, "interrupted:")


def test_export_to_an_unwritable_folder_is_one_error_line(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "thin.pt")
    out = unwritable(tmp_path) / "m.onnx"
    code = export.main(["--checkpoint", str(ckpt), "--out", str(out)])
    assert code == 2 and str(out.parent) in one_line(capsys.readouterr().err)


# -- one run folder, one run -------------------------------------------------------------------


def test_a_lock_held_by_a_live_process_is_refused_naming_folder_and_pid(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(f"{other.pid} {os.uname().nodename}\n")
        with pytest.raises(RunFolderError, match=rf"'{tmp_path}'.*process {other.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        other.kill()
        other.wait()
    # Now dead: the lock is stale, taken over and released.
    lock = RunLock(tmp_path)
    lock.acquire()
    assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.slow
def test_a_second_training_into_a_live_runs_folder_is_refused(tiny_root, tmp_path):
    args = tiny_args(tiny_root, tmp_path, "trainer.epochs=100")
    first = start(args)
    lock = tmp_path / "run" / LOCK_NAME
    deadline = time.monotonic() + HANG_GUARD_S
    while not (tmp_path / "run" / "config.yaml").exists():
        assert first.poll() is None, first.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert lock.read_text().split()[0] == str(first.pid)
    for extra in ([], ["trainer.overwrite=true"]):
        second = run("train_thindyunet.py", *args, *extra)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"'{tmp_path / 'run'}'" in second.stderr and f"process {first.pid}" in second.stderr
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=HANG_GUARD_S)
    assert not lock.exists()  # released on exit
    assert load_checkpoint(tmp_path / "run" / "last.pt")["model_name"] == "thindyunet"


@pytest.mark.slow
def test_a_stale_lock_of_a_killed_run_is_taken_over_with_a_message(tiny_root, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_NAME).write_text(f"{dead.pid} {os.uname().nodename}\n")
    done = run("train_thindyunet.py", *tiny_args(tiny_root, tmp_path, "trainer.epochs=1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stale lock" in done.stderr and str(dead.pid) in done.stderr
    assert not (tmp_path / "run" / LOCK_NAME).exists()


# -- resume honesty ------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_applies_a_changed_lr_and_extends_a_finished_run(tiny_root, tmp_path, caplog):
    args = tiny_args(tiny_root, tmp_path, "trainer.epochs=1", "trainer.lr=1e-3")
    assert run("train_thindyunet.py", *args).returncode == 0
    run_dir = tmp_path / "run"
    done = run("train_thindyunet.py", *args, "--resume")  # finished: say how to go on
    assert done.returncode == 0 and "trainer.epochs=" in done.stderr, done.stderr[-2000:]

    more = run("train_thindyunet.py", *args, "--resume", "trainer.epochs=2", "trainer.lr=5e-4")
    assert more.returncode == 0, more.stderr[-2000:]
    assert "trainer.lr 0.001 -> 0.0005" in more.stderr
    last = load_checkpoint(run_dir / "last.pt")
    assert last["epoch"] == 2 and last["finished"]
    assert [g["lr"] for g in last["optimizer"]["param_groups"]] == [5e-4]
    assert last["config"]["trainer"]["lr"] == 5e-4  # what is recorded is what was used
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[7] for r in rows[1:]] == ["0.001", "0.0005"]


def test_a_weights_only_checkpoint_is_named_when_resumed_from(tiny_root, tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "best.pt", {"model_name": "thindyunet", "model": {}})
    args = tiny_args(tiny_root, tmp_path, "trainer.epochs=1")
    code, err = script("thindyunet", True, [*args, "--resume", str(ckpt)], capsys)
    assert code == 2 and f"'{ckpt}' holds only weights" in err, err
    assert not (tmp_path / "run").exists()
