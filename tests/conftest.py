"""Shared fixtures: one generated demo dataset per session, and running the top-level scripts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A guard against a hung subprocess, not a performance bound: the longest script a test runs (8
# demo epochs of DAS-Net, about 6 minutes on 2 idle cores) gets 10x that, so a loaded CI machine
# is never mistaken for a failure.
HANG_GUARD_S = 3600.0


def start(args: list[str], script: str = "train_thindyunet.py") -> subprocess.Popen:
    """Start a top-level script in the background (to signal or race it), output piped."""
    return subprocess.Popen(
        [sys.executable, str(REPO / script), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The demo dataset the --demo scripts generate (seed 0, default size)."""
    from data import generate_demo_dataset

    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "uav", seed=0)


def script_args(demo_root: Path, out: Path, *overrides: str) -> list[str]:
    """--demo, the session's data and this test's output folders, then ``overrides``."""
    return [
        "--demo",
        f"dataset.root={demo_root}",
        f"output.run_dir={out / 'run'}",
        f"output.results_dir={out / 'results'}",
        *overrides,
    ]


def run(
    script: str, *args: str, timeout: float = HANG_GUARD_S, **kwargs
) -> subprocess.CompletedProcess:
    """Run a top-level script of the repository in a subprocess, capturing its output."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A tiny demo dataset (20 train, 4 val, 8 test images) for fast runs of the scripts."""
    from data import generate_demo_dataset

    return generate_demo_dataset(
        tmp_path_factory.mktemp("tiny") / "uav", seed=1, sequences=8, frames=2, size=160
    )


def tiny_args(root: Path, out: Path, *overrides: str) -> list[str]:
    """A fast thindyunet-sized run on ``root``: all images, batch 4, 2 epochs."""
    return [
        *script_args(root, out),
        "dataset.max_samples=null",
        "dataset.val_max_samples=null",
        "dataset.test_max_samples=null",
        "dataset.batch_size=4",
        "trainer.epochs=2",
        "test.latency=false",
        *overrides,
    ]
