"""Training loss: smp's binary Dice loss on logits, plus 0.4 x each auxiliary head's (SPEC 5)."""

from __future__ import annotations

from segmentation_models_pytorch.losses import DiceLoss
from torch import Tensor, nn


class SegmentationLoss(nn.Module):
    """L(main) + aux_weight * sum_i L(aux_i) for deep supervision, L(main) otherwise."""

    def __init__(self, aux_weight: float = 0.4) -> None:
        super().__init__()
        self.dice = DiceLoss(mode="binary", from_logits=True)
        self.aux_weight = aux_weight

    def forward(self, output: Tensor | tuple[Tensor, list[Tensor]], target: Tensor) -> Tensor:
        if isinstance(output, tuple):
            main, aux = output
            return self.dice(main, target) + self.aux_weight * sum(
                self.dice(a, target) for a in aux
            )
        return self.dice(output, target)


def main_logits(output: Tensor | tuple[Tensor, list[Tensor]]) -> Tensor:
    """The main prediction of a model's output, with or without deep supervision."""
    return output[0] if isinstance(output, tuple) else output
