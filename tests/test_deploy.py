"""ONNX deployment (issue 18): export forms, the scaled check, int8, predict --onnx."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from engine.checkpoint import save_checkpoint
from models import build_model
from models.deploy import FORMS, deploy_copy
from tools import ToolError, export, predict
from tools.onnx_deploy import (
    Logits,
    compare,
    deployable,
    evaluate_onnx,
    quantize_int8,
    run_onnx,
    session,
    verify,
)

SIZE = (32, 32)
TINY = {"width": 8, "stages": 3}  # sides: multiples of 2**3


def tiny_dasnet(seed: int = 0, name: str = "dasnet") -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, **TINY).eval()


def tiny_checkpoint(path: Path, root: Path | None = None, name: str = "dasnet") -> Path:
    dataset = {"image_size": list(SIZE), **({"root": str(root)} if root else {})}
    return save_checkpoint(
        path,
        {
            "model_name": name,
            "model_kwargs": TINY,
            "model": tiny_dasnet(name=name).state_dict(),
            "epoch": 1,
            "config": {"dataset": dataset},
        },
    )


@pytest.mark.parametrize("form", FORMS)
def test_each_form_computes_the_plain_models_logits(form):
    model = tiny_dasnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = 1 if form == "aggregated" else 3
    x = torch.rand(batch, 3, *SIZE)
    with torch.no_grad():
        expected = model(x)
        got = deploy_copy(model, form)(x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched


def test_aggregated_form_refuses_a_batch_and_unknown_forms_are_named():
    with pytest.raises(ValueError, match="batch 1"):
        deploy_copy(tiny_dasnet(), "aggregated")(torch.rand(2, 3, *SIZE))
    with pytest.raises(ValueError, match="'loop'"):
        deploy_copy(tiny_dasnet(), "loop")


@pytest.mark.parametrize("form", ["aggregated", "mixture"])
def test_exported_forms_match_pytorch_and_have_the_promised_batch_axis(tmp_path, form):
    out = tmp_path / f"{form}.onnx"
    batches = export.check_batches(SIZE, [])
    results = export.export_checked(tiny_dasnet(), out, SIZE, 17, batches, form=form)
    assert set(results) == {"random, batch 1", "random, batch 3"}
    assert all(r["diff"] <= 1e-4 and r["agreement"] == 1.0 for r in results.values())
    batch_dim = session(out).get_inputs()[0].shape[0]
    assert batch_dim == 1 if form == "aggregated" else isinstance(batch_dim, str)


def test_tolerance_scales_with_the_logits_but_not_with_a_wrong_value():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 30, (1, 1, 16, 16)).astype(np.float32)  # |logits| up to ~80
    rounding = logits * np.float32(1 + 5e-5)  # float32 rounding of large sums
    ok = compare(logits, rounding, 1e-4)
    assert ok["diff"] > 1e-4 and ok["diff"] <= ok["bound"] and ok["agreement"] == 1.0
    wrong = logits + 0.5  # a graph that adds a bias too many
    bad = compare(logits, wrong, 1e-4)
    assert bad["diff"] > bad["bound"]


def test_a_broken_graph_is_refused(tmp_path):
    model = tiny_dasnet()
    good = tmp_path / "good.onnx"
    batches = export.check_batches(SIZE, [])
    export.export_checked(model, good, SIZE, 17, batches)
    graph = onnx.load(good)
    # break it slightly: the last dynamic conv's attention leans a little more to one kernel
    bias = [t for t in graph.graph.initializer if t.name.endswith("attention.3.bias")][-1]
    shifted = numpy_helper.to_array(bias) + np.array([3.0, 0.0], dtype=np.float32)
    bias.CopyFrom(numpy_helper.from_array(shifted, bias.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(graph, broken)
    reference = Logits(model).eval()
    assert verify(reference, good, batches)  # the good file still passes the same check
    with pytest.raises(ToolError, match="differs from PyTorch"):
        verify(reference, broken, batches)


def test_int8_copy_runs_and_keeps_most_of_the_mask(tmp_path):
    model = tiny_dasnet(name="thindyunet")  # its decoder's 3x3 convs have constant weights
    fp32 = tmp_path / "m.onnx"
    export.export_checked(model, fp32, SIZE, 17, export.check_batches(SIZE, []))
    rng = np.random.default_rng(1)
    calibration = [rng.random((1, 3, *SIZE), dtype=np.float32) for _ in range(4)]  # merges ranges
    how = quantize_int8(fp32, tmp_path / "m.int8.onnx", calibration)
    assert "static QDQ" in how
    ops = {node.op_type for node in onnx.load(tmp_path / "m.int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = rng.random((1, 3, *SIZE), dtype=np.float32)
    a = run_onnx(session(fp32), x)
    b = run_onnx(session(tmp_path / "m.int8.onnx"), x)
    assert not np.array_equal(a, b)  # quantized for real
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max() + 0.1


def test_export_cli_quantizes_and_prints_both_scores(tmp_path, tiny_root, capsys):
    ckpt = tiny_checkpoint(tmp_path / "c.pt", tiny_root, name="thindyunet")
    out = tmp_path / "e" / "thindyunet.onnx"
    args = ["--checkpoint", str(ckpt), "--out", str(out), "--runs", "1", "--quantize", "int8"]
    assert export.main([*args, "--calibration", "2", "--eval-images", "3"]) == 0
    printed = capsys.readouterr().out
    assert "form aggregated" in printed and "batch 1" in printed
    assert "mIoU FP32" in printed and "int8" in printed and "static QDQ" in printed
    assert out.is_file() and (tmp_path / "e" / "thindyunet.int8.onnx").is_file()
    assert not list(out.parent.glob(".*"))


@pytest.mark.parametrize("name", ["dasnet", "fulldyunet"])
def test_export_cli_writes_the_int8_graph_of_the_all_dynamic_models(
    tmp_path, tiny_root, capsys, name
):
    ckpt = tiny_checkpoint(tmp_path / "c.pt", tiny_root, name=name)
    out = tmp_path / "e" / f"{name}.onnx"
    args = ["--checkpoint", str(ckpt), "--out", str(out), "--runs", "1", "--quantize", "int8"]
    assert export.main([*args, "--calibration", "2", "--eval-images", "3"]) == 0
    printed = capsys.readouterr().out
    assert "int8 NHWC graph (tools/onnx_int8.py)" in printed and "mIoU FP32" in printed
    assert "masks equal to FP32's on" in printed
    int8 = tmp_path / "e" / f"{name}.int8.onnx"
    assert out.is_file() and int8.is_file() and not list(out.parent.glob(".*"))
    ops = {(n.domain, n.op_type) for n in onnx.load(str(int8)).graph.node}
    assert ("com.microsoft", "QLinearConv") in ops and ("com.microsoft", "QLinearAdd") in ops


def test_predict_runs_the_int8_graph_through_the_same_processing(tmp_path, tiny_root):
    ckpt = tiny_checkpoint(tmp_path / "c.pt", tiny_root)
    out = tmp_path / "e" / "dasnet.onnx"
    args = ["--checkpoint", str(ckpt), "--out", str(out), "--runs", "1", "--quantize", "int8"]
    assert export.main([*args, "--calibration", "4", "--eval-images", "2"]) == 0
    frames = tmp_path / "frames"  # three test frames under names of their own
    frames.mkdir()
    for i, jpg in enumerate(
        sorted(tiny_root.glob("UAVSemanticSegmentationInput/test/*/*/*.jpg"))[:3]
    ):
        (frames / f"{i}.jpg").write_bytes(jpg.read_bytes())
    base = ["--batch-size", "2", str(frames)]
    assert predict.main([*base, "--checkpoint", str(ckpt), "--out", str(tmp_path / "pt")]) == 0
    int8 = str(tmp_path / "e" / "dasnet.int8.onnx")
    assert predict.main([*base, "--onnx", int8, "--out", str(tmp_path / "q")]) == 0
    masks = sorted(p.name for p in (tmp_path / "pt").glob("*_mask.png"))
    assert len(masks) == 3 and masks == sorted(p.name for p in (tmp_path / "q").glob("*_mask.png"))
    for name in masks:
        a = np.asarray(Image.open(tmp_path / "pt" / name))
        b = np.asarray(Image.open(tmp_path / "q" / name))
        assert a.shape == b.shape and (a == b).mean() > 0.95  # int8 moves a few edge pixels


def test_export_cli_quantize_without_the_dataset_writes_nothing(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "c.pt", tmp_path / "nowhere")
    out = tmp_path / "e" / "dasnet.onnx"
    assert export.main(["--checkpoint", str(ckpt), "--out", str(out), "--quantize", "int8"]) == 2
    assert "nowhere" in capsys.readouterr().err and not out.exists()


def test_predict_onnx_writes_the_checkpoints_masks(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    onnx_file = tmp_path / "m.onnx"
    assert export.main(["--checkpoint", str(ckpt), "--out", str(onnx_file), "--runs", "1"]) == 0
    rng = np.random.default_rng(3)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, (w, h) in enumerate([(50, 40), (32, 32), (45, 61)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(frames / f"{i}.png")
    base = ["--batch-size", "2", str(frames)]
    assert predict.main([*base, "--checkpoint", str(ckpt), "--out", str(tmp_path / "pt")]) == 0
    assert predict.main([*base, "--onnx", str(onnx_file), "--out", str(tmp_path / "ox")]) == 0
    for i in range(3):
        a = np.asarray(Image.open(tmp_path / "pt" / f"{i}_mask.png"))
        b = np.asarray(Image.open(tmp_path / "ox" / f"{i}_mask.png"))
        assert a.shape == b.shape and (a == b).mean() > 0.999


def test_evaluation_counts_the_pixels_whose_mask_follows_the_first_session():
    class Fixed:  # a session that returns fixed logits
        def __init__(self, logits):
            self.logits = logits

        def get_inputs(self):
            return [type("Input", (), {"name": "image", "shape": ["batch", 3, 2, 2]})()]

        def run(self, _names, _feeds):
            return [self.logits]

    a = np.array([[[[1.0, -1.0], [2.0, -2.0]]]], np.float32)
    b = np.array([[[[1.0, 1.0], [2.0, -2.0]]]], np.float32)  # one pixel of four differs
    mask = np.array([[[[1.0, 0.0], [1.0, 0.0]]]], np.float32)
    image = np.zeros((1, 3, 2, 2), np.float32)
    scores = evaluate_onnx({"fp32": Fixed(a), "int8": Fixed(b)}, [(image, mask)] * 2)
    assert scores["fp32"]["agreement"] == 1.0 and scores["int8"]["agreement"] == 0.75
    assert scores["fp32"]["miou"] == 1.0 and scores["int8"]["miou"] == pytest.approx(2 / 3)
    assert scores["int8"]["images"] == 2


def test_timed_sessions_do_not_spin(tmp_path):
    """Sessions timed beside other runners are made with spinning=False (their idle workers
    would otherwise take the cores from the next runner); the default keeps onnxruntime's."""
    path = tmp_path / "m.onnx"
    export.export_checked(tiny_dasnet(), path, SIZE, 17, export.check_batches(SIZE, []))
    key = "session.intra_op.allow_spinning"
    assert session(path, spinning=False).get_session_options().get_session_config_entry(key) == "0"
    default = session(path).get_session_options()
    with pytest.raises(RuntimeError):  # not set: onnxruntime's default, spinning
        default.get_session_config_entry(key)


def test_deployable_keeps_a_model_without_dynamic_convs_plain():
    torch.manual_seed(0)
    unet = build_model("unet", encoder_weights=None).eval()
    net = deployable(unet, "plain")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), unet(x), atol=1e-4)
