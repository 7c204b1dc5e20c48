"""models/fast/banded.py: row-banded inference computes what the plain eval forward does."""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch
import torch.nn.functional as F

from models import VARIANTS, build_model, optimize_for_inference
from models.fast.banded import Workspace, conv_rows_into, group_norm_affine, max_pool_rows

NHWC = torch.channels_last


def _map(c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, c, h, w, generator=g) + 0.7).contiguous(memory_format=NHWC)


def _small_bands(rows: int, channels: int, width: int) -> Workspace:
    """Every map goes to the workspace, in bands of ``rows`` rows at ``channels`` x ``width``."""
    return Workspace(min_bytes=0, band_bytes=rows * channels * width * 4)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("rows", [1, 2, 7, 40])
def test_convolution_in_row_bands_equals_one_convolution(kernel: int, rows: int) -> None:
    x = _map(5, 23, 11)
    weight = torch.randn(6, 5, kernel, kernel)
    bias = torch.randn(6)
    expected = F.conv2d(x, weight, bias, padding=kernel // 2)
    out = torch.full_like(expected, float("nan")).contiguous(memory_format=NHWC)
    moments: list = []
    conv_rows_into(x, weight, bias, out, rows, moments)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert sum(m[0] for m in moments) == 23 * 11  # every pixel counted once


def test_group_norm_from_band_moments_equals_group_norm() -> None:
    norm = torch.nn.GroupNorm(4, 16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    x = _map(16, 30, 9) * 3 + 5  # a large mean: the moments must not cancel badly
    out = torch.empty_like(x)
    moments: list = []
    conv_rows_into(x, torch.eye(16).view(16, 16, 1, 1), None, out, 4, moments)  # identity conv
    scale, shift = group_norm_affine(norm, moments)
    torch.testing.assert_close(x * scale + shift, norm(x), rtol=0, atol=1e-5)


def test_max_pooling_in_bands_equals_max_pooling() -> None:
    x = _map(8, 18, 10)
    got = max_pool_rows(x, _small_bands(4, 8, 10))
    assert torch.equal(got, F.max_pool2d(x, 2))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_banded_forward_equals_the_plain_eval_forward(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, width=16, stages=3).eval()
    fast = optimize_for_inference(model)
    # bands of 6 rows of the widest map (32 channels x 40): uneven last bands at every stage
    fast.workspace = _small_bands(6, 32, 40)
    x = torch.rand(2, 3, 64, 40)
    with torch.no_grad():
        expected = model(x)
        got = fast(x)
        assert fast.workspace.nbytes() > 0  # the banded path ran
        again = fast(x.flip(0))  # buffers reused: nothing of the first call leaks in
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(again, expected.flip(0), rtol=0, atol=1e-4)
    with torch.no_grad():  # another size: the buffers grow
        bigger = torch.rand(1, 3, 96, 48)
        torch.testing.assert_close(fast(bigger), model(bigger), rtol=0, atol=1e-4)


def test_the_logits_do_not_live_in_the_workspace() -> None:
    torch.manual_seed(0)
    fast = optimize_for_inference(build_model("dasnet", width=16, stages=3))
    fast.workspace = _small_bands(8, 32, 32)
    with torch.no_grad():
        first = fast(torch.rand(1, 3, 32, 32))
        kept = first.clone()
        fast(torch.rand(1, 3, 32, 32))
    assert torch.equal(first, kept)


def test_optimize_for_inference_gives_the_workspace_only_where_it_pays() -> None:
    model = build_model("dasnet", width=16, stages=3)
    assert isinstance(optimize_for_inference(model).workspace, Workspace)
    assert optimize_for_inference(model, channels_last=False).workspace is None
    assert optimize_for_inference(model, workspace=False).workspace is None
    with pytest.raises(ValueError, match="channels_last"):
        optimize_for_inference(model, channels_last=False, workspace=True)


def test_training_and_autograd_do_not_use_the_workspace() -> None:
    torch.manual_seed(0)
    fast = optimize_for_inference(build_model("dasnet", width=16, stages=3))
    fast.workspace = _small_bands(8, 32, 32)
    fast.requires_grad_(True)
    x = torch.rand(1, 3, 32, 32)
    fast(x).sum().backward()  # out= ops would refuse autograd
    assert fast.workspace.nbytes() == 0
    fast.train()
    with torch.no_grad():
        fast(x)
    assert fast.workspace.nbytes() == 0


def test_a_copied_or_pickled_model_gets_an_empty_workspace_of_its_own() -> None:
    fast = optimize_for_inference(build_model("dasnet", width=16, stages=3))
    fast.workspace = _small_bands(8, 32, 32)
    with torch.no_grad():
        fast(torch.rand(1, 3, 32, 32))
    for clone in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        assert clone.workspace is not fast.workspace and clone.workspace.nbytes() == 0
        assert clone.workspace.band_bytes == fast.workspace.band_bytes


def test_threads_sharing_one_model_get_their_own_buffers() -> None:
    torch.manual_seed(0)
    model = build_model("dasnet", width=16, stages=3).eval()
    fast = optimize_for_inference(model)
    fast.workspace = _small_bands(8, 32, 32)
    inputs = [torch.rand(1, 3, 64, 32) for _ in range(4)]
    with torch.no_grad():
        expected = [model(x) for x in inputs]
    results: dict[int, list[torch.Tensor]] = {}

    def work(i: int) -> None:
        with torch.no_grad():
            results[i] = [fast(inputs[i]) for _ in range(3)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in results.items():
        for out in outs:
            torch.testing.assert_close(out, expected[i], rtol=0, atol=1e-4)
    assert len(results) == 4
