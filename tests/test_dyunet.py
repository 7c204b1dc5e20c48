"""models/dyunet.py: the DyUNet family (SPEC sections 2-3), its switches, heads and checkpoints,
and DAS-Net against the independent reference implementation (tests/reference_dasnet.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import models
from models import VARIANTS, build_model, count_parameters

from .reference_dasnet import map_dasnet_key, reference_from

DYNAMIC = ("dasnet", "thindyunet", "fulldyunet", "deepsupdyunet")
DEEP_SUPERVISION = ("dasnet", "deepsupdyunet")
FIXTURE = Path(__file__).parent / "fixtures" / "pre_redesign.pt"


def test_thin_decoder_stage_has_110848_parameters() -> None:
    model = build_model("thindyunet")
    assert count_parameters(model.decoder[0]) == 110_848


@pytest.mark.parametrize("name", DYNAMIC)
@pytest.mark.parametrize("size", [128, 256])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shapes(name: str, size: int, batch: int) -> None:
    model = build_model(name)
    x = torch.rand(batch, 3, size, size)
    with torch.no_grad():
        model.eval()
        out = model(x)
        assert isinstance(out, torch.Tensor)
        assert out.shape == (batch, 1, size, size)
        model.train()
        out = model(x)
    if name in DEEP_SUPERVISION:
        main, aux = out
        assert main.shape == (batch, 1, size, size)
        assert isinstance(aux, list) and len(aux) == 3
        assert all(a.shape == (batch, 1, size, size) for a in aux)
    else:
        assert isinstance(out, torch.Tensor) and out.shape == (batch, 1, size, size)


def test_aux_heads_only_in_train_mode_and_ordered_coarse_to_fine() -> None:
    torch.manual_seed(0)
    model = build_model("dasnet", width=16, stages=4)
    x = torch.rand(1, 3, 64, 64)
    model.train()
    main, aux = model(x)
    # aux_i is the 1x1 head on a decoder stage at 16, 32, 64 px, upsampled to 64 px
    assert len(aux) == 3
    assert [h.in_channels for h in model.aux_heads] == [16, 16, 16]
    model.eval()
    assert isinstance(model(x), torch.Tensor)


@pytest.mark.parametrize("name", DYNAMIC)
def test_one_backward_pass_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).train()
    out = model(torch.rand(2, 3, 128, 128))
    main, aux = out if isinstance(out, tuple) else (out, [])
    (main.mean() + sum(a.mean() for a in aux)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    # A zero gradient is only legitimate behind the attention branch's ReLU (a dead unit).
    zero = [n for n, p in model.named_parameters() if not p.grad.any() and "attention" not in n]
    assert zero == []


def _called_owners(model: torch.nn.Module, x: torch.Tensor) -> tuple[set[str], set[str]]:
    """(names of the modules that directly own parameters, those of them a forward called)."""
    owners = {n for n, m in model.named_modules() if any(True for _ in m.parameters(False))}
    called: set[str] = set()
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: called.add(n)) for n in owners]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return owners, called


@pytest.mark.parametrize("name", DYNAMIC)
def test_every_module_with_parameters_runs_in_the_forward(name: str) -> None:
    """The forward a reader reads is the one that runs: every declared module that holds
    weights is called in training, and all but the deep-supervision heads in evaluation."""
    model = build_model(name, width=8, stages=3)
    x = torch.rand(2, 3, 16, 16)
    owners, called = _called_owners(model.train(), x)
    assert owners - called == set()
    assert any(".attention." in n for n in called) and "head.0" in called
    owners, called = _called_owners(model.eval(), x)
    assert owners - called == {n for n in owners if n.startswith("aux_heads.")}


@pytest.mark.parametrize("name", ["dasnet", "thindyunet"])
def test_a_checkpoint_from_before_the_plain_fast_split_gives_the_same_outputs(name: str) -> None:
    """tests/fixtures/pre_redesign.pt was written by the models of commit 5a484c2."""
    fixture = torch.load(FIXTURE, weights_only=True)
    saved = fixture[name]
    model = build_model(name, width=8, stages=3)
    model.load_state_dict(saved["state_dict"])  # strict: the same keys and shapes
    assert list(model.state_dict()) == list(saved["state_dict"])
    with torch.no_grad():
        eval_out = model.eval()(fixture["x"])
        train_out = model.train()(fixture["x"])
    assert (eval_out - saved["eval"]).abs().max().item() <= 1e-5
    got = [train_out[0], *train_out[1]] if isinstance(train_out, tuple) else [train_out]
    want = [saved["train"][0], *saved["train"][1]] if name == "dasnet" else [saved["train"]]
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert (a - b).abs().max().item() <= 1e-5


def test_deep_supervision_switches_follow_the_ablation_table() -> None:
    expect = {
        "thindyunet": (False, False, False),
        "fulldyunet": (True, False, False),
        "deepsupdyunet": (False, False, True),
        "dasnet": (True, True, True),
    }
    assert set(expect) == set(VARIANTS)
    for name, switches in expect.items():
        m = build_model(name)
        assert (m.dynamic_decoder, m.attention_gates, m.deep_supervision) == switches
        assert models.has_deep_supervision(m) == switches[2]


@pytest.mark.parametrize("size", [(100, 128), (128, 192), (64, 64)])
def test_input_side_not_a_multiple_of_128_is_refused(size: tuple[int, int]) -> None:
    model = build_model("dasnet").eval()
    with pytest.raises(ValueError, match=rf"{size[0]}x{size[1]}.*multiple of 128"):
        model(torch.rand(1, 3, *size))


def test_smaller_stages_change_the_required_multiple() -> None:
    model = build_model("thindyunet", stages=3, width=8).eval()
    assert model(torch.rand(1, 3, 24, 40)).shape == (1, 1, 24, 40)
    with pytest.raises(ValueError, match="multiple of 8"):
        model(torch.rand(1, 3, 20, 40))


def test_reference_maps_every_dasnet_key() -> None:
    model = build_model("dasnet")
    ref = reference_from(model)
    assert sorted(map_dasnet_key(k) for k in model.state_dict()) == sorted(ref.state_dict())


@pytest.mark.parametrize("train", [False, True])
def test_reference_dasnet_equals_ours(train: bool) -> None:
    torch.manual_seed(0)
    model = build_model("dasnet").train(train)
    ref = reference_from(model)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        out, ref_out = model(x), ref(x)
    if train:
        (main, aux), (ref_main, ref_aux) = out, ref_out
        outs, ref_outs = [main, *aux], [ref_main, *ref_aux]
        assert len(aux) == len(ref_aux) == 3
    else:
        outs, ref_outs = [out], [ref_out]
    for a, b in zip(outs, ref_outs, strict=True):
        assert (a - b).abs().max().item() <= 1e-4


def same_training_pass(
    model: torch.nn.Module,
    other: torch.nn.Module,
    x: torch.Tensor,
    grad_rtol: float,
    out_atol: float | None = None,
    other_key=lambda key: key,
) -> torch.Tensor:
    """Run a deep-supervision model and ``other`` on x, backward from the sum of all their
    logits, and assert equal outputs (``out_atol``, if given) and gradients (``grad_rtol`` of
    each gradient's largest entry). Returns other's main logits."""
    (main, aux), (o_main, o_aux) = model(x), other(x)
    if out_atol is not None:
        for a, b in zip([main, *aux], [o_main, *o_aux], strict=True):
            assert (a - b).abs().max().item() <= out_atol
    (main.sum() + sum(a.sum() for a in aux)).backward()
    (o_main.sum() + sum(a.sum() for a in o_aux)).backward()
    named = dict(other.named_parameters())
    for key, p in model.named_parameters():
        g, o_g = p.grad, named[other_key(key)].grad
        diff = (g - o_g).abs().max().item()
        assert diff <= grad_rtol * max(1.0, g.abs().max().item()), f"{key}: {diff}"
    return o_main


def test_reference_dasnet_gradients_equal_ours() -> None:
    """In float64, so that summation order (FP32 rounding of sums over 32k pixels) cannot hide
    or fake a difference: the two backward passes must agree to 1e-9 relative."""
    torch.manual_seed(0)
    model = build_model("dasnet").double().train()
    ref = reference_from(model).double()
    x = torch.rand(2, 3, 128, 128, dtype=torch.float64)
    same_training_pass(model, ref, x, grad_rtol=1e-9, other_key=map_dasnet_key)
