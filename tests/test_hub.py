"""models/hub.py: shareable weights (config.json + model.safetensors) and export.py's branch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import models
from engine.checkpoint import load_model, save_checkpoint
from models import build_model, from_pretrained
from models.hub import PretrainedError, save_pretrained
from tools import export


def trained_checkpoint(path: Path, name: str, **kwargs) -> Path:
    """A checkpoint of this project with weights moved off their initial values."""
    torch.manual_seed(3)
    model = build_model(name, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_checkpoint(
        path, {"model_name": name, "model_kwargs": kwargs, "model": model.state_dict(), "epoch": 4}
    )


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("dasnet", dict(width=8, stages=3)), ("mobileunet", dict(encoder_weights=None))],
)
def test_export_safetensors_round_trip_gives_the_checkpoints_logits(
    name: str, kwargs: dict, tmp_path: Path, monkeypatch, capsys
) -> None:
    ckpt = trained_checkpoint(tmp_path / "best.pt", name, **kwargs)
    out = tmp_path / "shared" / name
    assert (
        export.main(["--checkpoint", str(ckpt), "--format", "safetensors", "--out", str(out)]) == 0
    )
    assert "max |logits difference|" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    original, _ = load_model(ckpt)

    def no_pickle(*args, **kw):
        raise AssertionError("from_pretrained must not unpickle anything")

    monkeypatch.setattr(torch, "load", no_pickle)
    rebuilt = models.from_pretrained(out)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), original(x), atol=1e-6, rtol=0)


def test_saving_again_replaces_the_weights_and_keeps_a_model_card(tmp_path: Path) -> None:
    folder = tmp_path / "thin"
    small = build_model("thindyunet", width=8, stages=2)
    save_pretrained(small, "thindyunet", {"width": 8, "stages": 2}, folder)
    (folder / "README.md").write_text("model card")
    save_pretrained(small, "thindyunet", {"width": 8, "stages": 2}, folder, {"epoch": 9})
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    assert json.loads((folder / "config.json").read_text())["epoch"] == 9


def test_a_folder_of_other_things_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    small = build_model("thindyunet", width=8, stages=2)
    with pytest.raises(PretrainedError, match="not empty and holds no config.json"):
        save_pretrained(small, "thindyunet", {"width": 8, "stages": 2}, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_folder_that_does_not_fit_names_the_file(tmp_path: Path) -> None:
    folder = save_pretrained(
        build_model("thindyunet", width=8, stages=2),
        "thindyunet",
        {"width": 8, "stages": 2},
        tmp_path / "m",
    )
    config = json.loads((folder / "config.json").read_text())
    config["model_kwargs"]["width"] = 16
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match=r"model\.safetensors' does not fit thindyunet"):
        from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(PretrainedError, match="config.json' not found"):
        from_pretrained(folder)
