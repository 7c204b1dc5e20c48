"""Computed-kernel convolutions in onnxruntime's blocked layout (tools/onnx_nchwc.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from models import build_model
from tools.onnx_deploy import deployable, export_onnx, session
from tools.onnx_nchwc import DOMAIN, block_size, blocked_dynamic_convs

SIZE = (64, 64)


@pytest.fixture(scope="module")
def block() -> int:
    b = block_size()
    if b is None:  # every x86 CPU with AVX2 has the layout; anything else runs unchanged
        pytest.skip("onnxruntime has no NCHWc layout on this CPU")
    return b


@pytest.fixture(scope="module")
def dasnet_onnx(tmp_path_factory):
    """A small DAS-Net (widths 32: whole blocks of 8 or 16) exported in the aggregated form."""
    torch.manual_seed(0)
    model = build_model("dasnet", width=32, stages=3).eval()
    path = tmp_path_factory.mktemp("nchwc") / "dasnet.onnx"
    export_onnx(deployable(model, "aggregated"), path, SIZE, 17, dynamic_batch=False)
    return model, path


def test_block_size_is_one_of_mlas_blocks(block):
    assert block in (4, 8, 16)


def test_dasnet_runs_blocked_with_the_same_logits(block, dasnet_onnx):
    model, path = dasnet_onnx
    rewritten, count = blocked_dynamic_convs(onnx.load(str(path)), block)
    graph = rewritten.graph
    # computed kernels: 3 encoder stages, the bottleneck, 3 decoder stages; the first encoder
    # conv (3 input channels) stays in NCHW
    assert count == 6
    convs = [n for n in graph.node if (n.domain, n.op_type) == (DOMAIN, "Conv")]
    attrs = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in convs]
    groups = [a.get("group", 1) for a in attrs]
    # computed kernels: a decoder stage has one Conv per half; the gates' three 1x1 convs each
    assert groups.count(1) == 2 + 1 + 2 * 3 + 3 * 3
    # every GroupNorm + LeakyReLU (7 DyConvBlocks, the first's after its NCHW conv) became one
    # depthwise blocked Conv with the activation fused
    assert sum(g > 1 for g in groups) == 7
    assert not any(n.op_type == "InstanceNormalization" for n in graph.node)
    # the decoder's concatenations are gone: each half goes to the blocked layout on its own
    blocked_inputs = {i for n in graph.node if n.domain == DOMAIN for i in n.input}
    assert not any(n.output[0] in blocked_inputs for n in graph.node if n.op_type == "Concat")
    # between the first conv and the head the maps stay blocked: one reorder in (the first
    # conv's output), one out (the head's input) besides the pooled attention vectors;
    # upsampling, pooling and the gates (Add and Relu fused into w_x, Sigmoid into psi) blocked
    producers = {out: n for n in graph.node for out in n.output}
    ops = [(n.domain, n.op_type) for n in graph.node]
    assert ops.count((DOMAIN, "ReorderInput")) == 1
    maps_out = [
        n
        for n in graph.node
        if n.op_type == "ReorderOutput" and producers[n.input[0]].op_type != "GlobalAveragePool"
    ]
    assert len(maps_out) == 1
    assert ops.count((DOMAIN, "Upsample")) == 3 and ops.count((DOMAIN, "MaxPool")) == 3
    assert not {"Resize", "MaxPool", "Sigmoid"} & {op for d, op in ops if d == ""}
    assert [a.get("activation") for a in attrs].count(b"Sigmoid") == 3
    assert (
        sum(
            a.get("activation") == b"Relu" and len(c.input) == 4
            for a, c in zip(attrs, convs, strict=True)
        )
        == 3
    )

    x = torch.rand(1, 3, *SIZE)
    with torch.no_grad():
        expected = model(x).numpy()
    blocked = session(path).run(None, {"image": x.numpy()})[0]
    standard = session(path, blocked=False).run(None, {"image": x.numpy()})[0]
    scale = np.abs(expected).max()
    assert np.abs(blocked - expected).max() <= 1e-5 * max(1.0, scale)
    assert np.abs(blocked - standard).max() <= 1e-5 * max(1.0, scale)


@pytest.mark.parametrize("name", ["fulldyunet", "thindyunet", "deepsupdyunet"])
def test_the_other_dynamic_models_run_blocked_with_the_same_logits(block, tmp_path, name):
    torch.manual_seed(0)
    model = build_model(name, width=32, stages=3).eval()
    path = tmp_path / f"{name}.onnx"
    export_onnx(deployable(model, "aggregated"), path, SIZE, 17, dynamic_batch=False)
    graph = blocked_dynamic_convs(onnx.load(str(path)), block)[0].graph
    assert [(n.domain, n.op_type) for n in graph.node].count((DOMAIN, "Upsample")) == 3
    x = torch.rand(1, 3, *SIZE)
    with torch.no_grad():
        expected = model(x).numpy()
    blocked = session(path).run(None, {"image": x.numpy()})[0]
    assert np.abs(blocked - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize(
    "mode, corners, blocked",
    [
        ("linear", "align_corners", True),
        ("linear", "half_pixel", False),
        ("nearest", "asymmetric", False),
    ],
)
def test_only_the_upsampling_onnxruntime_blocks_exactly_stays_blocked(
    block, mode, corners, blocked
):
    """A Resize after a blocked conv becomes the blocked Upsample for bilinear, align_corners
    (the model's); any other Resize reads the NCHW map, and both compute what onnxruntime does."""
    import onnxruntime as ort

    c = 16
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
            helper.make_node(
                "Resize",
                ["y", "", "scales"],
                ["z"],
                mode=mode,
                coordinate_transformation_mode=corners,
            ),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [c, c, 3, 3]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rewritten, count = blocked_dynamic_convs(model, block)
    assert count == 1
    ops = {(n.domain, n.op_type) for n in rewritten.graph.node}
    assert ((DOMAIN, "Upsample") in ops) == blocked and (("", "Resize") in ops) != blocked
    rng = np.random.default_rng(0)
    feeds = {
        "x": rng.standard_normal((1, c, 8, 8)).astype(np.float32),
        "w": rng.standard_normal((c, c, 3, 3)).astype(np.float32),
    }
    plain, fast = (
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, feeds
        )[0]
        for m in (model, rewritten)
    )
    assert np.allclose(fast, plain, atol=1e-4, rtol=1e-5)


