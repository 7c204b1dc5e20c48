"""report.py renders the paper's tables from results files."""

from __future__ import annotations

import json

import report


def fake(model: str, miou: float, params: int = 1_657_672) -> dict:
    scores = {"images": 10, "precision": 0.9, "recall": 0.8, "dice": 0.7, "miou": miou}
    return {
        "model": model,
        "params": params,
        "overall": scores,
        "modalities": {"visible": {**scores, "images": 5}, "infrared": {**scores, "images": 5}},
        "latency": {"ms": 20.0, "fps": 50.0, "device": "cpu (x86_64, 2 threads)"},
    }


def test_report_puts_each_row_beside_the_papers_and_computes_the_ablation(tmp_path, capsys):
    for name, miou in [("thindyunet", 0.5), ("dasnet", 0.6)]:
        (tmp_path / f"{name}.json").write_text(json.dumps(fake(name, miou)))
    (tmp_path / "seeds.json").write_text("[]")  # other files in the folder are ignored
    assert report.main(["--results", str(tmp_path), "--out", str(tmp_path / "r.md")]) == 0
    out = capsys.readouterr().out
    assert "| DAS-Net | ours | 1.66 | 0.9000 | 0.8000 | 0.7000 | 0.6000 | 20.00 | 50.0 |" in out
    assert "| DAS-Net | paper | 1.66 | 0.8408 | 0.7700 | 0.7506 | 0.6786 | 9.41 | 106.3 |" in out
    assert "| PAN | ours" not in out and "| PAN | paper" in out  # missing results: paper row only
    # Ablation: (0.6 - 0.5) / 0.5 = +20.0% ours; paper (0.6786 - 0.5731) / 0.5731 = +18.4%.
    assert "| DAS-Net | yes | yes | yes | 0.6000 | +20.0% | 0.6786 | +18.4% |" in out
    assert "+17.0%" in out and "+13.2%" in out
    assert (tmp_path / "r.md").read_text() in out + "\n"


def test_report_without_results_says_what_to_run(tmp_path, capsys):
    assert report.main(["--results", str(tmp_path)]) == 2
    assert "python test_dasnet.py" in capsys.readouterr().err


def with_breakdowns(result: dict, tiny: float, mode: str = "resize") -> dict:
    def b(miou: float, images: int) -> dict:
        return {"images": images, "miou": miou, "dice": miou, "precision": 1.0, "recall": 1.0}

    return {
        **result,
        "protocol": {"mode": mode},
        "sizes": {
            "tiny": b(tiny, 3),
            "small": b(0.5, 2),
            "medium": b(0.7, 0),
            "large": b(0.9, 1),
            "empty": {**b(0.75, 4), "false_positive_rate": 0.25},
        },
        "sequences": {"seq1": b(0.2, 5), "seq2": b(0.9, 3), "seq3": b(0.6, 2)},
    }


def test_report_tabulates_miou_by_uav_size_and_the_best_and_worst_sequences(tmp_path, capsys):
    (tmp_path / "dasnet.json").write_text(json.dumps(with_breakdowns(fake("dasnet", 0.6), 0.1)))
    (tmp_path / "unet.json").write_text(json.dumps(with_breakdowns(fake("unet", 0.5), 0.3)))
    pad = with_breakdowns(fake("dasnet", 0.99), 0.99, mode="pad")
    (tmp_path / "dasnet_pad.json").write_text(json.dumps(pad))
    assert report.main(["--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| Model | mIoU tiny (3) | mIoU small (2) | mIoU medium (0) | mIoU large (1) |" in out
    assert "| DAS-Net | 0.1000 | 0.5000 | - | 0.9000 | 0.7500 | 0.2500 |" in out
    assert "| UNet | 0.3000 |" in out
    assert "| DAS-Net | seq1 0.200, seq3 0.600, seq2 0.900 | seq2 0.900, seq3 0.600" in out
    assert "0.9900" not in out  # the pad results are not the paper protocol's
    assert report.main(["--results", str(tmp_path), "--mode", "pad"]) == 0
    out = capsys.readouterr().out
    assert "| DAS-Net | 0.9900 |" in out and "UNet | ours" not in out
