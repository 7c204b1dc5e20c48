"""tools/experiments.py: arms of overrides, paired by seed, shared runs trained once, a report."""

import json
from pathlib import Path

import pytest

from tools import experiments

ARMS = [
    *("--arm", "lr:low", "trainer.lr=1e-4", "--arm", "lr:demo", "trainer.lr=1e-3"),
    *("--arm", "aug:none", "dataset.augment=none", "--arm", "aug:flip", "dataset.augment=flip"),
]


@pytest.fixture
def fake_runs(tmp_path, monkeypatch):
    """Train/test subprocesses replaced by one that writes a results file (mIoU from lr, seed)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("engine.loaders.ensure_demo_data", lambda cfg: None)
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        args = dict(a.split("=", 1) for a in command[2:] if "=" in a)
        if "test_" in command[1]:
            seed = int(args["dataset.seed"])
            miou = (0.2 if args.get("trainer.lr") == "1e-4" else 0.6) + seed / 1000
            out = Path(args["output.results_dir"]) / "dasnet.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            metrics = {"precision": 0.5, "recall": 0.5, "dice": miou + 0.1, "miou": miou}
            out.write_text(json.dumps({"overall": metrics}))
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(experiments.subprocess, "run", fake_run)
    return calls


def test_arms_run_per_seed_equal_configs_once_and_the_report_pairs_them(fake_runs, tmp_path):
    argv = [*ARMS, "--seeds", "1", "2", "3", "--epochs", "2", "--jobs", "2", "--device", "cpu"]
    assert experiments.main(argv) == 0
    # lr=1e-3 and augment=none are both the demo config: 3 configs x 3 seeds, train + test each
    assert len(fake_runs) == 18
    train = next(c for c in fake_runs if "trainer.lr=1e-4" in c and "dataset.seed=2" in c)
    assert Path(train[1]).name == "train_dasnet.py" and train[2] == "--demo"
    assert {"trainer.epochs=2", "trainer.early_stopping.patience=2", "trainer.device=cpu"} <= set(
        train
    )
    report = (tmp_path / "docs/experiments.md").read_text()
    assert "| low | 3 |" in report and "| demo | 3 | " in report
    assert "| demo vs low | mIoU | +0.4000 |" in report  # B - A, seed by seed
    assert "Paired t-tests" in report and "python train_dasnet.py --demo" in report


def test_an_unknown_key_stops_before_any_run(fake_runs, capsys):
    argv = ["--arm", "x:a", "model.no_such_key=1", "--arm", "x:b", "trainer.lr=1e-3"]
    assert experiments.main(argv) == 2
    assert fake_runs == [] and "model.no_such_key" in capsys.readouterr().err


def test_a_spent_budget_starts_nothing_and_says_so(fake_runs, tmp_path):
    assert experiments.main([*ARMS, "--seeds", "1", "2", "--budget-minutes", "0"]) == 2
    assert fake_runs == []
    assert "not started: --budget-minutes" in (tmp_path / "docs/experiments.md").read_text()
