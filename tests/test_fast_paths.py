"""The fast paths compute what the plain ones do: dynamic-conv methods, inference rewrites,
the straightforward reference DAS-Net, and the benchmark that compares them."""

from __future__ import annotations

import copy
import math
import os
import shutil
import sys
from collections.abc import Callable

import pytest
import torch

import benchmark
from benchmarks.reference_dasnet import map_dasnet_key, reference_from
from engine.config import load_config
from engine.cpu import keep_freed_memory
from engine.train import train
from models import BASELINES, MODEL_NAMES, build_model, optimize_for_inference, to_channels_last
from models.banded import Workspace
from models.dynamic_conv import METHODS, choose_method, dynamic_conv2d

from .conftest import tiny_args


def _build(name: str) -> torch.nn.Module:
    """A model with random weights; never downloads encoder weights."""
    torch.manual_seed(0)
    return build_model(name, encoder_weights=None) if name in BASELINES else build_model(name)


def _conv_and_grads(method: str, x: torch.Tensor, weight: torch.Tensor, pi: torch.Tensor):
    x, weight, pi = (t.detach().clone().requires_grad_() for t in (x, weight, pi))
    out = dynamic_conv2d(x, weight, pi, padding=1, method=method)
    grad = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    out.backward(grad)
    return out.detach(), x.grad, weight.grad, pi.grad


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_all_dynamic_conv_methods_agree_forward_and_backward(batch: int, channels_last: bool):
    torch.manual_seed(0)
    x = torch.randn(batch, 16, 12, 12)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(2, 8, 16, 3, 3) * 0.1
    pi = torch.softmax(torch.randn(batch, 2), dim=1)
    expected = _conv_and_grads("grouped", x, weight, pi)
    for method in METHODS:
        got = _conv_and_grads(method, x, weight, pi)
        for name, a, b in zip(("out", "d x", "d weight", "d pi"), expected, got, strict=True):
            diff = (a - b).abs().max().item()
            assert diff <= 1e-4, f"{method}, {name}: {diff}"


def test_auto_picks_one_plain_conv_at_batch_one_and_a_known_method_otherwise() -> None:
    assert choose_method(torch.zeros(1, 8, 4, 4)) == "per_sample"
    for x in (
        torch.zeros(4, 8, 4, 4),
        torch.zeros(4, 8, 4, 4).to(memory_format=torch.channels_last),
    ):
        assert choose_method(x) in METHODS


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_optimize_for_inference_keeps_the_logits_and_leaves_the_original_alone(name: str) -> None:
    model = _build(name).train()
    for m in model.modules():  # non-trivial BatchNorm statistics, so that folding is tested
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.manual_seed(1)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.8, 1.2)
    before = copy.deepcopy(model.state_dict())
    fast = optimize_for_inference(model)
    assert model.training and not fast.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert list(model.state_dict()) == list(before)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        expected = model.eval()(x)
        got = fast(x)
    scale = max(1.0, expected.abs().max().item())  # random smp nets reach logits of ~10-1000
    assert (got - expected).abs().max().item() <= 1e-4 * scale


def test_optimized_dyunet_has_a_single_head_conv_and_no_batchnorm() -> None:
    fast = optimize_for_inference(_build("thindyunet"))
    assert isinstance(fast.head, torch.nn.Conv2d) and fast.head.kernel_size == (3, 3)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())


def test_reference_maps_every_dasnet_key() -> None:
    model = _build("dasnet")
    ref = reference_from(model)
    assert sorted(map_dasnet_key(k) for k in model.state_dict()) == sorted(ref.state_dict())


@pytest.mark.parametrize("train", [False, True])
def test_reference_dasnet_equals_ours(train: bool) -> None:
    model = _build("dasnet").train(train)
    ref = reference_from(model)
    x = torch.rand(2, 3, 128, 128)
    out, ref_out = model(x), ref(x)
    if train:
        (main, aux), (ref_main, ref_aux) = out, ref_out
        outs, ref_outs = [main, *aux], [ref_main, *ref_aux]
        assert len(aux) == len(ref_aux) == 3
    else:
        outs, ref_outs = [out], [ref_out]
    for a, b in zip(outs, ref_outs, strict=True):
        assert (a - b).abs().max().item() <= 1e-4


