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


def test_final_reference_has_the_authors_eight_rows_and_their_statistics(tmp_path, capsys):
    (tmp_path / "mobileunet.json").write_text(json.dumps(fake("mobileunet", 0.6, 6_628_945)))
    assert report.main(["--results", str(tmp_path), "--reference", "final"]) == 0
    out = capsys.readouterr().out
    paper_rows = [line for line in out.splitlines() if "| paper |" in line]
    assert len(paper_rows) == 8
    assert "| MobileUNet | paper | 6.0 | 0.9248 | 0.6593 | 0.6790 | 0.6185 | 10.23 | 97.7 |" in out
    assert "| MobileUNet | ours | 6.63 | 0.9000 |" in out
    assert "| DAS-Net | paper | 1.66 | 0.8422 | 0.7643 | 0.7509 | 0.6780 | 8.83 | 113.2 |" in out
    assert "| DAS-Net vs UNet | 3 | 0.045 | 1.74 | - |" in out
    # the final version's ablation: (0.6780 - 0.6115) / 0.6115 = +10.9%
    assert "| DAS-Net | yes | yes | yes | - | - | 0.6780 | +10.9% |" in out


def test_first_reference_shows_mobileunet_as_ours_only(tmp_path, capsys):
    (tmp_path / "mobileunet.json").write_text(json.dumps(fake("mobileunet", 0.6, 6_628_945)))
    assert report.main(["--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| MobileUNet | ours |" in out and "| MobileUNet | paper |" not in out
    assert len([line for line in out.splitlines() if "| paper |" in line]) == 7


def test_multi_seed_results_give_means_with_std_and_our_paired_test(tmp_path, capsys):
    (tmp_path / "dasnet.json").write_text(json.dumps(fake("dasnet", 0.1)))  # a single run
    mious = {"dasnet": (0.60, 0.62, 0.64), "unet": (0.58, 0.59, 0.61)}
    for k, seed in enumerate((42, 2024, 8888)):
        folder = tmp_path / "seeds" / f"seed{seed}"
        folder.mkdir(parents=True)
        for name, values in mious.items():
            (folder / f"{name}.json").write_text(json.dumps(fake(name, values[k])))
    (tmp_path / "seeds.md").write_text("## Results over 3 seeds\n")
    assert report.main(["--results", str(tmp_path), "--reference", "final"]) == 0
    out = capsys.readouterr().out
    assert "| DAS-Net | ours (3 seeds) | 1.66 | 0.9000 ± 0.0000 |" in out
    assert "0.6200 ± 0.0200 | 20.00 | 50.0 |" in out  # mean and sample std of 0.60, 0.62, 0.64
    # differences 0.02, 0.03, 0.03: mean 0.0267, sd 0.00577, d = 4.62, t = 8.0, p = 0.0153
    assert "| DAS-Net vs UNet | 3 | 0.045 | 1.74 | 3 | +0.0267 | 0.015 | 4.62 |" in out
    assert report.main(["--results", str(tmp_path), "--single-run"]) == 0
    assert (
        "| DAS-Net | ours | 1.66 | 0.9000 | 0.8000 | 0.7000 | 0.1000 |" in capsys.readouterr().out
    )


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
