"""plots.py tradeoff: mIoU against parameters and FPS, ours beside the published table."""

from __future__ import annotations

import json

from PIL import Image

from tools import plots


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes():
    points = [(1.34, 0.61), (1.34, 0.66), (1.66, 0.68), (24.4, 0.676), (6.0, 0.62)]
    assert plots.pareto_front(points, lower_x_better=True) == [1, 2]
    fps = [(120.6, 0.61), (121.0, 0.66), (113.2, 0.68), (100.7, 0.676)]
    assert plots.pareto_front(fps, lower_x_better=False) == [2, 1]


def test_tradeoff_draws_ours_and_the_final_table(tmp_path, capsys):
    for name, params, miou, fps in [
        ("dasnet", 1_657_672, 0.55, 4.0),
        ("unet", 24_436_369, 0.5, 9.0),
    ]:
        scores = {"precision": 0.9, "recall": 0.8, "dice": 0.7, "miou": miou}
        result = {
            "model": name,
            "params": params,
            "overall": scores,
            "latency": {"ms": 1000 / fps, "fps": fps, "device": "cpu"},
        }
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    out = tmp_path / "fig" / "tradeoff.png"
    assert plots.main(["tradeoff", "--results", str(tmp_path), "--out", str(out)]) == 0
    assert "2 models (ours) and 8 published" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 500


def test_tradeoff_with_nothing_to_draw_says_so(tmp_path, capsys):
    args = ["tradeoff", "--results", str(tmp_path), "--reference", "none"]
    assert plots.main([*args, "--out", str(tmp_path / "t.png")]) == 2
    assert "nothing to draw" in capsys.readouterr().err
    assert not (tmp_path / "t.png").exists()
