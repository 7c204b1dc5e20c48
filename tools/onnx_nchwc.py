"""onnxruntime's blocked (NCHWc) layout for the convolutions whose kernel the graph computes.

onnxruntime runs a Conv whose weight is a constant in its NCHWc layout: MLAS's blocked direct
convolution, the weight reordered once when the session loads. A Conv whose weight is computed in
the graph, as DAS-Net's per-image aggregated kernel is, gets the generic NCHW path instead
(im2col and a GEMM): 181 against 133 ms for the 128 -> 64 convolution at 512x512, 2 threads.

``blocked_dynamic_convs`` rewrites each such Conv into the operators onnxruntime's own layout
pass emits for constant weights (domain ``com.microsoft.nchwc``: ReorderInput, Conv,
ReorderOutput), with the kernel reordered inside the graph on every run (a reshape and a
transpose of a few thousand values); a decoder stage's concatenation is never written (each half
convolved with its half of the kernel, summed by the blocked Conv); and each GroupNorm +
LeakyReLU after a conv runs on the blocked map as two reductions and one depthwise
blocked Conv with the activation fused, instead of InstanceNormalization, Mul, Add and
LeakyRelu. It is done on this machine, when a session is created: the block size is the CPU's
(16 with AVX-512, 8 with AVX2), so the exported file stays standard, portable ONNX.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # onnx is imported where it is used: tools load without it
    import onnx

logger = logging.getLogger(__name__)

DOMAIN = "com.microsoft.nchwc"


@functools.cache
def block_size() -> int | None:
    """The channel block of onnxruntime's NCHWc layout on this CPU, or None where it has none.

    Read from onnxruntime itself: a constant-weight Conv is optimized and saved, and the layout
    of its reordered weight gives the block.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    c = 32
    weight = np.arange(c * c * 9, dtype=np.float32).reshape(c, c, 3, 3)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "probe.onnx")
        try:
            ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
            optimized = onnx.load(options.optimized_model_filepath)
        except Exception as exc:  # an onnxruntime that cannot save its optimized graph
            logger.debug("NCHWc probe failed: %s", exc)
            return None
    if not any(node.domain == DOMAIN for node in optimized.graph.node):
        return None
    for init in optimized.graph.initializer:
        if tuple(init.dims) == weight.shape and init.name != "w":
            data = numpy_helper.to_array(init).reshape(-1)
            for block in (16, 8, 4):
                if np.array_equal(_blocked(weight, block).reshape(-1), data):
                    return block
    return None


def _blocked(weight: np.ndarray, block: int) -> np.ndarray:
    """numpy twin of the in-graph reorder (for the probe): OIHW -> O/b I/b H W b_i b_o."""
    o, i, h, w = weight.shape
    return weight.reshape(o // block, block, i // block, block, h, w).transpose(0, 2, 4, 5, 3, 1)


def computed_kernel_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes of ``model`` whose weight the graph computes (not an
    initializer, a Constant or a dequantized constant)."""
    index = _Index(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Conv" and len(n.input) > 1 and _computed(index, n.input[1])
    ]


class _Index:
    """Lookups over a shape-inferred graph: shapes, producers, consumers, constant values."""

    def __init__(self, model) -> None:
        graph = model.graph
        self.graph = graph
        self.shapes = {
            v.name: [d.dim_value if d.HasField("dim_value") else None for d in _dims(v)]
            for v in [*graph.value_info, *graph.input, *graph.output]
        }
        self.initializers = {init.name: init for init in graph.initializer}
        self.producers, self.consumers = {}, {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            for name in node.output:
                self.producers[name] = node
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17
        )
        dims = _dims(graph.input[0]) if graph.input else []
        # GroupNorm statistics are rewritten for one sample: only graphs fixed to batch 1
        self.one_sample = len(graph.input) == 1 and bool(dims) and dims[0].dim_value == 1

    def producer_op(self, name: str) -> str | None:
        node = self.producers.get(name)
        return None if node is None else node.op_type

    def value(self, name: str) -> np.ndarray | None:
        """The constant behind ``name``: an initializer, a Constant, or torch's Identity alias."""
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(_attributes(node)["value"])
        if node is not None and node.op_type == "Identity":
            return self.value(node.input[0])
        return None

    def only_user(self, name: str, op_type: str, any_input: bool = False):
        """The one non-Shape node reading ``name`` (as its first input, or as any with
        ``any_input``), if it is an ``op_type``."""
        users = [u for u in self.consumers.get(name, []) if u.op_type != "Shape"]
        if len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0] if any_input or users[0].input[0] == name else None


