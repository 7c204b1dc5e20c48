"""The two doors to the fast layer: ``optimize_for_inference`` and ``optimize_for_training``.

Training: each DyUNet becomes its fast twin in place (``FastDyUNet``: the same Parameter
objects, so optimizers and state_dict keys are unaffected). Inference: a copy, in eval mode,
with the fast dynamic convolutions (``FastDyConv2d``) and exact rewrites besides. Every
rewrite is algebra on the weights (no approximation), so the optimized model gives the same
logits as the eval-mode original up to float rounding:
- the DyUNet output head conv3x3 -> conv1x1 becomes one conv3x3 (``fold_head``);
- a BatchNorm that directly follows a convolution is folded into that convolution (smp
  baselines: Conv2dReLU blocks, the ResNet encoder, PAN's ConvBnRelu);
- channels_last memory layout where it pays (CPU: oneDNN's NHWC convolutions, max-pooling and
  upsampling are faster), and optionally ``torch.compile``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ..dynamic_conv import DyConv2d
from ..dyunet import DyUNet
from .banded import Workspace
from .dynamic_conv import FastDyConv2d, bank_to_channels_last
from .dyunet import FastDyUNet, fold_head

# Modules whose forward runs conv -> bn by attribute name, with nothing else reading the conv's
# output: folding is exact there. (Sequential containers are handled by adjacency.)
_NAMED_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    ResNet: (("conv1", "bn1"),),
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}
try:
    from segmentation_models_pytorch.decoders.pan.decoder import ConvBnRelu

    _NAMED_PAIRS[ConvBnRelu] = (("conv", "bn"),)
except ImportError:  # an smp without PAN: nothing to fold there
    pass


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and bn.track_running_stats
        and bn.running_mean is not None
        and conv.out_channels == bn.num_features
    )


def fold_batchnorms(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a Conv2d into it; returns how many."""
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:], strict=False):
                conv, bn = module._modules[a], module._modules[b]
                if _foldable(conv, bn):
                    module._modules[a] = fuse_conv_bn_eval(conv, bn)
                    module._modules[b] = nn.Identity()
                    folded += 1
        for cls, pairs in _NAMED_PAIRS.items():
            if not isinstance(module, cls):
                continue
            for conv_name, bn_name in pairs:
                conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
                if conv is not None and bn is not None and _foldable(conv, bn):
                    setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                    setattr(module, bn_name, nn.Identity())
                    folded += 1
    return folded


_INFERENCE_TWINS: dict[type, type] = {DyConv2d: FastDyConv2d, DyUNet: FastDyUNet}


def _swap(model: nn.Module, twins: dict[type, type]) -> nn.Module:
    """Change each module whose exact type is a key of ``twins`` to that fast subclass."""
    for module in model.modules():
        twin = twins.get(type(module))
        if twin is not None:
            module.__class__ = twin
    return model


def optimize_for_training(model: nn.Module) -> nn.Module:
    """Swap the fast training twins into ``model`` in place and return it.

    Each plain DyUNet becomes a ``FastDyUNet`` (fused upsample + gate + concatenation, the
    output head as one product shared with the last aux head): the module objects, their
    Parameter objects and the state_dict keys stay, so an optimizer built before still steps
    the same tensors. The dynamic convolutions stay plain: the fast ones made the gradients
    differ from run to run at 2 threads (tests/test_determinism.py). The fast forward computes
    the plain one's math (tests/test_fast_dyunet.py) and pays on the CPU in FP32 (BENCHMARKS.md);
    on CUDA, under autocast or compiled it falls back to plain PyTorch where its hand-written
    parts do not apply.
    """
    return _swap(model, {DyUNet: FastDyUNet})


def _fold_dyunet_head(model: nn.Module) -> None:
    """Replace each DyUNet's conv3x3 -> conv1x1 head by the single equal conv3x3."""
    for module in model.modules():
        if isinstance(module, DyUNet) and isinstance(module.head, nn.Sequential):
            conv = module.head[0]
            weight, bias = fold_head(module.head)
            folded = nn.Conv2d(conv.in_channels, weight.shape[0], 3, padding=1)
            folded.to(device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                folded.weight.copy_(weight)
                folded.bias.copy_(bias)
            module.head = folded


def fold_weights(model: nn.Module) -> nn.Module:
    """The exact weight folds alone, in place: every BatchNorm that follows a conv into it, each
    DyUNet's output head into one conv3x3. No module changes class, so the forward stays the
    plain one (what an ONNX export should trace: models/deploy.py)."""
    with torch.no_grad():
        fold_batchnorms(model)
        _fold_dyunet_head(model)
    return model


def channels_last_pays(device: torch.device) -> bool:
    """Whether NHWC is the faster layout for FP32 inference on ``device`` (measured on CPU)."""
    return device.type == "cpu"


def to_channels_last(model: nn.Module) -> nn.Module:
    """Put ``model``'s conv weights in channels_last, in place, and return it.

    ``model.to(memory_format=torch.channels_last)`` refuses the DyConv kernel banks (5-D); here
    they get the matching layout (C_in innermost) and convolve per sample (``FastDyConv2d``),
    and each DyUNet (made a ``FastDyUNet``) turns its input to NHWC.
    """
    _swap(model, _INFERENCE_TWINS)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
        elif isinstance(module, DyConv2d):
            module.weight.data = bank_to_channels_last(module.weight.data)
        elif isinstance(module, FastDyUNet):
            module.memory_format = torch.channels_last
    return model


def optimize_for_inference(
    model: nn.Module,
    compile: bool = False,
    channels_last: bool | None = None,
    workspace: bool | None = None,
) -> nn.Module:
    """Return an eval-mode copy of ``model`` that computes the same logits (within 1e-4), faster.

    The caller's model is never modified. ``channels_last=None`` picks the layout that pays on
    the model's device; ``compile`` wraps the result in ``torch.compile``. ``workspace=None``
    gives each DyUNet a ``Workspace`` (row-banded large maps, buffers kept between calls) where
    it pays: CPU, channels_last, not compiled (the compiler plans its own memory).
    """
    model = fold_weights(_swap(copy.deepcopy(model).eval(), _INFERENCE_TWINS))
    model.requires_grad_(False)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if channels_last is None:
        channels_last = channels_last_pays(device)
    if channels_last:
        to_channels_last(model)
    if workspace is None:
        workspace = device.type == "cpu" and channels_last and not compile
    elif workspace and not channels_last:
        raise ValueError(
            "workspace=True needs channels_last=True (it convolves bands of NHWC rows)"
        )
    if workspace:
        for module in model.modules():
            if isinstance(module, FastDyUNet):
                module.workspace = Workspace()
    if compile:
        model = torch.compile(model)
    return model
