"""The user's main job through the real entry points: train_dasnet.py, test_dasnet.py, report.py."""

from __future__ import annotations

import json

import pytest
import torch

from data import UAVSegDataset
from engine.checkpoint import load_checkpoint
from engine.metrics import MetricTotals

from .conftest import run, script_args


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    """DAS-Net trained and tested on demo data with the demo settings."""
    out = tmp_path_factory.mktemp("e2e")
    args = script_args(demo_root, out)
    train = run("train_dasnet.py", *args)
    assert train.returncode == 0, train.stderr[-3000:]
    test = run("test_dasnet.py", *args)
    assert test.returncode == 0, test.stderr[-3000:]
    return out, train, test


def trivial_miou(demo_root, value: float) -> float:
    """Test mIoU of a model that predicts ``value`` (0: nothing, 1: everything) everywhere."""
    data = UAVSegDataset(demo_root, "test", image_size=128)
    totals = MetricTotals(["visible", "infrared"])
    for i in range(len(data)):
        item = data[i]
        logits = torch.full_like(item["mask"], 10.0 if value else -10.0)[None]
        totals.update(logits, item["mask"][None], [item["modality"]], 0.5)
    return totals.overall()["miou"]


@pytest.mark.slow
def test_dasnet_learns_the_demo_data_far_beyond_trivial_predictions(trained, demo_root):
    out, _, test = trained
    results = json.loads((out / "results" / "dasnet.json").read_text())
    miou = results["overall"]["miou"]
    nothing, everything = trivial_miou(demo_root, 0), trivial_miou(demo_root, 1)
    assert nothing < 0.3 and everything < 0.05  # what chance gets on the same test split
    assert miou >= 0.5, f"test mIoU {miou:.3f} (predict nothing: {nothing:.3f})"
    assert results["params"] == 1_657_672
    assert set(results["modalities"]) == {"visible", "infrared"}
    assert results["overall"]["images"] == sum(m["images"] for m in results["modalities"].values())
    assert results["latency"]["ms"] > 0 and results["latency"]["fps"] == pytest.approx(
        1000 / results["latency"]["ms"]
    )
    assert "| dasnet | 1.66 |" in test.stdout  # the model's row of the paper's table


@pytest.mark.slow
def test_training_writes_checkpoints_logs_and_a_loadable_best(trained):
    out, _, _ = trained
    run_dir = out / "run"
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_loss,precision,recall,dice,miou")
    best = load_checkpoint(run_dir / "best.pt")
    last = load_checkpoint(run_dir / "last.pt")
    assert best["model_name"] == "dasnet" and last["finished"]
    assert last["epoch"] == len(rows) - 1
    val_losses = [float(r.split(",")[2]) for r in rows[1:]]
    assert best["epoch"] == 1 + val_losses.index(min(val_losses))  # lowest validation loss
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0}).Reload()
    assert len(events.Images("val/examples")) == len(rows) - 1  # one picture per epoch
    assert len(events.Scalars("miou")) == len(rows) - 1


@pytest.mark.slow
def test_report_renders_the_tables_from_the_results(trained):
    out, _, _ = trained
    report = run("report.py", "--results", str(out / "results"))
    assert report.returncode == 0, report.stderr
    assert "| DAS-Net | ours | 1.66 |" in report.stdout
    assert "| DAS-Net | paper | 1.66 | 0.8408 | 0.7700 | 0.7506 | 0.6786 | 9.41 | 106.3 |" in (
        report.stdout
    )
    assert "Ablation" in report.stdout
