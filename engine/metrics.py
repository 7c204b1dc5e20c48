"""The paper's per-image metrics (SPEC section 6) and their accumulation over a split.

Per image: precision, recall, Dice and IoU of P = sigmoid(logits) > threshold against the mask,
1 where a denominator is 0 (segmentation_models_pytorch.metrics with zero_division=1); the
table's figures are the means of the per-image values. Sums are kept per modality so one pass
gives the overall and the VL/IR rows, and so that processes can add theirs with one all-reduce.
"""

from __future__ import annotations

from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch
from torch import Tensor

METRICS: tuple[str, ...] = ("precision", "recall", "dice", "miou")
_FUNCS = {
    "precision": smp.metrics.precision,
    "recall": smp.metrics.recall,
    "dice": smp.metrics.f1_score,
    "miou": smp.metrics.iou_score,
}


def per_image_scores(logits: Tensor, masks: Tensor, threshold: float = 0.5) -> dict[str, Tensor]:
    """Each metric per image (shape B) for binary logits and {0, 1} masks of shape Bx1xHxW."""
    probs = torch.sigmoid(logits.detach().float())
    tp, fp, fn, tn = smp.metrics.get_stats(
        probs, masks.detach().long(), mode="binary", threshold=threshold
    )
    return {
        name: fn_(tp, fp, fn, tn, reduction="none", zero_division=1.0).sum(1)
        for name, fn_ in _FUNCS.items()
    }


class DiceTotals:
    """Dice loss over a whole split from summed intersections, independent of batching.

    The same formula as smp's binary DiceLoss (1 - 2 sum(p t) / sum(p + t), 0 without any
    positive pixel), taken over every pixel of the split, so a validation loss does not change
    with the batch size or the number of processes.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)

    def update(self, logits: Tensor, masks: Tensor) -> None:
        probs = torch.sigmoid(logits.detach().float())
        masks = masks.float()
        self.sums += torch.stack(
            [(probs * masks).sum(), (probs + masks).sum(), masks.sum()]
        ).double()

    def loss(self) -> float:
        inter, card, positives = self.sums.tolist()
        if positives == 0:
            return 0.0
        return 1.0 - 2.0 * inter / max(card, 1e-7)


class MetricTotals:
    """Sums of per-image metrics per group (e.g. modality); means overall and per group."""

    def __init__(self, groups: Sequence[str], device: torch.device | str = "cpu") -> None:
        self.groups = list(groups)
        # Row per group: count, then one column per metric; float64 so large splits stay exact.
        self.sums = torch.zeros(
            len(self.groups), 1 + len(METRICS), dtype=torch.float64, device=device
        )

    def update(
        self, logits: Tensor, masks: Tensor, groups: Sequence[str], threshold: float
    ) -> None:
        """Add a batch; ``groups[i]`` names the group of image i."""
        scores = per_image_scores(logits, masks, threshold)
        rows = torch.tensor([self.groups.index(g) for g in groups], device=self.sums.device)
        values = torch.stack([torch.ones_like(scores["miou"])] + [scores[m] for m in METRICS], 1)
        self.sums.index_add_(0, rows, values.to(self.sums))

    def _means(self, row: Tensor) -> dict[str, float]:
        n = int(row[0].item())
        out: dict[str, float] = {"images": n}
        for i, name in enumerate(METRICS, start=1):
            out[name] = row[i].item() / n if n else float("nan")
        return out

    def overall(self) -> dict[str, float]:
        """Means over every image."""
        return self._means(self.sums.sum(0))

    def by_group(self) -> dict[str, dict[str, float]]:
        """Means per group, for the groups that have images."""
        return {g: self._means(self.sums[i]) for i, g in enumerate(self.groups) if self.sums[i, 0]}