def _computed(index: _Index, name: str) -> bool:
    """Whether tensor ``name`` is computed by the graph rather than a (dequantized) constant."""
    return index.value(name) is None and index.producer_op(name) != "DequantizeLinear"


def _dims(value_info) -> list:
    return list(value_info.type.tensor_type.shape.dim)


def _rewritable(index: _Index, node, block: int) -> bool:
    """A float Conv with a computed 4-D kernel of known shape, group 1, explicit pads, whole
    blocks of input and output channels."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return False
    weight, shape = node.input[1], index.shapes.get(node.input[1])
    attrs = _attributes(node)
    return (
        _computed(index, weight)
        and bool(shape)
        and len(shape) == 4
        and None not in shape
        and attrs.get("group", 1) == 1
        and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        and shape[0] % block == 0
        and shape[1] % block == 0
    )


def _concat_parts(index: _Index, node, block: int) -> list[str] | None:
    """The two inputs of the channel Concat feeding Conv ``node`` when they can be convolved
    apart: whole blocks each, and nothing but the Conv and GlobalAveragePools reading it."""
    concat = index.producers.get(node.input[0])
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
        return None
    if _attributes(concat).get("axis") != 1:
        return None
    parts = [index.shapes.get(name) for name in concat.input]
    if any(not p or len(p) != 4 or p[1] is None or p[1] % block for p in parts):
        return None
    users = index.consumers.get(concat.output[0], [])
    if any(u is not node and u.op_type != "GlobalAveragePool" for u in users):
        return None
    return list(concat.input)


_GROUP_NORM = ("Reshape", "InstanceNormalization", "Reshape", "Mul", "Add", "LeakyRelu")


def _group_norm_after(index: _Index, node) -> tuple[list, dict] | None:
    """The GroupNorm -> LeakyReLU reading ``node``'s output, as torch exports it: Reshape to
    [N, G, -1], InstanceNormalization (scale 1, bias 0), Reshape back, Mul by gamma [C, 1, 1],
    Add beta [C, 1, 1], LeakyRelu. Returns (its nodes, its parameters) or None."""
    if not index.one_sample:
        return None
    y = node.output[0]
    chain, name = [], y
    for op in _GROUP_NORM:
        user = index.only_user(name, op)
        if user is None:
            return None
        chain.append(user)
        name = user.output[0]
    for user in index.consumers[y]:  # besides the chain, only Shape nodes that the chain reads
        if user is chain[0]:
            continue
        readers = index.consumers.get(user.output[0], [])
        if user.op_type != "Shape" or not all(any(r is c for c in chain) for r in readers):
            return None
        chain.append(user)
    norm, mul, add, act = chain[1], chain[3], chain[4], chain[5]
    scale, shift = index.value(norm.input[1]), index.value(norm.input[2])
    gamma, beta = index.value(mul.input[1]), index.value(add.input[1])
    if any(v is None for v in (scale, shift, gamma, beta)):
        return None
    channels, groups = gamma.size, scale.size
    per_channel = {(channels, 1, 1), (1, channels, 1, 1)}
    if (
        not np.all(scale == 1)
        or not np.all(shift == 0)
        or channels % groups
        or gamma.shape not in per_channel
        or beta.shape not in per_channel
    ):
        return None
    return chain, {
        "channels": channels,
        "groups": groups,
        "eps": float(_attributes(norm).get("epsilon", 1e-5)),
        "gamma": gamma.reshape(groups, channels // groups).astype(np.float32),
        "beta": beta.reshape(groups, channels // groups).astype(np.float32),
        "alpha": float(_attributes(act).get("alpha", 0.01)),
        "out": act.output[0],
    }


def blocked_dynamic_convs(
    model: onnx.ModelProto, block: int, stay_blocked: bool = True
) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` (onnx.ModelProto) with each float Conv whose weight is computed in the
    graph run in the NCHWc layout of ``block`` channels; returns (model, how many were rewritten).

    A Conv is rewritten when its weight is 4-D with a known shape, group 1, explicit padding, and
    C_in and C_out are multiples of ``block`` (DAS-Net's 3-channel first layer stays: the blocked
    Conv reading NCHW was measured 2.9x slower there). A weight that comes out of a
    DequantizeLinear (an int8 graph) is left to onnxruntime's quantized kernels.

    A Conv over ``Concat([a, b], axis=1)`` (a decoder stage) convolves a and b with the two
    halves of its kernel, the second accumulating onto the first (the blocked Conv's Sum input),
    and a GlobalAveragePool of the same concatenation pools a and b apart: the concatenated map
    is never written. A GroupNorm + LeakyReLU after a Conv (rewritten or not) is computed on
    the blocked map (``_blocked_group_norm``) in graphs fixed to batch 1. ``stay_blocked``: the
    work between the rewritten convs runs on the blocked maps too (``_stay_blocked``); False
    returns each one to NCHW (kept for benchmarks/bench_onnx_layout.py).
    """
    import onnx
    from onnx import helper

    model = onnx.shape_inference.infer_shapes(model, data_prop=True)  # sizes through Reshapes
    index = _Index(model)
    replaced: dict[int, list] = {}  # id(node) -> the nodes that take its place
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        norm = _group_norm_after(index, node)
        if norm is not None and norm[1]["channels"] % block:
            norm = None
        tag = f"{node.output[0]}_nchwc"
        if _rewritable(index, node, block):
            shape = index.shapes[node.input[1]]
            parts = _concat_parts(index, node, block)
            if parts is None:
                nodes, blocked = _blocked_conv(node, shape, block, tag)
            else:
                concat = index.producers[node.input[0]]
                widths = [index.shapes[name][1] for name in parts]
                nodes, blocked = _blocked_split_conv(node, parts, widths, shape, block, tag)
                replaced[id(concat)] = []
                for user in index.consumers[concat.output[0]]:
                    if user is not node:  # GlobalAveragePool: pool each part, then concatenate
                        replaced[id(user)] = _split_pool(user, parts, f"{user.output[0]}_split")
            rewritten += 1
        elif norm is not None:  # a conv that stays in NCHW (DAS-Net's first, 3 input channels):
            blocked = f"{tag}_y"  # one reorder costs less than the GroupNorm's four passes
            nodes = [
                node,
                helper.make_node(
                    "ReorderInput", [node.output[0]], [blocked], domain=DOMAIN, channels_last=0
                ),
            ]
        else:
            continue
        if norm is None:
            nodes.append(_reorder_output(blocked, node.output[0], index.shapes[node.input[1]][0]))
        else:
            chain, params = norm
            nodes += _blocked_group_norm(blocked, params, block, f"{tag}_gn", index.opset)
            nodes.append(_reorder_output(f"{tag}_gn_y", params["out"], params["channels"]))
            for member in chain:
                replaced[id(member)] = []
        replaced[id(node)] = nodes
    graph = model.graph
    nodes = [n for node in graph.node for n in replaced.get(id(node), [node])]
    if rewritten and stay_blocked:
        nodes = _stay_blocked(nodes, index, block)
    nodes = _without_dead_nodes(nodes, {out.name for out in graph.output})
    del graph.node[:]
    graph.node.extend(nodes)
    read = {name for node in nodes for name in node.input} | {i.name for i in graph.input}
    unused = [init for init in graph.initializer if init.name not in read]
    for init in unused:  # the replaced GroupNorms' gamma and beta (now Constants in the graph)
        graph.initializer.remove(init)
    if replaced and not any(op.domain == DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model, rewritten


def _without_dead_nodes(nodes: list, outputs: set[str]) -> list:
    """``nodes`` less those whose outputs nothing reads (the constants of a replaced chain)."""
    while True:
        read = outputs | {name for node in nodes for name in node.input}
        alive = [node for node in nodes if any(out in read for out in node.output)]
        if len(alive) == len(nodes):
            return nodes
        nodes = alive


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(name: str, values: list[int]):
    """A Constant node holding int64 ``values`` as ``name``."""
    from onnx import helper, numpy_helper

    array = numpy_helper.from_array(np.array(values, np.int64), name)
    return helper.make_node("Constant", [], [name], value=array)


def _blocked_weight(weight: str, shape: list[int], block: int, tag: str) -> tuple[list, str]:
    """Nodes that reorder OIHW ``weight`` to O/b I/b H W b_i b_o (the layout onnxruntime gives
    constant weights), and the reordered tensor's name."""
    from onnx import helper

    o, i, kh, kw = shape
    return [
        _ints(f"{tag}_split", [o // block, block, i // block, block, kh, kw]),
        _ints(f"{tag}_shape", shape),
        helper.make_node("Reshape", [weight, f"{tag}_split"], [f"{tag}_w6"]),
        helper.make_node("Transpose", [f"{tag}_w6"], [f"{tag}_wt"], perm=[0, 2, 4, 5, 3, 1]),
        helper.make_node("Reshape", [f"{tag}_wt", f"{tag}_shape"], [f"{tag}_w"]),
    ], f"{tag}_w"


def _conv_nodes(x: str, weight: str, bias: str, total: str | None, out: str, node, tag: str):
    """ReorderInput(x), then the blocked Conv of it (plus ``total``, a blocked map, if given)."""
    from onnx import helper

    attrs = {k: v for k, v in _attributes(node).items() if k in ("pads", "strides", "dilations")}
    inputs = [f"{tag}_x", weight, bias] + ([total] if total else [])
    return [
        helper.make_node("ReorderInput", [x], [f"{tag}_x"], domain=DOMAIN, channels_last=0),
        helper.make_node("Conv", inputs, [out], domain=DOMAIN, group=1, **attrs),
    ]


def _reorder_output(blocked: str, out: str, channels: int):
    from onnx import helper

    return helper.make_node(
        "ReorderOutput", [blocked], [out], domain=DOMAIN, channels=channels, channels_last=0
    )


def _blocked_conv(node, shape: list[int], block: int, tag: str) -> tuple[list, str]:
    """Nodes for Conv ``node`` in the blocked layout (kernel reordered, input blocked, blocked
    Conv) and the name of its blocked output."""
    x, w, *rest = node.input
    bias = rest[0] if rest else ""
    weight_nodes, weight = _blocked_weight(w, shape, block, tag)
    return [*weight_nodes, *_conv_nodes(x, weight, bias, None, f"{tag}_y", node, tag)], f"{tag}_y"


def _blocked_split_conv(
    node, parts: list[str], widths: list[int], shape: list[int], block: int, tag: str
) -> tuple[list, str]:
    """Conv ``node`` of Concat(parts) as two blocked Convs, one per part and its kernel slice,
    the second adding the first's output (Sum input); and the name of the blocked output."""
    from onnx import helper

    w, *rest = node.input[1:]
    bias = rest[0] if rest else ""
    out, start, total = [], 0, None
    for k, (part, width) in enumerate(zip(parts, widths, strict=True)):
        t = f"{tag}{k}"
        out += [
            _ints(f"{t}_starts", [start]),
            _ints(f"{t}_ends", [start + width]),
            _ints(f"{t}_axes", [1]),
        ]
        out.append(
            helper.make_node("Slice", [w, f"{t}_starts", f"{t}_ends", f"{t}_axes"], [f"{t}_wpart"])
        )
        weight_nodes, weight = _blocked_weight(
            f"{t}_wpart", [shape[0], width, *shape[2:]], block, t
        )
        out += weight_nodes
        out += _conv_nodes(part, weight, bias if k == 1 else "", total, f"{t}_y", node, t)
        total, start = f"{t}_y", start + width
    return out, total


def _blocked_group_norm(blocked: str, p: dict, block: int, tag: str, opset: int) -> list:
    """GroupNorm then LeakyReLU of one sample's blocked map ``blocked``; output ``<tag>_y``.

    The statistics are sums over the blocked data seen as [C/b, H, W, b] (along rows, then the
    row sums: short float sums), each channel's sums added per group; the normalization and the
    affine fold into one per-channel scale and shift, applied with the LeakyReLU by one depthwise
    1x1 blocked Conv (its fused activation): one pass over the map instead of four.
    """
    from onnx import TensorProto, helper, numpy_helper

    c, g = p["channels"], p["groups"]

    def f32(name: str, array) -> object:
        return helper.make_node(
            "Constant",
            [],
            [f"{tag}_{name}"],
            value=numpy_helper.from_array(np.asarray(array, np.float32), f"{tag}_{name}"),
        )

    def node(op: str, inputs: list[str], out: str, **attrs) -> object:
        names = [i if i == blocked else f"{tag}_{i}" for i in inputs]
        return helper.make_node(op, names, [f"{tag}_{out}"], **attrs)

    def square_sum(x: str, axis: int, out: str) -> object:
        """ReduceSumSquare over ``axis``: an input from opset 18, an attribute before."""
        if opset >= 18:
            return node("ReduceSumSquare", [x, f"ax{axis}"], out, keepdims=1)
        return node("ReduceSumSquare", [x], out, axes=[axis], keepdims=1)

    return [
        _ints(f"{tag}_blocks", [c // block]),
        _ints(f"{tag}_block", [block]),
        _ints(f"{tag}_hw_start", [2]),
        _ints(f"{tag}_hw_end", [4]),
        _ints(f"{tag}_ax1", [1]),
        _ints(f"{tag}_ax2", [2]),
        _ints(f"{tag}_grouped", [g, c // g]),
        _ints(f"{tag}_kernel", [c, 1, 1, 1]),
        _ints(f"{tag}_flat", [c]),
        f32("group_channels", c // g),
        f32("eps", p["eps"]),
        f32("gamma", p["gamma"]),
        f32("beta", p["beta"]),
        # the blocked data as [C/b, H, W, b], H and W read at run time
        node("Shape", [blocked], "shape"),
        node("Slice", ["shape", "hw_start", "hw_end"], "hw"),
        node("Concat", ["blocks", "hw", "block"], "view_shape", axis=0),
        node("Reshape", [blocked, "view_shape"], "v"),
        node("Cast", ["hw"], "hw_f", to=TensorProto.FLOAT),
        node("ReduceProd", ["hw_f"], "pixels", keepdims=1),  # all axes: the same in every opset
        node("Mul", ["pixels", "group_channels"], "count"),
        node("Reciprocal", ["count"], "inv_n"),
        node("ReduceSum", ["v", "ax2"], "s_rows", keepdims=1),
        node("ReduceSum", ["s_rows", "ax1"], "s_ch", keepdims=1),  # [C/b,1,1,b]: channel order
        node("Reshape", ["s_ch", "grouped"], "s_gc"),
        node("ReduceSum", ["s_gc", "ax1"], "s", keepdims=1),  # [G, 1]
        square_sum("v", 2, "q_rows"),
        node("ReduceSum", ["q_rows", "ax1"], "q_ch", keepdims=1),
        node("Reshape", ["q_ch", "grouped"], "q_gc"),
        node("ReduceSum", ["q_gc", "ax1"], "q", keepdims=1),
        node("Mul", ["s", "inv_n"], "mean"),
        node("Mul", ["q", "inv_n"], "mean_sq"),
        node("Mul", ["mean", "mean"], "mean2"),
        node("Sub", ["mean_sq", "mean2"], "var_raw"),
        node("Relu", ["var_raw"], "var"),  # rounding can take E[x^2] - E[x]^2 just below 0
        node("Add", ["var", "eps"], "var_eps"),
        node("Sqrt", ["var_eps"], "std"),
        node("Div", ["gamma", "std"], "scale_gc"),  # [G, C/G]
        node("Mul", ["mean", "scale_gc"], "mean_scaled"),
        node("Sub", ["beta", "mean_scaled"], "shift_gc"),
        node("Reshape", ["scale_gc", "kernel"], "scale"),
        node("Reshape", ["shift_gc", "flat"], "shift"),
        helper.make_node(
            "Conv",
            [blocked, f"{tag}_scale", f"{tag}_shift"],
            [f"{tag}_y"],
            domain=DOMAIN,
            group=c,
            activation="LeakyRelu",
            activation_params=[p["alpha"]],
        ),
    ]


def _split_pool(pool, parts: list[str], tag: str) -> list:
    """GlobalAveragePool(Concat(parts)) as Concat(GlobalAveragePool(part) for each part)."""
    from onnx import helper

    pooled = [f"{tag}{k}" for k in range(len(parts))]
    return [
        *(
            helper.make_node("GlobalAveragePool", [p], [q])
            for p, q in zip(parts, pooled, strict=True)
        ),
        helper.make_node("Concat", pooled, list(pool.output), axis=1),
    ]


# -- keeping maps blocked between the rewritten convolutions ---------------------------------

_ACTIVATIONS = ("Relu", "Sigmoid", "LeakyRelu")  # what a blocked Conv can apply itself
_POOLS = ("MaxPool", "GlobalAveragePool")


class _Blocked:
    """The blocked twins of NCHW maps, as ``_stay_blocked`` walks the graph."""

    def __init__(self, index: _Index, block: int) -> None:
        self.index, self.block = index, block
        self.twin: dict[str, str] = {}  # NCHW map -> its blocked twin
        self.lanes: set[str] = set()  # twins of one-channel maps: the channel in every lane
        self.absorbed: dict[str, str] = {}  # output of an Add/activation fused into a Conv -> twin

    def channels(self, name: str) -> int | None:
        shape = self.index.shapes.get(name)
        return shape[1] if shape and len(shape) == 4 else None

    def spatial(self, name: str) -> bool:
        """Whether ``name`` is a map of known, more than one pixel (not a pooled vector)."""
        shape = self.index.shapes.get(name)
        return bool(shape) and len(shape) == 4 and None not in shape and shape[2] * shape[3] > 1


def _stay_blocked(nodes: list, index: _Index, block: int) -> list:
    """``nodes`` with the work between blocked convolutions done on the blocked maps too.

    After the rewrite each blocked Conv returns to NCHW (ReorderOutput) and the next one reorders
    its input again; the upsampling, the pooling and the attention gates in between run in NCHW
    (and onnxruntime's own layout pass reorders their inputs once more for the gates' 1x1 convs).
    Here a node whose first input has a blocked twin gets a blocked twin itself where onnxruntime
    has one: Resize (bilinear, integer scales) as the blocked Upsample, MaxPool,
    GlobalAveragePool, a Concat of whole blocks, a constant-weight Conv (its activation and a
    following Add fused), the elementwise gate ops; a ReorderInput of a map with a twin is the
    twin. Each twin keeps a ReorderOutput to the NCHW name, dropped later where nothing reads it.
    """
    state = _Blocked(index, block)
    rename: dict[str, str] = {}
    out: list = []
    for node in nodes:
        for k, name in enumerate(node.input):
            node.input[k] = rename.get(name, name)
        if node.domain == DOMAIN and node.op_type == "ReorderOutput":
            channels = _attributes(node).get("channels", 0)
            if channels % block == 0:
                state.twin[node.output[0]] = node.input[0]
        elif node.domain == DOMAIN and node.op_type == "ReorderInput":
            if node.input[0] in state.twin and not _attributes(node).get("channels_last", 0):
                rename[node.output[0]] = state.twin[node.input[0]]
                continue
        elif node.output and node.output[0] in state.absorbed:
            y = state.absorbed[node.output[0]]
            state.twin[node.output[0]] = y
            out.append(_reorder_output(y, node.output[0], state.channels(node.output[0])))
            continue
        elif node.domain in ("", "ai.onnx") and node.input and node.input[0] in state.twin:
            channels = state.channels(node.output[0]) or (
                state.channels(node.input[0]) if node.op_type in _POOLS else None
            )
            made = _twin(node, state) if channels else None
            if made is not None:
                twin_nodes, y = made
                out += twin_nodes
                out.append(_reorder_output(y, node.output[0], channels))
                state.twin[node.output[0]] = y
                continue
        out.append(node)
    return out


def _twin(node, state: _Blocked) -> tuple[list, str] | None:
    """Nodes computing ``node`` on blocked maps, and its blocked output; None where there is no
    blocked form (the node then reads the NCHW map)."""
    from onnx import helper

    index, block, op = state.index, state.block, node.op_type
    x, y = node.input[0], f"{node.output[0]}_blocked"
    attrs = _attributes(node)
    if not state.spatial(x) or len(node.output) != 1:
        return None
    if op == "Resize":
        scales = _resize_scales(node, index)
        linear = attrs.get("mode") in (b"linear", "linear")
        corners = attrs.get("coordinate_transformation_mode") in (b"align_corners", "align_corners")
        if scales is None or not (linear and corners):
            return None
        return [
            helper.make_node(
                "Upsample",
                [state.twin[x]],
                [y],
                domain=DOMAIN,
                scales=scales,
                mode="linear",
                coordinate_transformation_mode="align_corners",
            )
        ], y
    if op in _POOLS:
        plain = op == "GlobalAveragePool" or (
            attrs.get("ceil_mode", 0) == 0
            and attrs.get("storage_order", 0) == 0
            and set(attrs.get("dilations", [1])) == {1}
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        )
        return (
            ([helper.make_node(op, [state.twin[x]], [y], domain=DOMAIN, **attrs)], y)
            if plain
            else None
        )
    if op == "Concat":
        whole = all(i in state.twin and (state.channels(i) or 1) % block == 0 for i in node.input)
        if attrs.get("axis") not in (1, -3) or not whole:
            return None
        return [helper.make_node("Concat", [state.twin[i] for i in node.input], [y], axis=1)], y
    if op == "Conv":
        return _twin_conv(node, state, y)
    if op in _ACTIVATIONS and len(node.input) == 1:
        if state.twin[x] in state.lanes:
            state.lanes.add(y)
        return [helper.make_node(op, [state.twin[x]], [y], **attrs)], y
    if op in ("Add", "Mul") and len(node.input) == 2 and all(i in state.twin for i in node.input):
        a, b = node.input
        shape_a, shape_b = index.shapes.get(a), index.shapes.get(b)
        if shape_a == shape_b:
            if state.twin[a] in state.lanes and state.twin[b] in state.lanes:
                state.lanes.add(y)
            return [helper.make_node(op, [state.twin[a], state.twin[b]], [y])], y
        if (
            op == "Mul"
            and index.one_sample
            and state.channels(b) == 1
            and state.twin[b] in state.lanes
        ):
            return _lane_broadcast_mul(state.twin[a], state.twin[b], state.channels(a), y, block), y
    return None


def _resize_scales(node, index: _Index) -> list[int] | None:
    """A Resize's integer scales [1, 1, sh, sw], from its input's and output's inferred
    shapes, or None."""
    shape_in, shape_out = index.shapes.get(node.input[0]), index.shapes.get(node.output[0])
    if not shape_in or not shape_out or None in shape_in or None in shape_out:
        return None
    if shape_in[:2] != shape_out[:2] or any(
        o % i for i, o in zip(shape_in[2:], shape_out[2:], strict=True)
    ):
        return None
    return [1, 1, *(o // i for i, o in zip(shape_in[2:], shape_out[2:], strict=True))]


def _twin_conv(node, state: _Blocked, y: str) -> tuple[list, str] | None:
    """A constant-weight Conv on a blocked map: the weight reordered here (the output channels
    padded to a block; a one-channel output copied into every lane, so that a gate can scale
    every channel), its following activation, and an Add of a blocked map before it, fused."""
    from onnx import helper, numpy_helper

    index, block = state.index, state.block
    weight = index.value(node.input[1]) if len(node.input) > 1 else None
    bias = index.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    attrs = _attributes(node)
    if weight is None or weight.ndim != 4 or attrs.get("group", 1) != 1:
        return None
    if len(node.input) > 2 and node.input[2] and bias is None:
        return None
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or weight.shape[1] % block:
        return None
    c_out = weight.shape[0]
    bias = np.zeros(c_out, np.float32) if bias is None else bias.astype(np.float32)
    if c_out == 1 and index.one_sample:
        weight, bias = np.repeat(weight, block, axis=0), np.repeat(bias, block)
        state.lanes.add(y)
    else:
        pad = -c_out % block
        weight = np.pad(weight, ((0, pad), (0, 0), (0, 0), (0, 0)))
        bias = np.pad(bias, (0, pad))
    w, b = f"{y}_w", f"{y}_b"
    reordered = _blocked(weight.astype(np.float32), block).reshape(weight.shape)
    nodes = [
        helper.make_node("Constant", [], [w], value=numpy_helper.from_array(reordered, w)),
        helper.make_node("Constant", [], [b], value=numpy_helper.from_array(bias, b)),
    ]
    inputs = [state.twin[node.input[0]], w, b]
    fused = {}
    end = node.output[0]
    add = index.only_user(end, "Add", any_input=True)
    if add is not None:
        other = add.input[1] if add.input[0] == end else add.input[0]
        if other in state.twin and index.shapes.get(other) == index.shapes.get(end):
            inputs.append(state.twin[other])
            state.absorbed[add.output[0]] = y
            end = add.output[0]
    for op in _ACTIVATIONS:
        act = index.only_user(end, op)
        if act is not None:
            fused = {"activation": op}
            if op == "LeakyRelu":
                fused["activation_params"] = [float(_attributes(act).get("alpha", 0.01))]
            state.absorbed[act.output[0]] = y
            break
    keep = {k: v for k, v in attrs.items() if k in ("pads", "strides", "dilations", "kernel_shape")}
    nodes.append(helper.make_node("Conv", inputs, [y], domain=DOMAIN, group=1, **keep, **fused))
    return nodes, y


def _lane_broadcast_mul(a: str, g: str, channels: int, y: str, block: int) -> list:
    """One sample's blocked ``a`` (C channels) times a one-channel map ``g`` whose blocked twin
    holds it in every lane: as [C/b, H*W*b] x [1, H*W*b], then back to a's shape."""
    from onnx import helper

    return [
        _ints(f"{y}_rows", [channels // block, -1]),
        _ints(f"{y}_row", [1, -1]),
        helper.make_node("Shape", [a], [f"{y}_shape"]),
        helper.make_node("Reshape", [a, f"{y}_rows"], [f"{y}_a"]),
        helper.make_node("Reshape", [g, f"{y}_row"], [f"{y}_g"]),
        helper.make_node("Mul", [f"{y}_a", f"{y}_g"], [f"{y}_m"]),
        helper.make_node("Reshape", [f"{y}_m", f"{y}_shape"], [y]),
    ]
