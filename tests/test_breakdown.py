"""The test split's breakdowns (engine/breakdown.py) and test.mode in engine/evaluate.test."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from engine import evaluate
from engine.breakdown import SIZE_BINS, ImageRecords, by_size, size_bin, sweep
from engine.checkpoint import save_checkpoint
from engine.config import ConfigError, load_config
from engine.evaluate import results_path
from engine.loaders import make_dataset
from engine.metrics import METRICS, per_image_scores
from models import build_model

MODEL = ["model.width=8", "model.stages=3"]  # a 3-stage ThinDyUNet: sides multiples of 8


def tiny_config(root: Path, out: Path, *overrides: str):
    return load_config(
        "thindyunet",
        overrides=[
            f"dataset.root={root}",
            f"output.run_dir={out / 'run'}",
            f"output.results_dir={out / 'results'}",
            "dataset.max_samples=null",
            "dataset.val_max_samples=null",
            "dataset.test_max_samples=null",
            "test.latency=false",
            "test.optimize=false",
            *MODEL,
            *overrides,
        ],
        demo=True,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 3-stage ThinDyUNet whose head is biased so that it predicts some pixels and not others."""
    torch.manual_seed(0)
    model = build_model("thindyunet", width=8, stages=3)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    return save_checkpoint(
        path,
        {
            "model_name": "thindyunet",
            "model_kwargs": {"width": 8, "stages": 3},
            "model": model.state_dict(),
            "epoch": 1,
        },
    )


def run_test(root, out, checkpoint, *overrides):
    cfg = tiny_config(root, out, f"test.checkpoint={checkpoint}", *overrides)
    return cfg, evaluate.test(cfg)


def test_size_bins_split_the_area_fraction_at_01_1_and_5_percent():
    assert [name for name, _, _ in SIZE_BINS] == ["tiny", "small", "medium", "large"]
    assert size_bin(0.0) == "empty"
    assert size_bin(0.0009) == "tiny" and size_bin(0.001) == "small"
    assert size_bin(0.0099) == "small" and size_bin(0.01) == "medium"
    assert size_bin(0.0499) == "medium" and size_bin(0.05) == "large" and size_bin(1.0) == "large"


def test_empty_frames_count_their_false_positives():
    records = ImageRecords([0.5], 0.5)
    logits = torch.full((3, 1, 4, 4), -9.0)
    logits[1, 0, 0, 0] = 9.0  # one false pixel on the second empty frame
    masks = torch.zeros(3, 1, 4, 4)
    masks[2, 0, :2, :2] = 1  # a UAV on a quarter of the third frame
    logits[2, 0, :2, :2] = 9.0
    info = [
        dict(file=f"f{i}", modality="visible", sequence="s", height=4, width=4, area=a)
        for i, a in enumerate([0.0, 0.0, 0.25])
    ]
    records.add(logits, masks, info)
    sizes = by_size(records)
    assert sizes["empty"]["images"] == 2 and sizes["empty"]["false_positive_rate"] == 0.5
    assert sizes["large"]["images"] == 1 and sizes["large"]["miou"] == 1.0
    assert sizes["tiny"]["images"] == 0 and math.isnan(sizes["tiny"]["miou"])


def test_the_sweep_scores_every_threshold_in_one_pass():
    torch.manual_seed(0)
    logits, masks = torch.randn(4, 1, 8, 8), (torch.rand(4, 1, 8, 8) > 0.7).float()
    records = ImageRecords([0.2, 0.5, 0.8], 0.5)
    info = [dict(file="f", modality="visible", sequence="s", height=8, width=8, area=0.3)] * 4
    records.add(logits, masks, info)
    for row in sweep(records):
        scores = per_image_scores(logits, masks, row["threshold"])
        for name in METRICS:
            assert row[name] == pytest.approx(scores[name].double().mean().item(), abs=1e-12)


