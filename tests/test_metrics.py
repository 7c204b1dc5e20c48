"""The paper's per-image metrics (SPEC section 6) on hand-made masks."""

import math

import pytest
import segmentation_models_pytorch as smp
import torch

from engine.metrics import DiceTotals, MetricTotals, per_image_scores

EPS = 1e-6


def logits_of(pred: list[list[int]]) -> torch.Tensor:
    """Logits whose sigmoid is above 0.5 exactly where ``pred`` is 1."""
    p = torch.tensor(pred, dtype=torch.float32)
    return (p * 2 - 1)[None, None] * 5


def mask_of(gt: list[list[int]]) -> torch.Tensor:
    return torch.tensor(gt, dtype=torch.float32)[None, None]


def paper(tp: int, fp: int, fn: int) -> dict[str, float]:
    """The paper's formulas with its 1e-6 above and below."""
    return {
        "precision": (tp + EPS) / (tp + fp + EPS),
        "recall": (tp + EPS) / (tp + fn + EPS),
        "dice": (2 * tp + EPS) / (2 * tp + fp + fn + EPS),
        "miou": (tp + EPS) / (tp + fp + fn + EPS),
    }


CASES = {
    # name: prediction, ground truth, (tp, fp, fn), hand-computed values
    "partial overlap": (
        [[1, 1, 0], [0, 0, 0]],
        [[1, 0, 0], [1, 0, 0]],
        (1, 1, 1),
        {"precision": 0.5, "recall": 0.5, "dice": 0.5, "miou": 1 / 3},
    ),
    "empty ground truth, empty prediction": (
        [[0, 0], [0, 0]],
        [[0, 0], [0, 0]],
        (0, 0, 0),
        {"precision": 1, "recall": 1, "dice": 1, "miou": 1},
    ),
    "empty ground truth, false alarm": (
        [[1, 0], [0, 0]],
        [[0, 0], [0, 0]],
        (0, 1, 0),
        {"precision": 0, "recall": 1, "dice": 0, "miou": 0},
    ),
    "missed target, empty prediction": (
        [[0, 0], [0, 0]],
        [[0, 1], [1, 0]],
        (0, 0, 2),
        {"precision": 1, "recall": 0, "dice": 0, "miou": 0},
    ),
    "perfect": (
        [[0, 1], [1, 1]],
        [[0, 1], [1, 1]],
        (3, 0, 0),
        {"precision": 1, "recall": 1, "dice": 1, "miou": 1},
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_per_image_metrics_equal_hand_computed_and_the_papers_eps_formulas(case):
    pred, gt, counts, expected = CASES[case]
    scores = per_image_scores(logits_of(pred), mask_of(gt))
    for name, value in expected.items():
        assert scores[name].item() == pytest.approx(value, abs=1e-6), name
        assert scores[name].item() == pytest.approx(paper(*counts)[name], abs=1e-5), name


def test_threshold_is_applied_to_the_sigmoid():
    logits = torch.tensor([[[[0.1, -0.1]]]])  # sigmoid 0.525 and 0.475
    mask = torch.tensor([[[[1.0, 1.0]]]])
    assert per_image_scores(logits, mask, 0.5)["recall"].item() == pytest.approx(0.5)
    assert per_image_scores(logits, mask, 0.51)["recall"].item() == pytest.approx(0.5)
    assert per_image_scores(logits, mask, 0.53)["recall"].item() == pytest.approx(0.0)


def test_split_means_equal_smp_micro_imagewise_and_split_per_modality():
    torch.manual_seed(0)
    logits = torch.randn(6, 1, 16, 16) * 3
    masks = (torch.rand(6, 1, 16, 16) > 0.7).float()
    masks[1] = 0  # an empty ground truth
    totals = MetricTotals(["visible", "infrared"])
    groups = ["visible", "infrared", "visible", "visible", "infrared", "infrared"]
    totals.update(logits[:4], masks[:4], groups[:4], 0.5)
    totals.update(logits[4:], masks[4:], groups[4:], 0.5)
    tp, fp, fn, tn = smp.metrics.get_stats(
        torch.sigmoid(logits), masks.long(), mode="binary", threshold=0.5
    )
    overall = totals.overall()
    assert overall["images"] == 6
    for name, fn_ in [
        ("precision", smp.metrics.precision),
        ("recall", smp.metrics.recall),
        ("dice", smp.metrics.f1_score),
        ("miou", smp.metrics.iou_score),
    ]:
        ref = fn_(tp, fp, fn, tn, reduction="micro-imagewise", zero_division=1.0).item()
        assert overall[name] == pytest.approx(ref, abs=1e-6)
        vis = [i for i, g in enumerate(groups) if g == "visible"]
        ref_vis = fn_(
            tp[vis], fp[vis], fn[vis], tn[vis], reduction="micro-imagewise", zero_division=1.0
        ).item()
        assert totals.by_group()["visible"][name] == pytest.approx(ref_vis, abs=1e-6)


def test_dataset_dice_loss_does_not_depend_on_batching_and_matches_smp_on_one_batch():
    torch.manual_seed(1)
    logits, masks = torch.randn(8, 1, 8, 8), (torch.rand(8, 1, 8, 8) > 0.8).float()
    whole, halves = DiceTotals(), DiceTotals()
    whole.update(logits, masks)
    halves.update(logits[:3], masks[:3])
    halves.update(logits[3:], masks[3:])
    ref = smp.losses.DiceLoss("binary", from_logits=True)(logits, masks).item()
    assert whole.loss() == pytest.approx(ref, abs=1e-6)
    assert halves.loss() == pytest.approx(ref, abs=1e-6)
    empty = DiceTotals()
    empty.update(logits, torch.zeros_like(masks))
    assert empty.loss() == 0.0 and not math.isnan(empty.loss())
