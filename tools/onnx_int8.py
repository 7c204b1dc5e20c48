"""An int8 onnxruntime graph for the DyUNets whose convs are all dynamic (DAS-Net, FullDyUNet).

onnxruntime's fast int8 convolution needs its weights when the session loads, and a dynamic
convolution's kernel is computed per image (sum_k pi_k W_k). Convolution is linear in the kernel,
so the block is built from its K constant kernels instead: each one an int8 ``QLinearConv`` of the
same quantized input, and their outputs mixed by ``QLinearAdd`` with pi_k folded into its
run-time input scales (y = sum_k pi_k s_k (q_k - z_k), requantized once). K convolutions cost K
times one, but int8 on a VNNI CPU is ~3.7x faster than FP32 (BENCHMARKS.md).

The graph stays in uint8 NHWC, onnxruntime's native int8 layout, from the first block's output to
the head's input (the upsampling aside), so that no map between the convolutions is float:

- GroupNorm: its statistics are integer products (``MatMulInteger``: a row of ones for the
  sums, one Gram matrix per 16384 pixels for the sums of squares, exact in int32), its scale and
  shift a depthwise 1x1 ``QLinearConv`` whose per-channel weight scale and int32 bias are
  computed from them, and the LeakyReLU a ``QLinearLeakyRelu`` (a lookup table);
- the attention gate: two 1x1 ``QLinearConv`` summed by ``QLinearAdd`` into a range that starts at
  0 (the ReLU is the clamp), psi as a 1x1 ``QLinearConv``, ``QLinearSigmoid`` and ``QLinearMul``;
- the kernel attention: ``QLinearGlobalAveragePool``, then its small MLP and softmax in float;
- the first block (3 input channels, where an NHWC int8 conv is slow) in float: one Conv with
  its aggregated kernel, quantized and transposed to NHWC before its GroupNorm;
- the upsampling in float (onnxruntime's float NHWC bilinear is faster than its uint8 one); the
  folded head as an exact integer product of its nine taps, summed in float.

Every uint8 tensor's range is calibrated on images through the plain PyTorch model (hooks; the
99.99th percentiles at both ends); weights are int8 per output channel, symmetric, 7 bits.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.dyunet import DyUNet
from models.fast import fold_weights

if TYPE_CHECKING:
    import onnx

MS = "com.microsoft"
GRAM_ROWS = 16384  # pixels per Gram matrix: 16384 x 255^2 stays below 2^31
# Weights use 7 bits (+-63): x86 CPUs without VNNI multiply uint8 x int8 pairs into saturating
# int16 sums (255 x 127 x 2 > 32767); 255 x 63 x 2 fits, so the file computes the same on any
# x86 CPU (onnxruntime's "reduce_range").
WEIGHT_LEVELS = 63
# Activation ranges leave out the extreme 0.01% at each end: the few largest values would
# otherwise set a coarse step for all the others (the demo DAS-Net's logits moved 1.28 instead
# of 1.53 on average at 512x512, its masks 0.19% of pixels instead of 0.20%; BENCHMARKS.md).
PERCENTILE = 99.99
Ranges = dict[str, tuple[float, float]]


def supports(model: nn.Module) -> bool:
    """Whether ``model`` is a DyUNet this builder handles: one whose decoder is dynamic too."""
    return isinstance(model, DyUNet) and model.dynamic_decoder


# -- calibration --------------------------------------------------------------------------------


def calibrate(
    model: DyUNet, images: Iterable[Tensor], percentile: float | None = PERCENTILE
) -> Ranges:
    """The range of every tensor the int8 graph quantizes, over ``images`` (N x C x H x W): per
    image its (100 - ``percentile``)-th and ``percentile``-th percentiles (of up to 10^6 evenly
    strided values; None: its min and max), widened over the images."""
    net = copy.deepcopy(model).cpu().eval()
    ranges: Ranges = {}

    def seen(key: str, t: Tensor) -> None:
        if percentile is None:
            lo, hi = float(t.min()), float(t.max())
        else:
            values = t.detach().flatten()[:: max(1, t.numel() // 1_000_000)].float()
            lo = float(torch.quantile(values, 1 - percentile / 100))
            hi = float(torch.quantile(values, percentile / 100))
        old = ranges.get(key)
        ranges[key] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

    def watch_block(block: nn.Module, key: str):
        dy, gn = block[0], block[1]

        def on_conv(_module, inputs, output):
            x = inputs[0]
            seen(f"{key}.in", x)
            for k in range(dy.num_kernels):
                seen(f"{key}.k{k}", F.conv2d(x, dy.weight[k], padding=dy.padding))
            seen(f"{key}.mix", output)

        dy.register_forward_hook(on_conv)
        gn.register_forward_hook(lambda _m, _i, out: seen(f"{key}.gn", out))
        block.register_forward_hook(lambda _m, _i, out: seen(f"{key}.out", out))

    for key, block in _blocks(net):
        watch_block(block, key)
    for i, gate in enumerate(net.gates or []):

        def on_gate(module, inputs, output, key=f"gates.{i}"):
            g, skip = inputs
            a, b = module.w_g(g), module.w_x(skip)
            seen(f"{key}.wg", a)
            seen(f"{key}.wx", b)
            r = torch.relu(a + b)
            seen(f"{key}.relu", r)
            seen(f"{key}.psi", module.psi(r))

        gate.register_forward_hook(on_gate)
    with torch.no_grad():
        for image in images:
            net(image)
    return ranges


def _blocks(net: DyUNet) -> list[tuple[str, nn.Module]]:
    return [
        *((f"encoder.{i}", b) for i, b in enumerate(net.encoder)),
        ("bottleneck", net.bottleneck),
        *((f"decoder.{i}", b) for i, b in enumerate(net.decoder)),
    ]


# -- the graph ----------------------------------------------------------------------------------


class _Graph:
    """Nodes and constants of the graph being built, with unique names."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self._count = 0

    def _name(self, tag: str) -> str:
        self._count += 1
        return f"{tag}_{self._count}"

    def const(self, value, tag: str = "c") -> str:
        from onnx import numpy_helper

        name = self._name(tag)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(self, values: list[int]) -> str:
        return self.const(np.array(values, np.int64), "shape")

    def op(
        self, op: str, inputs: list[str], tag: str = "", ms: bool = False, out: str = "", **attrs
    ) -> str:
        """Append node ``op`` (domain com.microsoft if ``ms``); returns its output's name."""
        from onnx import helper

        out = out or self._name(tag or op)
        domain = {"domain": MS} if ms else {}
        self.nodes.append(helper.make_node(op, inputs, [out], **domain, **attrs))
        return out