def _conv_graph(weight_source: str, group: int = 1) -> onnx.ModelProto:
    """x (1x16x8x8) -> Conv with a weight that is an initializer, a graph input or DQ(int8)."""
    c = 16
    w = np.random.default_rng(0).standard_normal((c, c // group, 3, 3)).astype(np.float32)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])]
    inits, nodes = [], []
    if weight_source == "constant":
        inits.append(numpy_helper.from_array(w, "w"))
    elif weight_source == "input":
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape)))
    else:  # int8 weight through DequantizeLinear
        inits += [
            numpy_helper.from_array(np.round(w * 20).astype(np.int8), "wq"),
            numpy_helper.from_array(np.array(0.05, np.float32), "ws"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"]))
    nodes.append(helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], group=group))
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    "source, group, rewritten",
    [("input", 1, 1), ("constant", 1, 0), ("input", 2, 0), ("dequantized", 1, 0)],
)
def test_only_float_computed_kernels_are_rewritten(block, source, group, rewritten):
    model = _conv_graph(source, group)
    blocked_model, count = blocked_dynamic_convs(model, block)
    assert count == rewritten
    assert any(n.domain == DOMAIN for n in blocked_model.graph.node) == bool(rewritten)
    if rewritten:  # the rewritten graph computes the same convolution
        import onnxruntime as ort

        rng = np.random.default_rng(1)
        feeds = {
            "x": rng.standard_normal((1, 16, 8, 8)).astype(np.float32),
            "w": rng.standard_normal((16, 16, 3, 3)).astype(np.float32),
        }
        run = {
            k: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            for k, m in {"plain": model, "blocked": blocked_model}.items()
        }
        plain, blocked = (run[k].run(None, feeds)[0] for k in ("plain", "blocked"))
        assert np.allclose(blocked, plain, atol=1e-4, rtol=1e-5)