def _same_training_pass(
    model: torch.nn.Module,
    other: torch.nn.Module,
    x: torch.Tensor,
    grad_rtol: float,
    out_atol: float | None = None,
    other_key: Callable[[str], str] = lambda key: key,
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
    model = _build("dasnet").double().train()
    ref = reference_from(model).double()
    x = torch.rand(2, 3, 128, 128, dtype=torch.float64)
    _same_training_pass(model, ref, x, grad_rtol=1e-9, other_key=map_dasnet_key)


def test_benchmark_runs_end_to_end_and_prints_a_ratio(capsys: pytest.CaptureFixture) -> None:
    argv = ["--models", "dasnet", "--size", "128", "--train-size", "128", "--train-batch", "2"]
    rows = benchmark.main([*argv, "--repeats", "1", "--warmup", "0"])
    printed = capsys.readouterr().out
    assert "| dasnet | 1,657,672 |" in printed
    assert "speed-up" in printed and rows[0]["ref_ms"] > 0 and rows[0]["train_ips"] > 0
    # 128x128 maps are below the workspace's threshold: nothing to compare it with
    assert "no_ws_ms" not in rows[0] and "without the workspace" not in printed


def test_benchmark_knows_when_the_workspace_is_used() -> None:
    model = optimize_for_inference(_build("dasnet"))
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert not benchmark.uses_workspace(model, x)  # 128x128: below the 32 MiB threshold
        model.workspace = Workspace(min_bytes=0)
        assert benchmark.uses_workspace(model, x)
        plain = optimize_for_inference(_build("dasnet"), workspace=False)
        assert not benchmark.uses_workspace(plain, x)


def test_channels_last_training_equals_the_plain_layout() -> None:
    """to_channels_last (also behind trainer.channels_last) changes speed, not the math."""
    model = _build("dasnet").double().train()
    fast = to_channels_last(copy.deepcopy(model))
    assert fast.encoder[1][0].weight.permute(0, 1, 3, 4, 2).is_contiguous()
    x = torch.rand(2, 3, 128, 128, dtype=torch.float64)
    fast_main = _same_training_pass(model, fast, x, grad_rtol=1e-9, out_atol=1e-9)
    assert fast_main.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_training_options_channels_last_and_bf16_run_with_finite_losses(tiny_root, tmp_path):
    """trainer.channels_last and trainer.amp=bf16 on CPU through the real training loop (one
    step: CPUs without bf16 matrix units run bf16 convolutions slowly)."""
    options = ("trainer.channels_last=true", "trainer.amp=bf16", "dataset.max_samples=4")
    args = tiny_args(tiny_root, tmp_path, "trainer.epochs=1", *options)
    train(load_config("dasnet", overrides=[a for a in args if "=" in a], demo=True), "pytest")
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2
    assert all(math.isfinite(float(v)) for v in rows[1].split(",")[1:3])


# the compiler inductor runs on Linux (torch._inductor.config.cpp.cxx): $CXX, else g++
needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None,
    reason="torch.compile on the CPU needs a C++ compiler ($CXX or g++)",
)


