"""Reproducibility (issue 20): the same batch, forward and backward again from the same weights,
gives bit-identical gradients at 2 threads, for the plain model and its fast training twin.

ThinDyUNet at full width on 128x128 batches of 4 (the demo's training shape) is where the old
fast dynamic convolution (models/fast/dynamic_conv.py, once in every training run) made the
deepest encoder stage's gradients differ in about half of the repetitions on an AVX-512 CPU;
DAS-Net adds the fused attention gate that training still uses.
"""

from __future__ import annotations

import pytest
import torch

from engine.losses import SegmentationLoss
from models import build_model, optimize_for_training

REPEATS = 12


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("name", "fused"), [("thindyunet", False), ("thindyunet", True), ("dasnet", True)]
)
def test_repeated_backward_gives_bit_identical_gradients(
    two_threads, name: str, fused: bool
) -> None:
    torch.manual_seed(0)
    model = build_model(name).train()
    if fused:
        optimize_for_training(model)
    x = torch.rand(4, 3, 128, 128)
    y = (torch.rand(4, 1, 128, 128) > 0.9).float()
    loss_fn = SegmentationLoss()

    def gradients() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        return [p.grad.clone() for p in model.parameters()]

    first = gradients()
    names = [n for n, _ in model.named_parameters()]
    for i in range(REPEATS):
        differ = [n for n, a, b in zip(names, first, gradients(), strict=True) if not a.equal(b)]
        assert differ == [], f"repetition {i + 1}: {len(differ)} gradients differ, {differ[-3:]}"