class _ConvGroupNorm(torch.nn.Module):
    """conv3x3 (its bias sets the mean of the GroupNorm input) -> GroupNorm -> LeakyReLU."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.norm = torch.nn.GroupNorm(8, 32)
        self.act = torch.nn.LeakyReLU(0.01)
        with torch.no_grad():
            self.norm.weight.normal_()
            self.norm.bias.normal_()
            self.conv.weight.mul_(3)
            self.conv.bias.fill_(offset)

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_blocked_group_norm_is_as_precise_as_onnxruntimes(block, tmp_path, offset):
    """The blocked GroupNorm takes the variance as E[x^2] - E[x]^2 from short sums: as precise
    as onnxruntime's InstanceNormalization path while |mean| / std of a group stays small
    (offset 3: about 4; DAS-Net measured <= 1.8 with random and demo-trained weights)."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = _ConvGroupNorm(offset).eval()
    x = torch.rand(1, 16, 64, 64)
    path = tmp_path / "gn.onnx"
    export_onnx(model, path, (64, 64), 17, in_channels=16, dynamic_batch=False)
    blocked, count = blocked_dynamic_convs(onnx.load(str(path)), block)
    assert count == 0  # a constant-weight conv stays; its GroupNorm is still blocked
    assert not any(n.op_type == "InstanceNormalization" for n in blocked.graph.node)
    with torch.no_grad():
        exact = model.double()(x.double()).numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    errors = {
        name: np.abs(
            ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"]).run(
                None, {"image": x.numpy()}
            )[0]
            - exact
        ).max()
        for name, graph in {"blocked": blocked.SerializeToString(), "standard": str(path)}.items()
    }
    assert errors["blocked"] <= max(errors["standard"], 1e-5)


def test_session_runs_the_blocked_graph_and_says_so(block, dasnet_onnx):
    from tools.onnx_deploy import blocked_graph, layout_note

    _, path = dasnet_onnx
    graph = blocked_graph(path)
    note = layout_note(graph)
    assert "6 computed-kernel convs" in note and f"NCHWc{block}" in note
    assert layout_note(None) == "onnxruntime's standard layout"
    assert graph is not None and any(n.domain == DOMAIN for n in graph.graph.node)
    assert not any(n.domain == DOMAIN for n in onnx.load(str(path)).graph.node)  # file untouched


def test_int8_quantizes_only_the_constant_3x3_convs(tmp_path):
    from tools.onnx_deploy import quantize_int8

    torch.manual_seed(0)
    model = build_model("thindyunet", width=32, stages=3).eval()
    path = tmp_path / "thin.onnx"
    export_onnx(deployable(model, "aggregated"), path, SIZE, 17, dynamic_batch=False)
    rngs = [np.random.default_rng(i) for i in range(3)]
    calibration = [rng.random((1, 3, *SIZE), dtype=np.float32) for rng in rngs]
    how = quantize_int8(path, tmp_path / "q.onnx", calibration)
    assert "4 computed-kernel convs kept in FP32" in how  # 3 encoder stages and the bottleneck
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    producers = {out: n.op_type for n in graph.node for out in n.output}
    quantized = [
        n.name
        for n in graph.node
        if n.op_type == "Conv" and producers.get(n.input[1]) == "DequantizeLinear"
    ]
    # the thin decoder's two 3x3 convs per stage; not the kernel attention's 1x1 convs
    assert len(quantized) == 6 and all("/decoder." in n for n in quantized)


@pytest.mark.parametrize("name", ["fulldyunet", "dasnet"])
def test_int8_of_a_model_with_only_computed_3x3_kernels_is_refused_by_name(tmp_path, name):
    from tools import ToolError
    from tools.onnx_deploy import quantize_int8

    torch.manual_seed(0)
    model = build_model(name, width=16, stages=3).eval()
    path = tmp_path / "full.onnx"
    export_onnx(deployable(model, "aggregated"), path, SIZE, 17, dynamic_batch=False)
    calibration = [np.zeros((1, 3, *SIZE), np.float32), np.ones((1, 3, *SIZE), np.float32)]
    with pytest.raises(
        ToolError, match="int8 has nothing to speed up in .*full.onnx.*--quantize int8 builds"
    ):
        quantize_int8(path, tmp_path / "q.onnx", calibration)
    assert not (tmp_path / "q.onnx").exists()


def test_a_graph_the_rewrite_cannot_handle_runs_in_the_standard_layout(
    block, dasnet_onnx, monkeypatch, caplog
):
    import tools.onnx_deploy as deploy

    model, path = dasnet_onnx

    def broken(*args, **kwargs):
        raise ValueError("unexpected graph")

    monkeypatch.setattr(deploy, "blocked_dynamic_convs", broken)
    x = torch.rand(1, 3, *SIZE)
    with caplog.at_level("WARNING"):
        out = deploy.session(path).run(None, {"image": x.numpy()})[0]
    assert "standard onnxruntime layout" in caplog.text and "unexpected graph" in caplog.text
    with torch.no_grad():
        assert np.abs(out - model(x).numpy()).max() <= 1e-4 * max(1.0, np.abs(out).max())
