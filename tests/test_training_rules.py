"""The recipe's rules on scripted inputs: deep-supervision loss, LR schedule, early stopping."""

import pytest
import torch
from segmentation_models_pytorch.losses import DiceLoss

from engine.config import load_config
from engine.train import EarlyStopping, make_early_stopping, make_scheduler


def test_deep_supervision_loss_is_main_plus_0_4_times_the_sum_of_the_three_aux_losses():
    from engine.losses import SegmentationLoss

    torch.manual_seed(0)
    target = (torch.rand(2, 1, 16, 16) > 0.8).float()
    main, aux = torch.randn(2, 1, 16, 16), [torch.randn(2, 1, 16, 16) for _ in range(3)]
    dice = DiceLoss("binary", from_logits=True)
    expected = dice(main, target) + 0.4 * (
        dice(aux[0], target) + dice(aux[1], target) + dice(aux[2], target)
    )
    assert SegmentationLoss(0.4)((main, aux), target).item() == pytest.approx(
        expected.item(), abs=1e-6
    )
    assert SegmentationLoss(0.4)(main, target).item() == pytest.approx(dice(main, target).item())


def scripted_lrs(losses, **overrides):
    cfg = load_config(
        "dasnet", overrides=[f"trainer.scheduler.{k}={v}" for k, v in overrides.items()]
    )
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, cfg)
    lrs = []
    for loss in losses:
        sched.step(loss)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def test_lr_halves_after_patience_epochs_without_improvement_then_cools_down():
    # Best at epoch 1; epochs 2..4 are worse: with patience 2 the 3rd bad epoch halves the LR,
    # then 1 epoch of cooldown, then 3 more bad epochs before the next halving.
    lrs = scripted_lrs(
        [1.0, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1], patience=2, cooldown=1, factor=0.5
    )
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_paper_schedule_waits_15_epochs():
    lrs = scripted_lrs([1.0] + [2.0] * 16)
    assert lrs[15] == 1.0 and lrs[16] == 0.5


def test_early_stopping_stops_after_patience_epochs_without_min_delta_improvement():
    stop = EarlyStopping(patience=3, min_delta=0.01)
    # 0.995 improves on 1.0 by less than min_delta: it does not count as an improvement.
    decisions = [stop.step(x) for x in [1.0, 0.995, 0.992, 0.98, 0.975, 0.972, 0.971]]
    assert decisions == [False, False, False, False, False, False, True]
    assert stop.best == 0.98


def test_early_stopping_state_round_trips():
    stop = EarlyStopping(patience=30, min_delta=0.001)
    for x in [0.5, 0.6, 0.7]:
        stop.step(x)
    other = make_early_stopping(load_config("dasnet"))
    other.load_state_dict(stop.state_dict())
    assert (other.best, other.bad_epochs, other.patience) == (0.5, 2, 30)
