"""The tools around trained models: predict, export, seed statistics, plots (issue 7)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats as scipy_stats

from engine.checkpoint import save_checkpoint
from models import build_model
from tools import export, plots, predict, seeds
from tools.stats import paired_test, summary

PNG = b"\x89PNG\r\n\x1a\n"


def make_checkpoint(path: Path, name: str = "thindyunet", root: str | None = None) -> Path:
    """An untrained checkpoint trained-at 128x128, saved the way the engine saves them."""
    torch.manual_seed(0)
    kwargs = {"encoder_weights": None} if name == "unet" else {}
    dataset = {"image_size": [128, 128], **({"root": root} if root else {})}
    return save_checkpoint(
        path,
        {
            "model_name": name,
            "model_kwargs": kwargs,
            "model": build_model(name, **kwargs).state_dict(),
            "epoch": 1,
            "config": {"dataset": dataset},
        },
    )


@pytest.fixture(scope="module")
def thin_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "thindyunet.pt")


def random_image(path: Path, width: int, height: int, grey: bool = False) -> Path:
    rng = np.random.default_rng(width * height)
    shape = (height, width) if grey else (height, width, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


# -- predict -----------------------------------------------------------------------------------


def test_predict_writes_mask_and_overlay_at_the_original_size(thin_ckpt, tmp_path):
    odd = random_image(tmp_path / "odd.png", 200, 150)
    folder = tmp_path / "frames"
    (folder / "ir").mkdir(parents=True)
    random_image(folder / "a.jpg", 160, 90)
    random_image(folder / "ir" / "a.jpg", 80, 64, grey=True)
    out = tmp_path / "out"
    code = predict.main(
        [
            "--checkpoint",
            str(thin_ckpt),
            str(odd),
            str(folder),
            "--out",
            str(out),
            "--batch-size",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    for name, size in [("odd", (200, 150)), ("a", (160, 90)), ("ir/a", (80, 64))]:
        mask = Image.open(out / f"{name}_mask.png")
        overlay = Image.open(out / f"{name}_overlay.png")
        assert mask.size == overlay.size == size
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert overlay.mode == "RGB"


def test_predict_on_a_video_keeps_every_frame_and_the_size(thin_ckpt, tmp_path):
    video = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    with imageio.get_writer(video, fps=5, macro_block_size=1) as writer:
        for _ in range(5):
            writer.append_data(rng.integers(0, 256, (96, 160, 3), dtype=np.uint8))
    out = tmp_path / "out"
    assert (
        predict.main(
            [
                "--checkpoint",
                str(thin_ckpt),
                str(video),
                "--out",
                str(out),
                "--batch-size",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    reader = imageio.get_reader(out / "clip_overlay.mp4")
    assert reader.count_frames() == 5
    assert tuple(reader.get_meta_data()["size"]) == (160, 96)
    reader.close()
    masks = sorted((out / "clip_masks").glob("*_mask.png"))
    assert len(masks) == 5 and Image.open(masks[0]).size == (160, 96)


def test_overlay_tints_the_mask_and_draws_its_contour():
    frame = np.zeros((8, 8, 3), dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 2:6] = True
    out = predict.overlay(frame, mask)
    assert (out[2, 2] == predict.CONTOUR).all()  # border pixel: contour colour
    assert out[3, 3, 0] > 0 and out[3, 3, 1] == 0  # inside: tinted red
    assert (out[0, 0] == 0).all()  # background untouched


@pytest.mark.parametrize(
    "make_args, named",
    [
        (lambda t, c: ["--checkpoint", str(c), str(t / "missing.jpg")], "missing.jpg"),
        (lambda t, c: ["--checkpoint", str(c), str(t / "broken.jpg")], "broken.jpg"),
        (lambda t, c: ["--checkpoint", str(t / "none.pt"), str(t / "ok.png")], "none.pt"),
        (
            lambda t, c: ["--checkpoint", str(c), "--size", "200", "200", str(t / "ok.png")],
            "multiples of 128",
        ),
    ],
    ids=["missing input", "unreadable image", "missing checkpoint", "size not multiple"],
)
def test_predict_bad_input_exits_2_naming_it(thin_ckpt, tmp_path, capsys, make_args, named):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    random_image(tmp_path / "ok.png", 64, 48)
    assert predict.main([*make_args(tmp_path, thin_ckpt), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and named in err


def test_predict_demo_without_a_demo_checkpoint_says_how_to_train_one(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    random_image(tmp_path / "ok.png", 64, 48)
    assert predict.main(["--model", "dasnet", "--demo", "ok.png"]) == 2
    err = capsys.readouterr().err
    assert "runs/demo/dasnet/best.pt" in err and "python train_dasnet.py --demo" in err


# -- export ------------------------------------------------------------------------------------


def test_export_cli_writes_a_verified_onnx_file_for_dasnet(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "dasnet.pt", "dasnet")
    out = tmp_path / "exports" / "dasnet.onnx"
    image = random_image(tmp_path / "frame.png", 200, 150)
    image2 = random_image(tmp_path / "ir.jpg", 120, 96, grey=True)
    assert (
        export.main(
            [
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out),
                "--images",
                str(image),
                str(image2),
                "--runs",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert out.is_file() and "onnxruntime" in printed
    for checked in ("random, batch 1", "random, batch 3", "image, batch 1", "images, batch 2"):
        assert f"on {checked}: " in printed  # each within the tolerance, or nothing is written
    assert not list(out.parent.glob(".*"))  # no temporary file left behind


def test_onnx_matches_pytorch_at_batch_1_and_3_for_an_smp_baseline(tmp_path):
    torch.manual_seed(0)
    model = build_model("unet", encoder_weights=None).train()
    # BatchNorm statistics of real activations, as a trained model has: the default ones (mean
    # 0, var 1) blow random-weight logits up to ~10, where FP32 rounding alone reaches 1e-4.
    with torch.no_grad():
        for _ in range(5):
            model(torch.rand(4, 3, 128, 128))
    model.eval()
    batches = export.check_batches((128, 128), [])
    diffs = export.export_checked(model, tmp_path / "unet.onnx", (128, 128), 17, batches)
    assert set(diffs) == {"random, batch 1", "random, batch 3"}
    assert max(r["diff"] for r in diffs.values()) <= 1e-4


def test_export_refuses_a_size_dynamic_models_cannot_take(thin_ckpt, tmp_path, capsys):
    code = export.main(
        ["--checkpoint", str(thin_ckpt), "--size", "200", "128", "--out", str(tmp_path / "x.onnx")]
    )
    assert code == 2 and "multiples of 128" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


# -- statistics over seeds ---------------------------------------------------------------------

A, B = [0.70, 0.68, 0.72], [0.60, 0.61, 0.65]


def test_summary_is_mean_and_sample_std():
    mean, std, n = summary(A)
    assert n == 3 and mean == pytest.approx(0.70)
    assert std == pytest.approx(np.std(A, ddof=1)) and std == pytest.approx(0.02)


def test_paired_test_equals_scipy_and_cohens_d_the_hand_computation():
    t, p, d = paired_test(A, B)
    expected = scipy_stats.ttest_rel(A, B)
    assert t == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)
    # differences 0.10, 0.07, 0.07: mean 0.08, sample sd sqrt((0.02² + 0.01² + 0.01²) / 2)
    assert d == pytest.approx(0.08 / math.sqrt(0.0006 / 2))
    assert d == pytest.approx(t / math.sqrt(3))


def test_a_single_seed_has_no_std_and_no_t_test():
    assert math.isnan(summary([0.7])[1])
    with pytest.raises(ValueError, match="at least 2"):
        paired_test([0.7], [0.6])


def write_results(root: Path, values: dict[str, list[float]], seed_list: list[int]) -> None:
    for model, scores in values.items():
        for seed, x in zip(seed_list, scores, strict=True):
            path = root / f"seed{seed}" / f"{model}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            overall = {"images": 10, "precision": x + 0.1, "recall": x - 0.1, "dice": x, "miou": x}
            path.write_text(json.dumps({"model": model, "overall": overall}))


def test_seed_report_from_results_files(tmp_path, capsys):
    write_results(tmp_path / "seeds", {"dasnet": A, "thindyunet": B}, [42, 2024, 8888])
    out = tmp_path / "seeds.md"
    assert (
        seeds.main(
            [
                "--models",
                "dasnet",
                "thindyunet",
                "--seeds",
                "42",
                "2024",
                "8888",
                "--report-only",
                "--results-dir",
                str(tmp_path / "seeds"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = out.read_text()
    assert text in capsys.readouterr().out
    assert "| dasnet | 3 | 0.8000 ± 0.0200 | 0.6000 ± 0.0200 | 0.7000 ± 0.0200 |" in text
    assert "| dasnet vs thindyunet | mIoU | +0.0800 | 8.000 | 0.0153 | 4.619 |" in text
    assert "d = mean(a_i - b_i) / sd(a_i - b_i)" in text


def test_seed_report_with_one_seed_explains_what_is_missing():
    values = {"overall": {"precision": 0.8, "recall": 0.6, "dice": 0.7, "miou": 0.7}}
    text = seeds.render_markdown(
        {"dasnet": {42: values}, "unet": {42: values}}, [42], [("dasnet", "unet")]
    )
    assert "| dasnet | 1 | 0.8000 | 0.6000 | 0.7000 | 0.7000 |" in text
    assert "Only one seed (42)" in text and "nan" not in text.lower()


def test_seed_report_names_a_missing_results_file(tmp_path, capsys):
    assert (
        seeds.main(
            ["--models", "dasnet", "--seeds", "1", "--report-only", "--results-dir", str(tmp_path)]
        )
        == 2
    )
    assert str(tmp_path / "seed1" / "dasnet.json") in capsys.readouterr().err


def test_run_seeds_trains_and_tests_each_model_and_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_run(command):
        calls.append(command)
        if "test_" in command[1]:
            args = dict(a.split("=", 1) for a in command[2:] if "=" in a)
            model = Path(command[1]).stem.removeprefix("test_")
            seed = int(args["dataset.seed"])
            write_results(
                Path(args["output.results_dir"]).parent, {model: [0.5 + seed / 1e5]}, [seed]
            )
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(seeds.subprocess, "run", fake_run)
    argv = [
        "--models",
        "dasnet",
        "thindyunet",
        "--seeds",
        "42",
        "2024",
        "--demo",
        "trainer.epochs=1",
    ]
    assert seeds.main(argv) == 0
    assert len(calls) == 8  # 2 models x 2 seeds x (train, test)
    train = calls[0]
    assert Path(train[1]).name == "train_dasnet.py" and train[2] == "--demo"
    assert {
        "dataset.seed=42",
        "output.run_dir=runs/demo/seeds/dasnet/seed42",
        "output.results_dir=results/demo/seeds/seed42",
        "trainer.overwrite=true",
        "trainer.epochs=1",
    } <= set(train)
    assert "trainer.overwrite=true" not in calls[1]
    assert (tmp_path / "results/demo/seeds.md").is_file()
    calls.clear()
    assert seeds.main([*argv, "--skip-existing"]) == 0
    assert calls == []


# -- plots -------------------------------------------------------------------------------------


def test_curves_plot_is_a_png(tmp_path):
    for run in ("dasnet", "unet"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "metrics.csv").write_text(
            "epoch,train_loss,val_loss,precision,recall,dice,miou,lr,seconds\n"
            "1,0.90,0.85,0.5,0.4,0.30,0.20,0.001,3.0\n"
            "2,0.70,0.72,0.6,0.5,0.45,0.35,0.001,3.0\n"
        )
    out = tmp_path / "fig" / "curves.png"
    assert (
        plots.main(["curves", str(tmp_path / "dasnet"), str(tmp_path / "unet"), "--out", str(out)])
        == 0
    )
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 1000


def test_curves_name_a_missing_metrics_file(tmp_path, capsys):
    assert plots.main(["curves", str(tmp_path / "nope"), "--out", str(tmp_path / "c.png")]) == 2
    assert str(tmp_path / "nope" / "metrics.csv") in capsys.readouterr().err


def test_grid_plot_from_untrained_checkpoints(tmp_path):
    from data import generate_demo_dataset

    root = generate_demo_dataset(tmp_path / "uav", seed=1, sequences=8, frames=4, size=160)
    first = make_checkpoint(tmp_path / "a.pt", "thindyunet", root=str(root))
    second = make_checkpoint(tmp_path / "b.pt", "thindyunet", root=str(root))
    out = tmp_path / "grid.png"
    assert (
        plots.main(
            [
                "grid",
                "--models",
                "thindyunet",
                "thindyunet",
                "--checkpoints",
                str(first),
                str(second),
                "--n",
                "2",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 1000


def test_grid_names_a_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "none.pt"
    assert (
        plots.main(
            [
                "grid",
                "--models",
                "dasnet",
                "--checkpoints",
                str(missing),
                "--out",
                str(tmp_path / "g.png"),
            ]
        )
        == 2
    )
    assert str(missing) in capsys.readouterr().err


# -- inference modes in predict.py and plots.py size (issue 15) --------------------------------


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    """A 3-stage ThinDyUNet (sides multiples of 8) trained-at 64x64: quick on full-HD frames."""
    torch.manual_seed(0)
    kwargs = {"width": 8, "stages": 3}
    return save_checkpoint(
        tmp_path_factory.mktemp("small") / "small.pt",
        {
            "model_name": "thindyunet",
            "model_kwargs": kwargs,
            "model": build_model("thindyunet", **kwargs).state_dict(),
            "epoch": 1,
            "config": {"dataset": {"image_size": [64, 64]}},
        },
    )


@pytest.mark.parametrize("mode", ["pad", "slide"])
def test_predict_pad_and_slide_write_masks_of_the_frame_size(small_ckpt, tmp_path, mode):
    random_image(tmp_path / "hd.jpg", 1920, 1080)
    random_image(tmp_path / "odd.png", 1001, 757)
    out = tmp_path / "out"
    extra = ["--tile", "256", "256", "--stride", "192", "192"] if mode == "slide" else []
    args = ["--checkpoint", str(small_ckpt), str(tmp_path / "hd.jpg"), str(tmp_path / "odd.png")]
    assert predict.main([*args, "--out", str(out), "--mode", mode, "--device", "cpu", *extra]) == 0
    assert Image.open(out / "hd_mask.png").size == (1920, 1080)
    assert Image.open(out / "odd_mask.png").size == (1001, 757)
    assert Image.open(out / "odd_overlay.png").size == (1001, 757)


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--mode", "slide", "--tile", "100", "100"], "--tile = [100, 100]: the model needs"),
        (["--mode", "slide", "--tile", "64", "64", "--stride", "96", "8"], "--stride = [96, 8]"),
        (["--mode", "pad", "--tile", "64", "64"], "--tile = [64, 64]: applies only to mode slide"),
        (["--mode", "pad", "--padding", "none"], "--padding = 'none'"),
        (["--mode", "slide", "--tile", "256", "256", "--padding", "none"], "larger than the frame"),
    ],
)
def test_predict_refuses_a_mode_that_cannot_work_before_writing(
    small_ckpt, tmp_path, capsys, extra, expect
):
    image = random_image(tmp_path / "a.png", 160, 90)
    out = tmp_path / "out"
    code = predict.main(["--checkpoint", str(small_ckpt), str(image), "--out", str(out), *extra])
    assert code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # logs aside
    assert len(errors) == 1 and expect in errors[0] and "Traceback" not in err
    assert not out.exists()


def test_size_plot_from_per_image_csvs(tmp_path, capsys):
    for model, shift in [("dasnet", 0.1), ("unet", 0.0)]:
        (tmp_path / f"{model}.json").write_text(json.dumps({"model": model}))
        rows = ["file,modality,sequence,height,width,uav_area,iou,dice,precision,recall"]
        rows += [
            f"f{i}.jpg,visible,s,90,160,{a},{0.5 + shift},0.6,1,1"
            for i, a in enumerate([0.0, 0.0004, 0.003, 0.02, 0.09])
        ]
        (tmp_path / f"{model}_images.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "size.png"
    assert plots.main(["size", "--results", str(tmp_path), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG)
    assert plots.main(["size", "--results", str(tmp_path), "--mode", "pad"]) == 2
    assert "no pad results" in capsys.readouterr().err


def test_a_small_uav_gets_a_zoom_box_around_it_and_a_large_one_none():
    mask = np.zeros((200, 300), dtype=bool)
    mask[190:195, 296:300] = True  # 5x4 pixels at the corner
    top, bottom, left, right = plots.zoom_box(mask)
    assert bottom - top == right - left == 24 and bottom <= 200 and right <= 300
    assert mask[top:bottom, left:right].sum() == mask.sum()  # all of the UAV in the inset
    large = np.zeros((200, 300), dtype=bool)
    large[50:90, 100:160] = True
    assert plots.zoom_box(large) is None and plots.zoom_box(np.zeros((8, 8), bool)) is None


def test_curves_mark_a_deep_supervision_objective(tmp_path):
    (tmp_path / "config.yaml").write_text("model:\n  name: dasnet\n")
    assert plots.deep_supervised(tmp_path) and not plots.deep_supervised(tmp_path / "x")
    (tmp_path / "config.yaml").write_text("model:\n  name: unet\n")
    assert not plots.deep_supervised(tmp_path)
