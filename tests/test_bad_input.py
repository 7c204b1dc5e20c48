"""Every way of feeding bad input ends non-zero with a message naming the file, key or value."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from engine import run_script
from engine.checkpoint import save_checkpoint
from models import build_model

from .conftest import run, tiny_args


@pytest.fixture
def broken_root(tiny_root, tmp_path) -> Path:
    """A private copy of the tiny dataset to damage."""
    return Path(shutil.copytree(tiny_root, tmp_path / "uav"))


def first(root: Path, pattern: str) -> Path:
    return sorted(root.glob(pattern))[0]


@pytest.fixture
def refused(capsys):
    """Run a script's entry in this process; assert a non-zero exit naming ``expect``.

    The scripts are one call to engine.run_script, so this is what they do, without paying a
    Python start-up per case; one test below runs the real script in a subprocess.
    """

    def check(script: str, *args: str, expect: str) -> str:
        kind, model = Path(script).stem.split("_", 1)
        code = run_script(model, kind == "train", list(args))
        err = capsys.readouterr().err
        assert code != 0, err[-2000:]
        assert expect in err, err[-2000:]
        assert "Traceback" not in err, err[-2000:]
        return err

    return check


def test_the_real_script_exits_non_zero_with_one_error_line(tiny_root, tmp_path):
    done = run("train_dasnet.py", *tiny_args(tiny_root, tmp_path, "trainer.epoch=3"))
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "'trainer.epoch'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "override, expect",
    [
        ("trainer.epoch=3", "'trainer.epoch'"),  # misspelled key
        ("trainer.epochs=three", "'trainer.epochs'"),  # wrong type
        ("dataset.image_size=[100,100]", "multiples of 128"),  # size for the dynamic models
        ("trainer.threshold=1.5", "'trainer.threshold'"),  # out of range
    ],
)
def test_config_mistakes_are_refused_by_name(tiny_root, tmp_path, override, expect, refused):
    refused("train_dasnet.py", *tiny_args(tiny_root, tmp_path, override), expect=expect)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_missing_dataset_root_names_the_path_and_the_demo_generator(tmp_path, refused):
    missing = tmp_path / "nowhere"
    err = refused(
        "train_thindyunet.py",
        *tiny_args(missing, tmp_path, "dataset.demo=false"),
        expect=str(missing),
    )
    assert "data.synthetic" in err


def test_empty_split_names_the_split_folder(broken_root, tmp_path, refused):
    train = broken_root / "UAVSemanticSegmentationInput" / "train"
    for seq in train.iterdir():
        shutil.rmtree(seq)
    refused("train_thindyunet.py", *tiny_args(broken_root, tmp_path), expect=str(train))


def test_corrupt_jpeg_names_the_file(broken_root, tmp_path, refused):
    bad = first(broken_root, "UAVSemanticSegmentationInput/train/*/visible/*.jpg")
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    refused("train_thindyunet.py", *tiny_args(broken_root, tmp_path), expect=str(bad))


def test_truncated_png_mask_names_the_file(broken_root, tmp_path, refused):
    bad = first(broken_root, "UAVSemanticSegmentationLabels/train/*/infrared/*_mask.png")
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    refused("train_thindyunet.py", *tiny_args(broken_root, tmp_path), expect=str(bad))


def test_mask_size_differing_from_its_image_names_both_files(broken_root, tmp_path, refused):
    mask = first(broken_root, "UAVSemanticSegmentationLabels/train/*/visible/*_mask.png")
    Image.open(mask).resize((33, 17)).save(mask)
    err = refused("train_thindyunet.py", *tiny_args(broken_root, tmp_path), expect=str(mask))
    image = str(mask).replace("UAVSemanticSegmentationLabels", "UAVSemanticSegmentationInput")
    assert image.replace("_mask.png", ".jpg") in err


def test_missing_checkpoint_names_the_path_and_the_train_command(tiny_root, tmp_path, refused):
    err = refused(
        "test_thindyunet.py",
        *tiny_args(tiny_root, tmp_path),
        expect=str(tmp_path / "run" / "best.pt"),
    )
    assert "python train_thindyunet.py --demo" in err


def test_checkpoint_of_another_model_names_both(tiny_root, tmp_path, refused):
    ckpt = tmp_path / "thin.pt"
    save_checkpoint(
        ckpt,
        {
            "model_name": "thindyunet",
            "model_kwargs": {},
            "model": build_model("thindyunet").state_dict(),
        },
    )
    err = refused(
        "test_fulldyunet.py",
        *tiny_args(tiny_root, tmp_path),
        "--checkpoint",
        str(ckpt),
        expect=str(ckpt),
    )
    assert "'thindyunet'" in err and "'fulldyunet'" in err


def test_checkpoint_of_another_shape_names_the_tensor(tiny_root, tmp_path, refused):
    ckpt = tmp_path / "narrow.pt"
    save_checkpoint(
        ckpt,
        {
            "model_name": "thindyunet",
            "model_kwargs": {"width": 32},
            "model": build_model("thindyunet", width=32).state_dict(),
        },
    )
    err = refused(
        "test_thindyunet.py",
        *tiny_args(tiny_root, tmp_path),
        "--checkpoint",
        str(ckpt),
        expect=str(ckpt),
    )
    assert "shape" in err


def test_unwritable_output_folder_is_named(tiny_root, tmp_path, refused):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    refused(
        "train_thindyunet.py",
        *tiny_args(tiny_root, tmp_path),
        f"output.run_dir={blocker / 'run'}",
        expect=str(blocker / "run"),
    )
