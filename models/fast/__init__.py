"""The speed layer: faster twins of the plain modules, applied only by explicit calls.

``optimize_for_training(model)`` swaps them in place; ``optimize_for_inference(model)`` returns
an eval-mode copy with them and exact weight rewrites. Nothing in models/dynamic_conv.py,
models/attention_gate.py or models/dyunet.py depends on this package. What each path buys, and
when, is measured in BENCHMARKS.md.
"""

from .dynamic_conv import FastDyConv2d, dynamic_conv2d
from .dyunet import FastDyUNet
from .optimize import fold_weights, optimize_for_inference, optimize_for_training, to_channels_last

__all__ = [
    "FastDyConv2d",
    "FastDyUNet",
    "dynamic_conv2d",
    "fold_weights",
    "optimize_for_inference",
    "optimize_for_training",
    "to_channels_last",
]