def test_resize_results_are_the_paper_metrics_of_a_plain_loop(tiny_root, tmp_path, checkpoint):
    # The paper's path, written out by hand: the dataset's resized batch, one forward, the
    # per-image metrics averaged. test.mode=resize must give exactly these numbers.
    cfg, results = run_test(tiny_root, tmp_path, checkpoint)
    model = build_model("thindyunet", width=8, stages=3)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    model.eval()
    dataset = make_dataset(cfg, "test")
    scores = {m: [] for m in METRICS}
    with torch.inference_mode():
        for i in range(len(dataset)):
            item = dataset[i]
            s = per_image_scores(model(item["image"][None]), item["mask"][None], 0.5)
            for m in METRICS:
                scores[m].append(s[m].item())
    for m in METRICS:
        assert results["overall"][m] == pytest.approx(sum(scores[m]) / len(scores[m]), abs=1e-12)
    assert results["protocol"]["mode"] == "resize"
    assert results_path(cfg).name == "thindyunet.json"


@pytest.mark.parametrize("mode", ["resize", "pad", "slide"])
def test_results_hold_every_breakdown_and_a_csv_row_per_image(
    tiny_root, tmp_path, checkpoint, mode
):
    overrides = [f"test.mode={mode}", "test.save_predictions=true"]
    if mode == "slide":
        overrides += ["test.tile=[64,64]", "test.stride=[32,32]"]
    cfg, results = run_test(tiny_root, tmp_path, checkpoint, *overrides)
    path = results_path(cfg)
    assert path.name == ("thindyunet.json" if mode == "resize" else f"thindyunet_{mode}.json")
    saved = json.loads(path.read_text())
    n = saved["overall"]["images"]
    assert saved["protocol"]["mode"] == mode
    assert sum(b["images"] for b in saved["sizes"].values()) == n
    assert sum(s["images"] for s in saved["sequences"].values()) == n
    row = next(r for r in saved["threshold_sweep"]["test"] if r["threshold"] == 0.5)
    for m in METRICS:
        assert row[m] == pytest.approx(saved["overall"][m], abs=1e-12)
    chosen = saved["threshold_sweep"]["chosen"]
    assert chosen["chosen_on"] == "val" and chosen["threshold"] in cfg.test.thresholds
    with open(saved["per_image_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n
    assert {r["modality"] for r in rows} == {"visible", "infrared"}
    assert {(r["height"], r["width"]) for r in rows} == {("90", "160"), ("64", "80")}
    pngs = sorted(Path(saved["predictions"]).rglob("*.png"))
    assert len(pngs) == n
    from PIL import Image

    sizes = {Image.open(p).size for p in pngs}
    assert sizes == ({(128, 128)} if mode == "resize" else {(160, 90), (80, 64)})


def test_slide_with_one_whole_frame_tile_scores_as_pad(tiny_root, tmp_path, checkpoint):
    # visible frames are 90x160, padded to 96x160: one tile of that size is the whole frame
    visible = "dataset.modality=visible"
    _, pad = run_test(tiny_root, tmp_path / "pad", checkpoint, "test.mode=pad", visible)
    _, slide = run_test(
        tiny_root, tmp_path / "s", checkpoint, "test.mode=slide", "test.tile=[96,160]", visible
    )
    assert slide["overall"] == pad["overall"]


@pytest.mark.parametrize(
    "overrides, expect",
    [
        (["test.mode=slide", "test.tile=[60,64]"], "'test.tile' = [60, 64]: the model needs"),
        (["test.mode=slide", "test.tile=[64,64]", "test.stride=[96,8]"], "'test.stride'"),
        (["test.mode=slide", "test.tile=[128,128]", "test.padding=none"], "larger than the frame"),
        (["test.mode=pad", "test.padding=none"], "'test.padding'"),
        (["test.tile=[64,64]"], "applies only to test.mode=slide"),
        (["test.mode=zoom"], "test.mode"),
    ],
)
def test_a_mode_that_cannot_work_is_refused_by_key_and_writes_nothing(
    tiny_root, tmp_path, checkpoint, overrides, expect
):
    with pytest.raises(ConfigError, match=expect.replace("[", r"\[").replace("]", r"\]")):
        run_test(tiny_root, tmp_path, checkpoint, *overrides)
    assert not (tmp_path / "results").exists()
