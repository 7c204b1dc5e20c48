"""Checkpoints saved by the DAS-Net authors' code, read into this project's models (and back).

Their training code saves ``torch.save({"epoch", "model_state_dict", "optimizer_state_dict",
"lr_scheduler_state_dict", "loss"})``; a bare state_dict is also seen. For the smp baselines the
state_dict is smp's own, so its names are ours. For the four dynamic models the names are theirs:

| their module                                         | ours                      |
|------------------------------------------------------|---------------------------|
| encoder.encoder_layers.{2i} (pooling at odd indices) | encoder.{i}               |
| encoder.encoder_layers.{2 * stages}                  | bottleneck                |
| ... .weights / .attention.* / .gn.*                  | ... .0.weight / .0.attention.* / .1.* |
| decoder.dy_blocks.{i} (dynamic decoder)              | decoder.{i}               |
| decoder.decoder_layers.{2i+1}.layers.{0,1}.cnn_block.{0,1} (thin) | decoder.{i}.{0,1,3,4} |
| decoder.attention_gates.{i}.W_g / W_x / psi.0        | gates.{i}.w_g / w_x / psi |
| decoder.aux_heads.{stages-3+j}                       | aux_heads.{j}             |
| decoder.output.output_block / decoder.decoder_layers.{2 * stages}.output_block | head |

Decoder stage i is the i-th from the bottleneck in both. Width, stages, kernels, input channels
and classes are read from the weights' shapes, so any size the authors' code builds loads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

# Which of their decoder modules each dynamic model has: dy_blocks, attention_gates, aux_heads.
LAYOUT: dict[str, tuple[bool, bool, bool]] = {
    "thindyunet": (False, False, False),
    "fulldyunet": (True, False, False),
    "deepsupdyunet": (False, False, True),
    "dasnet": (True, True, True),
}
AUX_HEADS = 3
FIRST_KERNELS = "encoder.encoder_layers.0.weights"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


class AuthorsFormatError(ValueError):
    """A file that is neither this project's checkpoint nor the authors'; says what it holds."""


def describe(obj: Any) -> str:
    """A short account of what a loaded file holds, for error messages."""
    if isinstance(obj, Mapping):
        keys = list(obj)
        shown = ", ".join(repr(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
        return f"a dict with {len(keys)} keys ({shown})"
    return f"a {type(obj).__name__}"


def state_dict_of(obj: Any) -> dict[str, Tensor]:
    """The state_dict inside a file saved the authors' way (``model_state_dict``) or a bare one,
    without DDP's ``module.`` or torch.compile's ``_orig_mod.`` prefixes."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model_state_dict"), Mapping):
        obj = obj["model_state_dict"]
    if not (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        raise AuthorsFormatError(
            f"expected this project's checkpoint, a dict with 'model_state_dict' (the authors' "
            f"format) or a bare state_dict of tensors; found {describe(obj)}"
        )
    state = dict(obj)
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def key_pairs(
    stages: int, dynamic_decoder: bool, attention_gates: bool, deep_supervision: bool
) -> list[tuple[str, str]]:
    """(our name or prefix, their name or prefix) for every module of a dynamic model."""
    pairs: list[tuple[str, str]] = []

    def dy_block(ours: str, theirs: str) -> None:
        pairs.extend(
            [
                (f"{ours}.0.weight", f"{theirs}.weights"),
                (f"{ours}.0.attention.", f"{theirs}.attention."),
                (f"{ours}.1.", f"{theirs}.gn."),
            ]
        )

    for i in range(stages):
        dy_block(f"encoder.{i}", f"encoder.encoder_layers.{2 * i}")
    dy_block("bottleneck", f"encoder.encoder_layers.{2 * stages}")
    for i in range(stages):
        if dynamic_decoder:
            dy_block(f"decoder.{i}", f"decoder.dy_blocks.{i}")
        else:
            theirs = f"decoder.decoder_layers.{2 * i + 1}.layers"
            for ours, conv in (("0", "0.cnn_block.0"), ("1", "0.cnn_block.1")):
                pairs.append((f"decoder.{i}.{ours}.", f"{theirs}.{conv}."))
            for ours, conv in (("3", "1.cnn_block.0"), ("4", "1.cnn_block.1")):
                pairs.append((f"decoder.{i}.{ours}.", f"{theirs}.{conv}."))
        if attention_gates:
            gate = f"decoder.attention_gates.{i}"
            pairs.extend(
                [
                    (f"gates.{i}.w_g.", f"{gate}.W_g."),
                    (f"gates.{i}.w_x.", f"{gate}.W_x."),
                    (f"gates.{i}.psi.", f"{gate}.psi.0."),
                ]
            )
    if deep_supervision:
        for j in range(AUX_HEADS):
            pairs.append((f"aux_heads.{j}.", f"decoder.aux_heads.{stages - AUX_HEADS + j}."))
    head = (
        "decoder.output.output_block."
        if dynamic_decoder
        else f"decoder.decoder_layers.{2 * stages}.output_block."
    )
    pairs.append(("head.", head))
    return pairs


def _rename(key: str, pairs: list[tuple[str, str]]) -> str | None:
    for source, target in pairs:
        if key == source or (source.endswith(".") and key.startswith(source)):
            return target + key[len(source) :]
    return None


def dynamic_layout(state: Mapping[str, Tensor]) -> tuple[str, dict[str, int]]:
    """The dynamic model a state_dict in the authors' names holds, and its build arguments."""
    kernels = state[FIRST_KERNELS]
    if kernels.dim() != 5:
        raise AuthorsFormatError(
            f"'{FIRST_KERNELS}' has shape {tuple(kernels.shape)}; a kernel bank is 5-D "
            f"(kernels, out, in, 3, 3)"
        )
    blocks = {
        int(m.group(1))
        for k in state
        if (m := re.fullmatch(r"encoder\.encoder_layers\.(\d+)\.weights", k))
    }
    stages = len(blocks) - 1
    if stages < 1 or blocks != set(range(0, 2 * stages + 1, 2)):
        raise AuthorsFormatError(
            f"the encoder's dynamic blocks sit at indices {sorted(blocks)} of "
            f"encoder.encoder_layers; expected 0, 2, ..., 2 * stages"
        )
    switches = (
        any(k.startswith("decoder.dy_blocks.") for k in state),
        any(k.startswith("decoder.attention_gates.") for k in state),
        any(k.startswith("decoder.aux_heads.") for k in state),
    )
    names = [name for name, layout in LAYOUT.items() if layout == switches]
    if not names:
        raise AuthorsFormatError(
            f"dynamic decoder={switches[0]}, attention gates={switches[1]}, deep "
            f"supervision={switches[2]} is none of the paper's models ({', '.join(LAYOUT)})"
        )
    head = _rename("head.1.weight", key_pairs(stages, *switches))
    if head not in state:
        raise AuthorsFormatError(f"the output block '{head}' is missing")
    kwargs = {
        "in_channels": int(kernels.shape[2]),
        "classes": int(state[head].shape[0]),
        "width": int(kernels.shape[1]),
        "stages": stages,
        "num_kernels": int(kernels.shape[0]),
    }
    return names[0], kwargs


def _fits(model: nn.Module, state: Mapping[str, Tensor]) -> bool:
    own = model.state_dict()
    return set(own) == set(state) and all(own[k].shape == v.shape for k, v in state.items())


def _baseline(state: Mapping[str, Tensor], name: str | None) -> tuple[str, dict[str, Any]]:
    """The smp baseline whose state_dict has exactly these names and shapes."""
    from . import BASELINES, build_model
    from .baselines import ENCODERS

    candidates = [name] if name else list(BASELINES)
    for candidate in candidates:
        kwargs = {"encoder_weights": None}
        if _fits(build_model(candidate, **kwargs), state):
            return candidate, {**kwargs, "encoder_name": ENCODERS[candidate]}
    wanted = name or "any of " + ", ".join(BASELINES)
    raise AuthorsFormatError(
        f"its {len(state)} tensors ({', '.join(list(state)[:3])}, ...) fit neither the authors' "
        f"dynamic models (no '{FIRST_KERNELS}') nor {wanted} with the paper's encoder"
    )


def from_authors(
    obj: Any, name: str | None = None
) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
    """Read a loaded authors'-format file: (model name, build_model kwargs, our state_dict).

    ``name``, when given, must be the model the file holds; without it the model is inferred.
    """
    from . import BASELINES, MODEL_NAMES

    state = state_dict_of(obj)
    if name is not None and name not in MODEL_NAMES:
        raise AuthorsFormatError(f"unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}")
    if FIRST_KERNELS not in state:
        if name is not None and name not in BASELINES:
            raise AuthorsFormatError(
                f"{name} is a dynamic model, but '{FIRST_KERNELS}' (its first kernel bank in the "
                f"authors' names) is missing; found {describe(state)}"
            )
        found, kwargs = _baseline(state, name)
        return found, kwargs, state
    found, kwargs = dynamic_layout(state)
    if name is not None and name != found:
        raise AuthorsFormatError(f"it holds the authors' {found}, not {name}")
    pairs = key_pairs(kwargs["stages"], *LAYOUT[found])
    ours: dict[str, Tensor] = {}
    theirs_by_ours = [(target, source) for source, target in pairs]
    unknown = []
    for key, value in state.items():
        renamed = _rename(key, theirs_by_ours)
        if renamed is None:
            unknown.append(key)
        else:
            ours[renamed] = value
    if unknown:
        raise AuthorsFormatError(
            f"the authors' {found} has no module for {len(unknown)} of its tensors, e.g. "
            f"{', '.join(unknown[:3])}"
        )
    return found, kwargs, ours


def to_authors(state: Mapping[str, Tensor], name: str, stages: int = 7) -> dict[str, Tensor]:
    """Our dynamic model's state_dict in the authors' names (to hand weights to their code)."""
    if name not in LAYOUT:
        raise ValueError(f"{name!r} has no authors' names of its own; valid: {', '.join(LAYOUT)}")
    pairs = key_pairs(stages, *LAYOUT[name])
    renamed = {}
    for key, value in state.items():
        theirs = _rename(key, pairs)
        if theirs is None:
            raise ValueError(f"'{key}' of {name} has no counterpart in the authors' model")
        renamed[theirs] = value
    return renamed


def load_authors(
    obj: Any, name: str | None = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model an authors'-format file holds and load it: (model in eval mode, a
    checkpoint dict in this project's shape: model_name, model_kwargs, model, epoch)."""
    from . import build_model

    found, kwargs, state = from_authors(obj, name)
    model = build_model(found, **kwargs)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or wrong:
        detail = (
            f"missing {missing[:3]}"
            if missing
            else f"'{wrong[0]}' has shape {tuple(state[wrong[0]].shape)}, the model "
            f"{tuple(own[wrong[0]].shape)}"
        )
        raise AuthorsFormatError(f"it does not fit {found} built with {kwargs}: {detail}")
    model.load_state_dict(state)
    epoch = obj.get("epoch") if isinstance(obj, Mapping) else None
    ckpt = {
        "model_name": found,
        "model_kwargs": kwargs,
        "model": model.state_dict(),
        "epoch": epoch,
        "source": "authors",
    }
    return model.to(map_location).eval(), ckpt
