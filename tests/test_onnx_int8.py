"""The int8 NHWC graph of the all-dynamic DyUNets (tools/onnx_int8.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from models import build_model
from models.dynamic_conv import DyConv2d
from tools.onnx_deploy import session_of
from tools.onnx_int8 import (
    _U8,
    MS,
    WEIGHT_LEVELS,
    _Builder,
    _qparams,
    build_int8,
    calibrate,
    supports,
)

SIZE = (64, 64)


def _run(builder: _Builder, inputs: list, output: str, feeds: dict) -> np.ndarray:
    """Run the nodes ``builder`` made, from graph ``inputs`` to ``output`` (uint8 NHWC)."""
    g = builder.g
    graph = helper.make_graph(
        g.nodes,
        "part",
        inputs,
        [helper.make_tensor_value_info(output, TensorProto.UINT8, None)],
        g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
    )
    return session_of("part", model, 1).run(None, feeds)[0]


def _quantized(x: np.ndarray, lo_hi: tuple[float, float]) -> tuple[np.ndarray, float, int]:
    scale, zero = _qparams(*lo_hi)
    return np.clip(np.round(x / scale) + zero, 0, 255).astype(np.uint8), float(scale), int(zero)


@pytest.mark.parametrize("offset", [0.0, 2.0])
def test_group_norm_is_exact_up_to_its_roundings(offset):
    """Integer statistics, the depthwise conv's run-time scale and bias, the LeakyReLU table:
    the uint8 GroupNorm + LeakyReLU equals the float one of the same uint8 input up to its two
    roundings, for groups centred and off-centre."""
    torch.manual_seed(0)
    c, groups, side = 16, 4, 32
    gn = torch.nn.GroupNorm(groups, c)
    with torch.no_grad():
        gn.weight.normal_()  # both signs: negative gammas flip the depthwise weight
        gn.bias.normal_()
    x = torch.randn(1, side, side, c) * 1.5 + offset
    q, scale, zero = _quantized(x.numpy(), (float(x.min()), float(x.max())))
    with torch.no_grad():
        seen = torch.from_numpy((q.astype(np.float32) - zero) * scale)  # what the graph reads
        normed = gn(seen.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        expected = F.leaky_relu(normed, 0.01)
    ranges = {
        "b.gn": (float(normed.min()), float(normed.max())),
        "b.out": (float(expected.min()), float(expected.max())),
    }
    builder = _Builder(None, ranges, (side, side))
    g = builder.g
    x_in = _U8("x", g.const(np.float32(scale)), g.const(np.uint8(zero)))
    out = builder.group_norm_leaky(gn, x_in, "b", side * side)
    inputs = [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, side, side, c])]
    got = _run(builder, inputs, out.name, {"x": q})
    out_scale, out_zero = _qparams(*ranges["b.out"])
    got_real = (got.astype(np.float32) - out_zero) * out_scale
    # two roundings, each at most half a step: the normalized map's (and its int32 bias'),
    # then the LeakyReLU table's output
    bound = 1.01 * (_qparams(*ranges["b.gn"])[0] + out_scale)
    assert np.abs(got_real - expected.numpy()).max() <= bound


def test_kernels_mixed_by_pi_equal_the_aggregated_kernels_conv():
    """K int8 convs mixed by QLinearAdd with pi in the scales = the conv with sum_k pi_k W_k,
    to within the int8 rounding (7-bit weights, uint8 outputs)."""
    torch.manual_seed(0)
    dy = DyConv2d(16, 16, num_kernels=2, init="kaiming").eval()
    x = torch.rand(1, 16, 24, 24) * 2 - 0.5
    pi = np.array([[0.3, 0.7]], np.float32)
    with torch.no_grad():
        kernel = (torch.from_numpy(pi) @ dy.weight.flatten(1)).view(dy.weight.shape[1:])
        expected = F.conv2d(x, kernel, padding=1).permute(0, 2, 3, 1).numpy()
        parts = [F.conv2d(x, w, padding=1) for w in dy.weight]
    ranges = {f"b.k{k}": (float(p.min()), float(p.max())) for k, p in enumerate(parts)}
    ranges["b.mix"] = (float(expected.min()), float(expected.max()))
    nhwc = x.permute(0, 2, 3, 1).numpy()
    q, scale, zero = _quantized(nhwc, (float(x.min()), float(x.max())))
    builder = _Builder(None, ranges, (24, 24))
    g = builder.g
    x_in = _U8("x", g.const(np.float32(scale)), g.const(np.uint8(zero)))
    out = builder.mixed_kernels(dy, x_in, "pi", "b")
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 24, 24, 16]),
        helper.make_tensor_value_info("pi", TensorProto.FLOAT, [1, 2]),
    ]
    got = _run(builder, inputs, out.name, {"x": q, "pi": pi})
    mix_scale, mix_zero = _qparams(*ranges["b.mix"])
    got_real = (got.astype(np.float32) - mix_zero) * mix_scale
    err = np.abs(got_real - expected)
    # the output step, the input's rounding and the weights' (1/63 of each channel's peak)
    assert err.max() <= 0.05 * np.abs(expected).max()
    assert err.mean() <= 2 * mix_scale
    # and pi matters: the other mixture is far off
    swapped = _run(builder, inputs, out.name, {"x": q, "pi": pi[:, ::-1].copy()})
    assert (
        np.abs((swapped.astype(np.float32) - mix_zero) * mix_scale - expected).mean()
        > 4 * err.mean()
    )


def _trained_like(name: str) -> torch.nn.Module:
    """A small model of ``name`` with the kaiming bank (its activations stay in a sane range)."""
    torch.manual_seed(0)
    return build_model(name, width=16, stages=3, dyconv_init="kaiming").eval()


@pytest.mark.parametrize("name", ["dasnet", "fulldyunet"])
def test_int8_graph_follows_the_float_model(name, tmp_path):
    model = _trained_like(name)
    gen = torch.Generator().manual_seed(1)
    images = [torch.rand(1, 3, *SIZE, generator=gen) for _ in range(4)]
    graph = build_int8(model, calibrate(model, images), SIZE)
    path = tmp_path / "m.int8.onnx"
    onnx.save(graph, str(path))
    sess = session_of(path, None, 2)
    x = torch.rand(1, 3, *SIZE, generator=gen)
    with torch.no_grad():
        expected = model(x).numpy()
    got = sess.run(None, {"image": x.numpy()})[0]
    assert got.shape == expected.shape
    spread = expected.max() - expected.min()
    assert np.abs(got - expected).mean() <= 0.03 * spread
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.99
    ops = [(n.domain, n.op_type) for n in graph.graph.node]
    # every dynamic conv but the first runs as K int8 convs; the first block is float
    dynamic = 2 + 1 + 3  # the encoder stages but the first, the bottleneck, the decoder stages
    gates = 3 * 3 if name == "dasnet" else 0
    norms, head = dynamic + 1, 0
    assert ops.count((MS, "QLinearConv")) == 2 * dynamic + norms + gates + head
    assert ops.count(("", "Conv")) == 1


def test_any_map_size_gets_whole_gram_chunks():
    """136 x 136 = 18,496 pixels: more than one Gram chunk, not a multiple of 16,384."""
    torch.manual_seed(0)
    model = build_model("dasnet", width=8, stages=3, dyconv_init="kaiming").eval()
    size = (136, 136)
    gen = torch.Generator().manual_seed(1)
    graph = build_int8(model, calibrate(model, [torch.rand(1, 3, *size, generator=gen)]), size)
    x = torch.rand(1, 3, *size, generator=gen)
    got = session_of("m", graph, 1).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.98


def test_weights_fit_every_x86_int8_kernel():
    model = _trained_like("dasnet")
    gen = torch.Generator().manual_seed(1)
    graph = build_int8(model, calibrate(model, [torch.rand(1, 3, *SIZE, generator=gen)]), SIZE)
    weights = [
        onnx.numpy_helper.to_array(i)
        for i in graph.graph.initializer
        if i.data_type == TensorProto.INT8
    ]
    assert weights and max(np.abs(w.astype(int)).max() for w in weights) <= WEIGHT_LEVELS


def test_only_the_all_dynamic_models_are_built():
    assert supports(build_model("dasnet", width=8, stages=3))
    assert supports(build_model("fulldyunet", width=8, stages=3))
    assert not supports(build_model("thindyunet", width=8, stages=3))
    with pytest.raises(ValueError, match="dynamic decoder"):
        build_int8(build_model("deepsupdyunet", width=8, stages=3), {}, SIZE)