@pytest.mark.slow
@needs_compiler
def test_compiled_training_and_inference_equal_eager() -> None:
    """trainer.compile and optimize_for_inference(compile=True): a small DAS-Net (attention gates
    and deep supervision) compiles for training at two batch sizes (the second recompiles with a
    symbolic batch) and for inference, and computes what eager mode does."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model("dasnet", width=8, stages=3).train()
    compiled = torch.compile(copy.deepcopy(model))
    for batch in (2, 3):
        x = torch.rand(batch, 3, 32, 32)
        # FP32 gradients summed over every pixel in another order: 1e-3 of the largest entry
        _same_training_pass(
            model, compiled, x, grad_rtol=1e-3, out_atol=1e-4, other_key="_orig_mod.{}".format
        )
        model.zero_grad(), compiled.zero_grad()
    fast = optimize_for_inference(model, compile=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert (fast(x) - model.eval()(x)).abs().max().item() <= 1e-4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_keeps_freed_memory_once_asked_and_tensors_still_work() -> None:
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
    big = torch.ones(9 * 2**20)  # 36 MB: above glibc's largest mmap threshold
    assert big.sum().item() == 9 * 2**20


def _gate_and_grads(fused: bool, low, skip, gate):
    """cat([g, gate(g, skip)]), g = upsample(low), and the gradients of a fixed weighted sum."""
    from models.dyunet import gated_concat, upsample

    low, skip = (t.detach().clone().requires_grad_() for t in (low, skip))
    gate.zero_grad()
    if fused:
        out = gated_concat(gate, low, skip)
    else:  # the module's own composition, autograd throughout
        g = upsample(low)
        out = torch.cat([g, gate(g, skip)], dim=1)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return [out.detach(), low.grad, skip.grad, *(p.grad for p in gate.parameters())]


def test_fused_upsample_gate_concat_equals_autograd_forward_and_backward() -> None:
    """UpGatedConcat (CPU training path) against upsample + AttentionGate + cat, in float64."""
    from models.attention_gate import AttentionGate

    torch.manual_seed(0)
    gate = AttentionGate(16, 16, 8).double()
    low = torch.randn(3, 16, 6, 10, dtype=torch.float64)
    skip = torch.randn(3, 16, 12, 20, dtype=torch.float64)
    fused = _gate_and_grads(True, low, skip, gate)
    plain = _gate_and_grads(False, low, skip, gate)
    names = ["out", "low", "skip", "w_g", "w_x", "psi"]
    for name, a, b in zip(names, fused, plain, strict=True):
        assert a is not None and b is not None, name
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), f"{name}: {(a - b).abs().max()}"


def test_head_with_the_last_aux_head_in_one_product_equals_two_convs() -> None:
    from models.dyunet import head_conv

    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(1, 8, 3, 3, dtype=torch.float64), torch.randn(1, dtype=torch.float64)
    aw, ab = torch.randn(1, 8, 1, 1, dtype=torch.float64), torch.randn(1, dtype=torch.float64)
    logits, aux = head_conv(x, w, b, extra=(aw, ab))
    assert torch.allclose(logits, torch.nn.functional.conv2d(x, w, b, padding=1))
    assert torch.allclose(aux, torch.nn.functional.conv2d(x, aw, ab))
    (logits.sum() + 2 * aux.sum()).backward()
    x2 = x.detach().requires_grad_()
    F = torch.nn.functional
    (F.conv2d(x2, w, b, padding=1).sum() + 2 * F.conv2d(x2, aw, ab).sum()).backward()
    assert torch.allclose(x.grad, x2.grad)


def test_gradients_of_a_tensor_used_twice_are_summed_in_place() -> None:
    """The training paths hand autograd plain (not view) gradients, so a tensor read by two
    branches (a DyConv's conv and its attention pooling, a skip read by the gate and the next
    encoder stage) gets its gradients summed in place: no out-of-place full-size add."""
    from torch.profiler import profile

    model = _build("dasnet").train()
    x = torch.rand(2, 3, 128, 128)
    main, aux = model(x)
    loss = main.sum() + sum(a.sum() for a in aux)
    with profile(record_shapes=True) as prof:
        loss.backward()
    full_adds = [
        e.input_shapes
        for e in prof.events()
        if e.name == "aten::add"
        and e.input_shapes
        and len(e.input_shapes[0]) == 4
        and e.input_shapes[0][-1] >= 64
    ]
    assert full_adds == [], full_adds
