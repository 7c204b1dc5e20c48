"""benchmark.py: it runs end to end, prints the comparison with the reference DAS-Net, and
knows when the workspace is used."""

from __future__ import annotations

import pytest
import torch

import benchmark
from models import build_model, optimize_for_inference
from models.fast.banded import Workspace


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name)


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


def test_benchmark_onnx_rows_time_fp32_and_int8(capsys: pytest.CaptureFixture) -> None:
    argv = ["--models", "thindyunet", "dasnet", "--size", "128", "--no-train"]
    rows = benchmark.main(
        [*argv, "--repeats", "1", "--warmup", "0", "--onnx", "--onnx-sizes", "128"]
    )
    printed = capsys.readouterr().out
    thin, das = (r["onnx"][0] for r in rows)
    assert thin["onnx_ms"] > 0 and thin["int8_ms"] > 0 and thin["form"] == "aggregated"
    # DAS-Net's int8 is tools/onnx_int8.py's graph
    assert das["onnx_ms"] > 0 and das["int8_ms"] > 0 and "| dasnet | 128 | aggregated |" in printed
