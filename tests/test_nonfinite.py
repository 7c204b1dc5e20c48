"""A non-finite loss stops the run naming epoch and step, or is skipped when asked; never `best`."""

from __future__ import annotations

import pytest
import torch

import engine.train as train_module
from engine.config import load_config
from engine.losses import SegmentationLoss

from .conftest import tiny_args


class NanAtStep(SegmentationLoss):
    """The real loss, except NaN at the given training call."""

    calls = 0

    def __init__(self, aux_weight: float, bad_call: int = 2) -> None:
        super().__init__(aux_weight)
        self.bad_call = bad_call

    def forward(self, output, target):
        loss = super().forward(output, target)
        if torch.is_grad_enabled():
            NanAtStep.calls += 1
            if NanAtStep.calls == self.bad_call:
                return loss * float("nan")
        return loss


def config(root, out, *overrides):
    args = tiny_args(root, out, "trainer.epochs=1", *overrides)
    return load_config("thindyunet", overrides=[a for a in args if "=" in a], demo=True)


def test_a_nan_loss_stops_training_naming_epoch_and_step(tiny_root, tmp_path, monkeypatch):
    NanAtStep.calls = 0
    monkeypatch.setattr(train_module, "SegmentationLoss", NanAtStep)
    with pytest.raises(train_module.TrainingError, match=r"epoch 1, step 2"):
        train_module.train(config(tiny_root, tmp_path))
    assert not (tmp_path / "run" / "best.pt").exists()


def test_with_non_finite_skip_the_step_is_skipped_and_training_finishes(
    tiny_root, tmp_path, monkeypatch
):
    NanAtStep.calls = 0
    monkeypatch.setattr(train_module, "SegmentationLoss", NanAtStep)
    summary = train_module.train(config(tiny_root, tmp_path, "trainer.non_finite=skip"))
    assert summary["epochs"] == 1
    for value in summary["model"].state_dict().values():
        assert torch.isfinite(value.float()).all()
    assert (tmp_path / "run" / "best.pt").exists()
