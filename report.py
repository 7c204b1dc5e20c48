"""Gather results/<model>.json into the paper's two tables (markdown), beside the paper's rows.

python report.py [--results results] [--out report.md]
python report.py --demo             # the demo's results (results/demo)
python report.py --mode pad         # results of test.mode=pad (results/<model>_pad.json)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.checkpoint import atomic_write_text

# SPEC section 7: the paper's table (first version) in its row order.
PAPER: dict[str, dict[str, float]] = {
    "thindyunet": dict(
        params=1.34, precision=0.9597, recall=0.5937, dice=0.6407, miou=0.5731, ms=8.72, fps=114.7
    ),
    "pspnet": dict(
        params=21.4, precision=0.8553, recall=0.6686, dice=0.6768, miou=0.6094, ms=13.80, fps=72.5
    ),
    "pan": dict(
        params=21.4, precision=0.9055, recall=0.7047, dice=0.7045, miou=0.6438, ms=14.77, fps=67.7
    ),
    "deepsupdyunet": dict(
        params=1.34, precision=0.9364, recall=0.6838, dice=0.7084, miou=0.6485, ms=8.67, fps=115.3
    ),
    "fulldyunet": dict(
        params=1.63, precision=0.8794, recall=0.7301, dice=0.7394, miou=0.6706, ms=9.49, fps=105.4
    ),
    "unet": dict(
        params=24.4, precision=0.9003, recall=0.7333, dice=0.7413, miou=0.6760, ms=14.16, fps=70.6
    ),
    "dasnet": dict(
        params=1.66, precision=0.8408, recall=0.7700, dice=0.7506, miou=0.6786, ms=9.41, fps=106.3
    ),
}
LABELS = {
    "thindyunet": "ThinDyUNet",
    "pspnet": "PSPNet",
    "pan": "PAN",
    "deepsupdyunet": "DeepSupDyUNet",
    "fulldyunet": "FullDyUNet",
    "unet": "UNet",
    "dasnet": "DAS-Net",
}
ABLATION = ("thindyunet", "fulldyunet", "deepsupdyunet", "dasnet")
COLUMNS = ("precision", "recall", "dice", "miou")


def load_results(folder: str | Path, mode: str = "resize") -> dict[str, dict[str, Any]]:
    """Every results file in ``folder`` that names one of the seven models and was produced by
    ``mode`` (test.mode; files from before test.mode existed are resize)."""
    found = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"results file '{path}' cannot be read: {exc}") from None
        if isinstance(data, dict) and data.get("model") in PAPER and _mode(data) == mode:
            found[data["model"]] = data
    return found


def _ours(r: dict[str, Any]) -> list[str]:
    lat = r.get("latency") or {}
    return [
        f"{r['params'] / 1e6:.2f}",
        *(f"{r['overall'][c]:.4f}" for c in COLUMNS),
        f"{lat['ms']:.2f}" if lat else "-",
        f"{lat['fps']:.1f}" if lat else "-",
    ]


def _paper(p: dict[str, float]) -> list[str]:
    return [
        f"{p['params']}",
        *(f"{p[c]:.4f}" for c in COLUMNS),
        f"{p['ms']:.2f}",
        f"{p['fps']:.1f}",
    ]


def main_table(results: dict[str, dict[str, Any]]) -> str:
    """The paper's table: each model's row from our results beside the paper's row."""
    lines = [
        "| Model | source | Params (M) | Precision | Recall | Dice | mIoU | ms | FPS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, paper in PAPER.items():
        if name in results:
            lines.append("| " + " | ".join([LABELS[name], "ours", *_ours(results[name])]) + " |")
        lines.append("| " + " | ".join([LABELS[name], "paper", *_paper(paper)]) + " |")
    devices = sorted({r["latency"]["device"] for r in results.values() if r.get("latency")})
    if devices:
        lines.append(
            f"\nOur ms/FPS: batch 1, FP32, on {', '.join(devices)}; the paper's on an NVIDIA A6000."
        )
    return "\n".join(lines)


def improvement(miou: float, base: float) -> str:
    return f"{100 * (miou - base) / base:+.1f}%"


def ablation_table(results: dict[str, dict[str, Any]]) -> str:
    """mIoU of the dynamic family and its improvement over ThinDyUNet, ours beside the paper's."""
    lines = [
        "| Model | dynamic decoder | attention gates | deep supervision | mIoU (ours) | "
        "vs ThinDyUNet (ours) | mIoU (paper) | vs ThinDyUNet (paper) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    switches = {
        "thindyunet": ("", "", ""),
        "fulldyunet": ("yes", "", ""),
        "deepsupdyunet": ("", "", "yes"),
        "dasnet": ("yes", "yes", "yes"),
    }
    base = results.get("thindyunet", {}).get("overall", {}).get("miou")
    paper_base = PAPER["thindyunet"]["miou"]
    for name in ABLATION:
        ours = results.get(name, {}).get("overall", {}).get("miou")
        paper = PAPER[name]["miou"]
        lines.append(
            "| "
            + " | ".join(
                [
                    LABELS[name],
                    *switches[name],
                    f"{ours:.4f}" if ours is not None else "-",
                    improvement(ours, base) if ours is not None and base else "-",
                    f"{paper:.4f}",
                    improvement(paper, paper_base) if name != "thindyunet" else "-",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def modality_table(results: dict[str, dict[str, Any]]) -> str:
    """Per-modality mIoU and Dice (VL vs IR), which the paper does not report."""
    lines = [
        "| Model | mIoU visible | mIoU infrared | Dice visible | Dice infrared |",
        "|---|---|---|---|---|",
    ]
    for name in PAPER:
        if name not in results:
            continue
        mods = results[name].get("modalities", {})

        def cell(m: str, key: str, mods: dict = mods) -> str:
            return f"{mods[m][key]:.4f}" if m in mods else "-"

        lines.append(
            f"| {LABELS[name]} | {cell('visible', 'miou')} | {cell('infrared', 'miou')}"
            f" | {cell('visible', 'dice')} | {cell('infrared', 'dice')} |"
        )
    return "\n".join(lines)


def _mode(data: dict[str, Any]) -> str:
    return (data.get("protocol") or {}).get("mode", "resize")


def size_table(results: dict[str, dict[str, Any]]) -> str:
    """mIoU per UAV size bin (engine.breakdown.SIZE_BINS) for every model, and the images per
    bin; frames without a UAV get their false-positive rate."""
    from engine.breakdown import EMPTY, SIZE_BINS

    names = [name for name in PAPER if results.get(name, {}).get("sizes")]
    if not names:
        return "(no size breakdown in these results: re-run the test scripts)"
    bins = [b for b, _, _ in SIZE_BINS]
    first = results[names[0]]["sizes"]
    lines = [
        "| Model | "
        + " | ".join(f"mIoU {b} ({first[b]['images']})" for b in bins)
        + f" | mIoU no UAV ({first[EMPTY]['images']}) | FP rate no UAV |",
        "|---|" + "---|" * (len(bins) + 2),
    ]
    for name in names:
        sizes = results[name]["sizes"]

        def cell(b: str, key: str = "miou", sizes: dict = sizes) -> str:
            return f"{sizes[b][key]:.4f}" if sizes[b]["images"] else "-"

        lines.append(
            f"| {LABELS[name]} | "
            + " | ".join(cell(b) for b in bins)
            + f" | {cell(EMPTY)} | {cell(EMPTY, 'false_positive_rate')} |"
        )
    ranges = ", ".join(
        f"{b} {lo:.1%}-{hi:.1%}" if hi != float("inf") else f"{b} >= {lo:.1%}"
        for b, lo, hi in SIZE_BINS
    )
    lines.append(f"\nUAV area as a fraction of the original frame: {ranges}; (images per bin).")
    return "\n".join(lines)


def sequence_table(results: dict[str, dict[str, Any]], count: int = 3) -> str:
    """Each model's best and worst test sequences by mIoU."""
    lines = ["| Model | worst sequences (mIoU) | best sequences (mIoU) |", "|---|---|---|"]
    for name in PAPER:
        seqs = results.get(name, {}).get("sequences")
        if not seqs:
            continue
        ranked = sorted(seqs.items(), key=lambda kv: (kv[1]["miou"], kv[0]))
        worst = ", ".join(f"{k} {v['miou']:.3f}" for k, v in ranked[:count])
        best = ", ".join(f"{k} {v['miou']:.3f}" for k, v in ranked[::-1][:count])
        lines.append(f"| {LABELS[name]} | {worst} | {best} |")
    if len(lines) == 2:
        return "(no per-sequence breakdown in these results: re-run the test scripts)"
    return "\n".join(lines)


def render(results: dict[str, dict[str, Any]]) -> str:
    """The whole report as markdown."""
    modes = sorted({_mode(r) for r in results.values()})
    return (
        "\n\n".join(
            [
                "## Comparison with the paper (Table: segmentation accuracy and speed)",
                main_table(results),
                "## Ablation (mIoU, improvement over ThinDyUNet)",
                ablation_table(results),
                "## Per modality (ours)",
                modality_table(results),
                f"## By UAV size (ours, test.mode {', '.join(modes)})",
                size_table(results),
                "## Best and worst sequences (ours)",
                sequence_table(results),
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", help="folder of <model>.json files (default: results)")
    p.add_argument("--demo", action="store_true", help="read results/demo")
    p.add_argument("--out", help="also write the markdown to this file")
    p.add_argument(
        "--mode",
        default="resize",
        choices=("resize", "pad", "slide"),
        help="the test.mode whose results to tabulate (default: resize, the paper's protocol)",
    )
    args = p.parse_args(argv)
    folder = Path(args.results or ("results/demo" if args.demo else "results"))
    try:
        results = load_results(folder, args.mode)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not results:
        print(
            f"error: no results in '{folder}'; run a test script first, e.g. "
            f"python test_dasnet.py{' --demo' if args.demo else ''}",
            file=sys.stderr,
        )
        return 2
    text = render(results)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