class _U8:
    """A uint8 NHWC tensor with the names of its scale and zero point."""

    def __init__(self, name: str, scale: str, zero: str) -> None:
        self.name, self.scale, self.zero = name, scale, zero


def _qparams(lo: float, hi: float) -> tuple[np.float32, np.uint8]:
    """Scale and zero point of uint8 over [lo, hi] widened to hold 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    return np.float32(scale), np.uint8(np.clip(round(-lo / scale), 0, 255))


def _int8_per_channel(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel in WEIGHT_LEVELS steps: (int8 weight, float scales)."""
    peak = np.abs(weight).reshape(weight.shape[0], -1).max(1)
    scale = np.where(peak > 0, peak / WEIGHT_LEVELS, 1.0).astype(np.float32)
    q = np.round(weight / scale.reshape(-1, *[1] * (weight.ndim - 1)))
    q = np.clip(q, -WEIGHT_LEVELS, WEIGHT_LEVELS)
    return q.astype(np.int8), scale


class _Builder:
    """Builds the int8 graph of a folded DyUNet (``build``), block by block."""

    def __init__(self, net: DyUNet | None, ranges: Ranges, size: tuple[int, int]) -> None:
        self.net, self.ranges, self.size = net, ranges, size
        self.g = _Graph()
        self.ones: dict[int, str] = {}  # a uint8 row of ones per map size (the GroupNorm sums)

    def qparams(self, key: str) -> tuple[str, str]:
        if key not in self.ranges:
            raise KeyError(f"no calibrated range for {key!r}")
        scale, zero = _qparams(*self.ranges[key])
        return self.g.const(scale, "scale"), self.g.const(zero, "zero")

    def quantize(self, x: str, key: str) -> _U8:
        scale, zero = self.qparams(key)
        return _U8(self.g.op("QuantizeLinear", [x, scale, zero]), scale, zero)

    def dequantize(self, x: _U8) -> str:
        return self.g.op("DequantizeLinear", [x.name, x.scale, x.zero])

    def qconv(self, x: _U8, weight: np.ndarray, key: str) -> _U8:
        """Constant-weight int8 convolution (NHWC), output requantized to ``key``'s range."""
        g = self.g
        wq, ws = _int8_per_channel(weight)
        scale, zero = self.qparams(key)
        inputs = [
            x.name,
            x.scale,
            x.zero,
            g.const(wq, "w"),
            g.const(ws, "w_scale"),
            g.const(np.zeros(len(ws), np.int8), "w_zero"),
            scale,
            zero,
        ]
        pad = weight.shape[-1] // 2
        y = g.op(
            "QLinearConv",
            inputs,
            ms=True,
            channels_last=1,
            kernel_shape=list(weight.shape[-2:]),
            pads=[pad] * 4,
        )
        return _U8(y, scale, zero)

    # -- the dynamic convolution block --

    def kernel_attention(self, dy, x: _U8) -> str:
        """pi (1 x K, float) from the pooled uint8 input."""
        g = self.g
        pooled = g.op(
            "QLinearGlobalAveragePool",
            [x.name, x.scale, x.zero, x.scale, x.zero],
            ms=True,
            channels_last=1,
        )
        return self.attention_mlp(dy, self.dequantize(_U8(pooled, x.scale, x.zero)))

    def attention_mlp(self, dy, pooled: str) -> str:
        g = self.g
        fc1, fc2 = dy.attention[1], dy.attention[3]
        v = g.op("Reshape", [pooled, g.ints([1, -1])])
        h = g.op("Relu", [g.op("MatMul", [v, g.const(_matrix(fc1.weight))])])
        logits = g.op(
            "Add", [g.op("MatMul", [h, g.const(_matrix(fc2.weight))]), g.const(_f32(fc2.bias))]
        )
        scaled = g.op("Mul", [logits, g.const(np.float32(1.0 / dy.temperature))])
        return g.op("Softmax", [scaled], axis=1)

    def mixed_kernels(self, dy, x: _U8, pi: str, key: str) -> _U8:
        """sum_k pi_k conv(x, W_k): K int8 convs, mixed by QLinearAdd with pi in the scales."""
        g = self.g
        if dy.num_kernels == 1:  # pi_1 = 1
            return self.qconv(x, dy.weight[0].detach().numpy(), f"{key}.k0")
        terms = []
        for k in range(dy.num_kernels):
            y = self.qconv(x, dy.weight[k].detach().numpy(), f"{key}.k{k}")
            weight = g.op("Reshape", [g.op("Gather", [pi, g.ints([k])], axis=1), g.ints([])])
            terms.append(_U8(y.name, g.op("Mul", [weight, y.scale]), y.zero))
        scale, zero = self.qparams(f"{key}.mix")
        total = terms[0]
        for term in terms[1:]:
            inputs = [total.name, total.scale, total.zero, term.name, term.scale, term.zero]
            total = _U8(g.op("QLinearAdd", [*inputs, scale, zero], ms=True), scale, zero)
        return total

    def moments(self, x: _U8, channels: int, groups: int, pixels: int) -> tuple[str, str]:
        """Per group of channels, the mean and the variance of (q - z) over uint8 ``x``
        ([G, 1] each, float), from exact int32 sums: a row of ones times the pixels, and the
        diagonal of one Gram matrix per chunk of at most GRAM_ROWS pixels."""
        g = self.g
        c = channels
        flat = g.op("Reshape", [x.name, g.ints([pixels, c])])
        if pixels not in self.ones:
            self.ones[pixels] = g.const(np.ones((1, pixels), np.uint8), "ones")
        zero = g.const(np.uint8(0))
        sums = g.op("MatMulInteger", [self.ones[pixels], flat, zero, x.zero])  # [1, C]
        rows = math.gcd(pixels, GRAM_ROWS)  # whole chunks of at most GRAM_ROWS pixels
        chunks = g.op("Reshape", [x.name, g.ints([pixels // rows, rows, c])])
        chunks_t = g.op("Transpose", [chunks], perm=[0, 2, 1])
        gram = g.op("MatMulInteger", [chunks_t, chunks, x.zero, x.zero])  # [n, C, C]
        gram = g.op("ReduceSum", [g.op("Cast", [gram], to=1), g.ints([0])], keepdims=0)
        diagonal = g.op("Mul", [gram, g.const(np.eye(c, dtype=np.float32))])
        squares = g.op("ReduceSum", [diagonal, g.ints([0])], keepdims=1)  # [1, C]
        per_pixel = g.const(np.float32(1.0 / (pixels * (c // groups))))

        def group_mean(per_channel: str) -> str:
            grouped = g.op("Reshape", [per_channel, g.ints([groups, c // groups])])
            return g.op("Mul", [g.op("ReduceSum", [grouped, g.ints([1])], keepdims=1), per_pixel])

        mean = group_mean(g.op("Cast", [sums], to=1))
        var = g.op("Sub", [group_mean(squares), g.op("Mul", [mean, mean])])
        return mean, g.op("Relu", [var])  # rounding of the float sums can dip below 0

    def group_norm_leaky(self, gn: nn.GroupNorm, x: _U8, key: str, pixels: int) -> _U8:
        """GroupNorm + LeakyReLU(0.01) of uint8 ``x``: integer statistics (``moments``), a
        depthwise 1x1 QLinearConv with run-time per-channel scale and bias, a QLinearLeakyRelu."""
        g = self.g
        c, groups = gn.num_channels, gn.num_groups
        mean_q, var_q = self.moments(x, c, groups, pixels)
        scale = x.scale
        var = g.op("Mul", [var_q, g.op("Mul", [scale, scale])])  # in real units: s^2 var_q
        rstd = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [var, g.const(np.float32(gn.eps))])])])
        gamma = gn.weight.detach().numpy().astype(np.float32)
        sign = np.where(gamma < 0, -1, 1)
        # y = a (x - mean) + beta with a = gamma * rstd, x = s (q - z), mean = s * mean_q, is
        # s |a| (sign (q - z) + beta / (s |a|) - sign * mean_q): a depthwise conv with the
        # constant weight sign(gamma), the per-channel scale |a| and that int32 bias
        a = g.op("Mul", [g.const(np.abs(gamma).reshape(groups, -1)), rstd])  # |a|, [G, C/G]
        a = g.op("Max", [g.op("Reshape", [a, g.ints([c])]), g.const(np.float32(1e-12))])
        step = g.op("Mul", [a, scale])
        mean_c = g.op(
            "Reshape", [g.op("Expand", [mean_q, g.ints([groups, c // groups])]), g.ints([c])]
        )
        centre = g.op("Mul", [mean_c, g.const(sign.astype(np.float32))])
        bias = g.op("Sub", [g.op("Div", [g.const(_f32(gn.bias)), step]), centre])
        limit = float(2**30)
        bias = g.op("Clip", [bias, g.const(np.float32(-limit)), g.const(np.float32(limit))])
        bias = g.op("Cast", [g.op("Round", [bias])], to=6)  # int32
        pre_scale, pre_zero = self.qparams(f"{key}.gn")
        inputs = [
            x.name,
            x.scale,
            x.zero,
            g.const(sign.reshape(c, 1, 1, 1).astype(np.int8), "w"),
            a,
            g.const(np.zeros(c, np.int8), "w_zero"),
            pre_scale,
            pre_zero,
            bias,
        ]
        y = g.op("QLinearConv", inputs, ms=True, channels_last=1, group=c, kernel_shape=[1, 1])
        out_scale, out_zero = self.qparams(f"{key}.out")
        z = g.op(
            "QLinearLeakyRelu", [y, pre_scale, pre_zero, out_scale, out_zero], ms=True, alpha=0.01
        )
        return _U8(z, out_scale, out_zero)

    def block(self, block: nn.Module, x: _U8, key: str, pixels: int) -> _U8:
        """DyConv2d -> GroupNorm -> LeakyReLU on uint8 NHWC ``x``."""
        dy, gn = block[0], block[1]
        mixed = self.mixed_kernels(dy, x, self.kernel_attention(dy, x), key)
        return self.group_norm_leaky(gn, mixed, key, pixels)

    def first_block(self, block: nn.Module, image: str, key: str) -> _U8:
        """The 3-channel first block: one float conv with the aggregated kernel (an int8 NHWC
        conv of 3 channels is slow), quantized and made NHWC before its GroupNorm."""
        g = self.g
        dy, gn = block[0], block[1]
        h, w = self.size
        pooled = g.op("ReduceMean", [image], axes=[2, 3], keepdims=1)
        pi = self.attention_mlp(dy, pooled)
        bank = dy.weight.detach().numpy()  # K, C_out, C_in, 3, 3
        kernel = g.op("MatMul", [pi, g.const(bank.reshape(len(bank), -1).astype(np.float32))])
        kernel = g.op("Reshape", [kernel, g.ints(list(bank.shape[1:]))])
        conv = g.op("Conv", [image, kernel], pads=[dy.padding] * 4, kernel_shape=[3, 3])
        scale, zero = self.qparams(f"{key}.mix")
        nchw = g.op("QuantizeLinear", [conv, scale, zero])
        nhwc = _U8(g.op("Transpose", [nchw], perm=[0, 2, 3, 1]), scale, zero)
        return self.group_norm_leaky(gn, nhwc, key, h * w)

    def gate(self, gate: nn.Module, up: _U8, skip: _U8, key: str) -> str:
        """skip * sigmoid(psi(ReLU(W_g up + W_x skip))), on ``up``'s grid."""
        g = self.g
        a = self.qconv(up, gate.w_g.weight.detach().numpy(), f"{key}.wg")
        b = self.qconv(skip, gate.w_x.weight.detach().numpy(), f"{key}.wx")
        r_scale, r_zero = self.qparams(f"{key}.relu")  # [0, max]: the add's clamp is the ReLU
        inputs = [a.name, a.scale, a.zero, b.name, b.scale, b.zero, r_scale, r_zero]
        r = g.op("QLinearAdd", inputs, ms=True)
        p = self.qconv(_U8(r, r_scale, r_zero), gate.psi.weight.detach().numpy(), f"{key}.psi")
        s_scale, s_zero = g.const(np.float32(1 / 255)), g.const(np.uint8(0))
        sig = g.op("QLinearSigmoid", [p.name, p.scale, p.zero, s_scale, s_zero], ms=True)
        inputs = [skip.name, skip.scale, skip.zero, sig, s_scale, s_zero, up.scale, up.zero]
        return g.op("QLinearMul", inputs, ms=True)

    def pool(self, x: _U8) -> _U8:
        """MaxPool 2x2 on uint8 (max commutes with the monotone quantization)."""
        y = self.g.op("NhwcMaxPool", [x.name], ms=True, kernel_shape=[2, 2], strides=[2, 2])
        return _U8(y, x.scale, x.zero)

    def decoder_input(self, i: int, x: _U8, skip: _U8, size: tuple[int, int]) -> _U8:
        """Concat([upsampled x, gated skip]) of decoder stage ``i``, both halves on the grid
        calibrated for the concatenation (so the Concat is a copy)."""
        g = self.g
        scale, zero = self.qparams(f"decoder.{i}.in")
        up = g.op(
            "Resize",
            [self.dequantize(x), "", "", g.ints([1, *size, self.net.width])],
            mode="linear",
            coordinate_transformation_mode="align_corners",
        )
        up = _U8(g.op("QuantizeLinear", [up, scale, zero]), scale, zero)
        if self.net.gates is not None:
            gated = self.gate(self.net.gates[i], up, skip, f"gates.{i}")
        else:
            gated = g.op("QuantizeLinear", [self.dequantize(skip), scale, zero])
        return _U8(g.op("Concat", [up.name, gated], axis=3), scale, zero)

    def head(self, x: _U8) -> str:
        """The folded 3x3 head (64 -> classes): the nine taps' int8 weights as one integer
        product with the uint8 map (exact int32), scaled to float, then as NCHW planes shifted
        and summed (a 3x3 conv of one output runs slowly in either layout)."""
        g = self.g
        h, w = self.size
        weight = self.net.head.weight.detach().numpy()  # classes, C, 3, 3
        classes, c = weight.shape[:2]
        taps = weight.transpose(2, 3, 0, 1).reshape(9 * classes, c)  # (tap, class) x C
        tq, ts = _int8_per_channel(taps)
        flat = g.op("Reshape", [x.name, g.ints([h * w, c])])
        zero = g.const(np.int8(0))
        products = g.op("MatMulInteger", [flat, g.const(tq.T.copy(), "w"), x.zero, zero])
        real = g.op("Mul", [g.op("Cast", [products], to=1), g.op("Mul", [x.scale, g.const(ts)])])
        planes = g.op(
            "Transpose",
            [g.op("Reshape", [real, g.ints([1, h, w, 9 * classes])])],
            perm=[0, 3, 1, 2],
        )
        padded = g.op("Pad", [planes, g.ints([0, 0, 1, 1, 0, 0, 1, 1])])
        total = None
        for t in range(9):
            dy, dx = divmod(t, 3)
            k = t * classes
            tap = g.op(
                "Slice",
                [
                    padded,
                    g.ints([k, dy, dx]),
                    g.ints([k + classes, dy + h, dx + w]),
                    g.ints([1, 2, 3]),
                ],
            )
            total = tap if total is None else g.op("Add", [total, tap])
        bias = _f32(self.net.head.bias).reshape(1, classes, 1, 1)
        return g.op("Add", [total, g.const(bias)], out="logits")

    def build(self) -> onnx.ModelProto:
        from onnx import TensorProto, helper

        net, g = self.net, self.g
        h, w = self.size
        x = self.first_block(net.encoder[0], "image", "encoder.0")
        skips = [(x, h, w)]
        for i, block in enumerate([*net.encoder[1:], net.bottleneck], start=1):
            x, h, w = self.pool(x), h // 2, w // 2
            key = f"encoder.{i}" if i < len(net.encoder) else "bottleneck"
            x = self.block(block, x, key, h * w)
            skips.append((x, h, w))
        skips.pop()  # the bottleneck's output is no skip
        for i, block in enumerate(net.decoder):
            skip, h, w = skips[-1 - i]
            cat = self.decoder_input(i, x, skip, (h, w))
            x = self.block(block, cat, f"decoder.{i}", h * w)
        self.head(x)
        classes = net.head.weight.shape[0]
        graph = helper.make_graph(
            g.nodes,
            "dyunet_int8_nhwc",
            [
                helper.make_tensor_value_info(
                    "image", TensorProto.FLOAT, [1, net.encoder[0][0].in_channels, *self.size]
                )
            ],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes, *self.size])],
            g.inits,
        )
        return helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
        )


def build_int8(model: DyUNet, ranges: Ranges, size: tuple[int, int]) -> onnx.ModelProto:
    """The int8 NHWC graph of ``model`` (batch 1, ``size``) with ``calibrate``'s ranges."""
    if not supports(model):
        raise ValueError("the int8 NHWC graph is built for DyUNets with a dynamic decoder")
    net = fold_weights(copy.deepcopy(model).cpu().eval())
    return _Builder(net, ranges, size).build()


def _matrix(weight: Tensor) -> np.ndarray:
    """A 1x1 conv's weight as the matrix a row vector multiplies (C_in x C_out)."""
    return weight.detach().numpy()[:, :, 0, 0].T.astype(np.float32).copy()


def _f32(t: Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float32)
