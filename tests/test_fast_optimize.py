"""models/fast/optimize.py: optimize_for_inference (exact rewrites, a copy) for all seven models,
torch.compile and the training options through the real loop; engine/cpu.py's allocator switch."""

from __future__ import annotations

import copy
import importlib
import math
import os
import shutil
import sys

import pytest
import torch

from engine.config import load_config
from engine.cpu import keep_freed_memory
from models import BASELINES, MODEL_NAMES, build_model, optimize_for_inference

from .conftest import tiny_args
from .test_dyunet import same_training_pass

train = importlib.import_module("engine.train").train


def _build(name: str) -> torch.nn.Module:
    """A model with random weights; never downloads encoder weights."""
    torch.manual_seed(0)
    return build_model(name, encoder_weights=None) if name in BASELINES else build_model(name)


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
        same_training_pass(
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
