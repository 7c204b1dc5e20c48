"""models/fast/dyunet.py: FastDyUNet (fused gate, folded and shared heads) against the plain
DyUNet it replaces, in training: FP32 outputs within 1e-4, FP64 gradients within 1e-9."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from models import build_model, optimize_for_training, to_channels_last
from models.fast.dyunet import head_conv

from .test_dyunet import same_training_pass

DYNAMIC = ("dasnet", "thindyunet", "fulldyunet", "deepsupdyunet")


@pytest.mark.parametrize("name", DYNAMIC)
def test_fast_training_equals_the_plain_model(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, width=16, stages=4).train()
    fast = optimize_for_training(copy.deepcopy(model))
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        out, fast_out = model(x), fast(x)
    outs = [out[0], *out[1]] if isinstance(out, tuple) else [out]
    fast_outs = [fast_out[0], *fast_out[1]] if isinstance(fast_out, tuple) else [fast_out]
    assert len(outs) == len(fast_outs)
    for a, b in zip(outs, fast_outs, strict=True):
        assert (a - b).abs().max().item() <= 1e-4
    model, fast, x = model.double(), fast.double(), x.double()
    (main, aux), (f_main, f_aux) = (
        o if isinstance(o, tuple) else (o, []) for o in (model(x), fast(x))
    )
    (main.sum() + sum(a.sum() for a in aux)).backward()
    (f_main.sum() + sum(a.sum() for a in f_aux)).backward()
    for (key, p), q in zip(model.named_parameters(), fast.parameters(), strict=True):
        diff = (p.grad - q.grad).abs().max().item()
        assert diff <= 1e-9 * max(1.0, p.grad.abs().max().item()), f"{key}: {diff}"


def test_optimize_for_training_keeps_the_parameter_objects_and_keys() -> None:
    model = build_model("dasnet", width=8, stages=3)
    params, keys = list(model.parameters()), list(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters())
    assert optimize_for_training(model) is model
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    assert list(model.state_dict()) == keys
    main, aux = model.train()(torch.rand(2, 3, 16, 16))
    (main.sum() + sum(a.sum() for a in aux)).backward()
    optimizer.step()  # the optimizer built before steps the same tensors
    assert type(model).__name__ == "FastDyUNet"


def test_head_with_the_last_aux_head_in_one_product_equals_two_convs() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(1, 8, 3, 3, dtype=torch.float64), torch.randn(1, dtype=torch.float64)
    aw, ab = torch.randn(1, 8, 1, 1, dtype=torch.float64), torch.randn(1, dtype=torch.float64)
    logits, aux = head_conv(x, w, b, extra=(aw, ab))
    assert torch.allclose(logits, F.conv2d(x, w, b, padding=1))
    assert torch.allclose(aux, F.conv2d(x, aw, ab))
    (logits.sum() + 2 * aux.sum()).backward()
    x2 = x.detach().requires_grad_()
    (F.conv2d(x2, w, b, padding=1).sum() + 2 * F.conv2d(x2, aw, ab).sum()).backward()
    assert torch.allclose(x.grad, x2.grad)


def test_channels_last_training_equals_the_plain_layout() -> None:
    """to_channels_last (also behind trainer.channels_last) changes speed, not the math."""
    torch.manual_seed(0)
    model = build_model("dasnet").double().train()
    fast = to_channels_last(copy.deepcopy(model))
    assert fast.encoder[1][0].weight.permute(0, 1, 3, 4, 2).is_contiguous()
    x = torch.rand(2, 3, 128, 128, dtype=torch.float64)
    fast_main = same_training_pass(model, fast, x, grad_rtol=1e-9, out_atol=1e-9)
    assert fast_main.is_contiguous(memory_format=torch.channels_last)
