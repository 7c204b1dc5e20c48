"""models/authors.py: checkpoints saved by the DAS-Net authors' code load into ours.

The oracle is the authors' own: ../shared/authors (beside the repository; DASNET_AUTHORS_DIR
overrides) holds their state_dict names and shapes at full size and, per dynamic model, a
checkpoint saved their way at width 16 with the outputs their code computed from it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from engine.checkpoint import CheckpointError, load_model
from models import build_model
from models.authors import to_authors

REPO = Path(__file__).resolve().parents[1]
AUTHORS = Path(os.environ.get("DASNET_AUTHORS_DIR") or REPO.parent / "shared" / "authors")
DYNAMIC = ("dasnet", "thindyunet", "fulldyunet", "deepsupdyunet")
needs_vectors = pytest.mark.skipif(
    not (AUTHORS / "authors_state_dict_keys.txt").is_file(),
    reason=f"the authors' test vectors are not at {AUTHORS} (a copy of shared/ beside the "
    f"repository, or set DASNET_AUTHORS_DIR)",
)


def vector(name: str) -> dict:
    return torch.load(AUTHORS / f"authors_{name}_w16.pt", weights_only=True)


def authors_key_list() -> dict[str, dict[str, tuple[int, ...]]]:
    """authors_state_dict_keys.txt: model -> {name: shape} at full size."""
    models: dict[str, dict[str, tuple[int, ...]]] = {}
    current = None
    for line in (AUTHORS / "authors_state_dict_keys.txt").read_text().splitlines():
        if header := re.match(r"# (\w+):", line):
            current = models.setdefault(header.group(1), {})
        elif line.strip():
            key, shape = line.split(" ", 1)
            current[key] = tuple(int(n) for n in re.findall(r"\d+", shape))
    return models


def split(out) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return out if isinstance(out, tuple) else (out, [])


@needs_vectors
@pytest.mark.parametrize("name", DYNAMIC)
def test_our_names_map_onto_the_authors_full_size_state_dict_exactly(name: str) -> None:
    theirs = authors_key_list()[name]
    ours = {k: tuple(v.shape) for k, v in to_authors(build_model(name).state_dict(), name).items()}
    assert ours == theirs


@needs_vectors
@pytest.mark.parametrize("name", DYNAMIC)
def test_an_authors_checkpoint_gives_their_eval_output(name: str, tmp_path: Path) -> None:
    v = vector(name)
    path = tmp_path / "authors.pt"
    torch.save(v["checkpoint"], path)
    model, ckpt = load_model(path, name=name)
    assert ckpt["model_kwargs"]["width"] == 16 and ckpt["model_kwargs"]["stages"] == 7
    assert ckpt["epoch"] == v["checkpoint"]["epoch"]
    with torch.no_grad():
        torch.testing.assert_close(model(v["input"]), v["eval_output"], atol=1e-4, rtol=0)


@needs_vectors
@pytest.mark.parametrize("name", ["dasnet", "fulldyunet"])
def test_dynamic_decoders_match_their_train_mode_outputs_in_float32(name: str, tmp_path) -> None:
    v = vector(name)
    path = tmp_path / "authors.pt"
    torch.save(v["checkpoint"], path)
    model, _ = load_model(path, name=name)
    with torch.no_grad():
        main, aux = split(model.train()(v["input"]))
    torch.testing.assert_close(main, v["train_main"], atol=1e-4, rtol=0)
    assert len(aux) == len(v["train_aux"])
    for ours, theirs in zip(aux, v["train_aux"], strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


@needs_vectors
@pytest.mark.parametrize("name", ["thindyunet", "deepsupdyunet"])
def test_thin_decoders_match_their_train_mode_outputs_in_float64(name: str, tmp_path) -> None:
    """BatchNorm over 1x1 maps of a batch of 2 amplifies float32 rounding to about 1e-3; in
    float64 on our side only their float32 rounding is left."""
    v = vector(name)
    path = tmp_path / "authors.pt"
    torch.save(v["checkpoint"]["model_state_dict"], path)  # a bare state_dict
    model, _ = load_model(path)  # the model is read from the names
    with torch.no_grad():
        main, aux = split(model.double().train()(v["input"].double()))
    torch.testing.assert_close(main.float(), v["train_main"], atol=1e-4, rtol=0)
    for ours, theirs in zip(aux, v["train_aux"], strict=True):
        torch.testing.assert_close(ours.float(), theirs, atol=1e-4, rtol=0)


def perturbed(name: str, **kwargs) -> torch.nn.Module:
    """A model with every tensor moved off its initial value (BatchNorm statistics too)."""
    torch.manual_seed(7)
    model = build_model(name, **kwargs)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn_like(tensor))
                if "running_var" in key:
                    tensor.abs_()
    return model.eval()


@pytest.mark.parametrize(
    ("name", "size"),
    [("dasnet", dict(width=24, stages=5)), ("thindyunet", dict(width=8, stages=4, classes=2))],
)
def test_authors_checkpoints_of_other_sizes_load_with_their_size_read_from_shapes(
    name: str, size: dict, tmp_path: Path
) -> None:
    """Files nobody here has seen: other widths, depths and classes, saved their way (through a
    DistributedDataParallel wrapper, as multi-GPU runs save them)."""
    ours = perturbed(name, **size)
    theirs = to_authors(ours.state_dict(), name, stages=size["stages"])
    path = tmp_path / "theirs.pt"
    torch.save(
        {
            "epoch": 12,
            "model_state_dict": {f"module.{k}": v for k, v in theirs.items()},
            "optimizer_state_dict": {},
            "loss": 0.3,
        },
        path,
    )
    model, ckpt = load_model(path, name=name)
    assert {k: ckpt["model_kwargs"][k] for k in size} == size
    x = torch.rand(2, 3, 2 ** size["stages"], 2 ** size["stages"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x), atol=0, rtol=0)


def test_a_bare_smp_state_dict_loads_as_its_baseline(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pan = build_model("pan").eval()
    path = tmp_path / "pan.pt"
    torch.save({"epoch": 3, "model_state_dict": pan.state_dict()}, path)
    model, ckpt = load_model(path)
    assert ckpt["model_name"] == "pan"
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x), pan(x), atol=0, rtol=0)
    with pytest.raises(CheckpointError, match="fit neither .* nor unet"):
        load_model(path, name="unet")


def test_a_file_of_neither_format_is_named_with_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    torch.save({"weights": [1, 2, 3], "note": "hello"}, path)
    with pytest.raises(CheckpointError, match=r"odd\.pt.*found a dict with 2 keys \('weights'"):
        load_model(path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="found a Tensor"):
        load_model(path)


def test_a_dynamic_file_asked_for_as_another_model_is_refused(tmp_path: Path) -> None:
    theirs = to_authors(build_model("thindyunet", width=8, stages=3).state_dict(), "thindyunet", 3)
    path = tmp_path / "thin.pt"
    torch.save(theirs, path)
    with pytest.raises(CheckpointError, match="holds the authors' thindyunet, not dasnet"):
        load_model(path, name="dasnet")


def test_a_test_script_evaluates_an_authors_checkpoint(tiny_root: Path, tmp_path: Path) -> None:
    """``test_dasnet.py --checkpoint THEIRS``: the model is built at the file's width and depth,
    whatever the config says."""
    import json

    from engine import run_script

    from .conftest import tiny_args

    ours = perturbed("dasnet", width=8, stages=3)
    path = tmp_path / "theirs.pt"
    torch.save({"epoch": 5, "model_state_dict": to_authors(ours.state_dict(), "dasnet", 3)}, path)
    assert (
        run_script("dasnet", False, [*tiny_args(tiny_root, tmp_path), f"--checkpoint={path}"]) == 0
    )
    result = json.loads((tmp_path / "results" / "dasnet.json").read_text())
    assert result["params"] == sum(p.numel() for p in ours.parameters())
    assert result["model_kwargs"]["width"] == 8 and result["checkpoint_epoch"] == 5
