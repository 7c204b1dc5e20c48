"""Gather results/<model>.json into the paper's two tables (markdown), beside the paper's rows.

python report.py [--results results] [--out report.md]
python report.py --demo             # the demo's results (results/demo)
python report.py --reference final  # beside the authors' final version (eight models, 3 seeds)
python report.py --mode pad         # results of test.mode=pad (results/<model>_pad.json)

Where run_seeds.py has written <results>/seeds.md, our rows are the means (± std) of the
results files of every seed in <results>/seeds/ (``--single-run`` reads <results>/*.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.checkpoint import atomic_write_text
from engine.inference_modes import MODES
from models.published import FINAL_STATS, FIRST_VERSION, LABELS, REFERENCE_NOTES, REFERENCES

# The published tables live in models/published.py; PAPER is the one a report compares with.
PAPER: dict[str, dict[str, float]] = FIRST_VERSION
ABLATION = ("thindyunet", "fulldyunet", "deepsupdyunet", "dasnet")
COLUMNS = ("precision", "recall", "dice", "miou")


def load_results(folder: str | Path, mode: str = "resize") -> dict[str, dict[str, Any]]:
    """Every results file in ``folder`` that names one of the eight models and was produced by
    ``mode`` (test.mode; files from before test.mode existed are resize)."""
    found = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"results file '{path}' cannot be read: {exc}") from None
        if isinstance(data, dict) and data.get("model") in LABELS and _mode(data) == mode:
            found[data["model"]] = data
    return found


def _ours(r: dict[str, Any]) -> list[str]:
    lat = r.get("latency") or {}
    std = r.get("std") or {}  # multi-seed results: the sample std beside each mean
    return [
        f"{r['params'] / 1e6:.2f}",
        *(f"{r['overall'][c]:.4f}" + (f" ± {std[c]:.4f}" if c in std else "") for c in COLUMNS),
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


def _source(r: dict[str, Any]) -> str:
    return f"ours ({r['seeds']} seeds)" if r.get("seeds") else "ours"


def main_table(
    results: dict[str, dict[str, Any]], reference: dict[str, dict[str, float]] = PAPER
) -> str:
    """The paper's table: each model's row from our results beside the reference's row (our
    models the reference lacks come last, alone)."""
    lines = [
        "| Model | source | Params (M) | Precision | Recall | Dice | mIoU | ms | FPS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    extra = [name for name in LABELS if name in results and name not in reference]
    for name in [*reference, *extra]:
        if name in results:
            r = results[name]
            lines.append("| " + " | ".join([LABELS[name], _source(r), *_ours(r)]) + " |")
        if name in reference:
            lines.append(
                "| " + " | ".join([LABELS[name], "paper", *_paper(reference[name])]) + " |"
            )
    devices = sorted({r["latency"]["device"] for r in results.values() if r.get("latency")})
    if devices:
        lines.append(
            f"\nOur ms/FPS: batch 1, FP32, on {', '.join(devices)}; the paper's on an NVIDIA A6000."
        )
    return "\n".join(lines)


def improvement(miou: float, base: float) -> str:
    return f"{100 * (miou - base) / base:+.1f}%"


def ablation_table(
    results: dict[str, dict[str, Any]], reference: dict[str, dict[str, float]] = PAPER
) -> str:
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
    paper_base = reference["thindyunet"]["miou"]
    for name in ABLATION:
        ours = results.get(name, {}).get("overall", {}).get("miou")
        paper = reference[name]["miou"]
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
    for name in LABELS:
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


def load_seed_results(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Our multi-seed results, one aggregate per model, when run_seeds.py has written
    ``<folder>/seeds.md``; else empty. An aggregate has the shape of a results file (means) plus
    ``std`` (sample std per score, with 2 seeds or more), ``seeds`` and ``by_seed``."""
    folder = Path(folder)
    if not (folder / "seeds.md").is_file():
        return {}
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for seed_dir in sorted((folder / "seeds").glob("seed*")):
        if not seed_dir.name[4:].isdigit():
            continue
        for name, result in load_results(seed_dir).items():
            runs.setdefault(name, {})[int(seed_dir.name[4:])] = result
    return {name: _aggregate(by_seed) for name, by_seed in runs.items()}


def _aggregate(by_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds in the shape of one results file, with the std of each score."""
    from tools.stats import summary

    first = next(iter(by_seed.values()))
    runs = list(by_seed.values())
    overall = {c: summary([r["overall"][c] for r in runs]) for c in COLUMNS}
    modalities = {
        m: {k: summary([r["modalities"][m][k] for r in runs])[0] for k in ("miou", "dice")}
        for m in first.get("modalities", {})
        if all(m in r.get("modalities", {}) for r in runs)
    }
    latencies = [r["latency"] for r in runs if r.get("latency")]
    latency = None
    if latencies:
        latency = {
            "ms": summary([lat["ms"] for lat in latencies])[0],
            "fps": summary([lat["fps"] for lat in latencies])[0],
            "device": ", ".join(sorted({lat["device"] for lat in latencies})),
        }
    return {
        "model": first["model"],
        "params": first["params"],
        "overall": {c: mean for c, (mean, _, _) in overall.items()},
        "std": {c: std for c, (_, std, n) in overall.items() if n > 1},
        "modalities": modalities,
        "latency": latency,
        "seeds": len(runs),
        "by_seed": by_seed,
    }


def statistics_table(results: dict[str, dict[str, Any]]) -> str:
    """The authors' published paired tests beside ours on the same pair (mIoU over seeds,
    matched by seed), where our multi-seed results hold both models."""
    from tools.stats import paired_test

    lines = [
        "| A vs B | seeds (authors) | p (authors) | Cohen's d (authors) | seeds (ours) | "
        "mean A - B (ours) | p (ours) | Cohen's d (ours) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for test in FINAL_STATS:
        ours = ["-"] * 4
        a, b = results.get(test.a, {}), results.get(test.b, {})
        shared = sorted(set(a.get("by_seed", {})) & set(b.get("by_seed", {})))
        if len(shared) >= 2:
            xa = [a["by_seed"][s]["overall"]["miou"] for s in shared]
            xb = [b["by_seed"][s]["overall"]["miou"] for s in shared]
            _, p, d = paired_test(xa, xb)
            diff = sum(xa) / len(xa) - sum(xb) / len(xb)
            ours = [str(len(shared)), f"{diff:+.4f}", f"{p:.3f}", f"{d:.2f}"]
        lines.append(
            f"| {LABELS[test.a]} vs {LABELS[test.b]} | {test.seeds} | {test.p} "
            f"| {test.cohens_d} | " + " | ".join(ours) + " |"
        )
    lines.append(
        "\nTwo-sided paired t-test on mIoU over seeds; Cohen's d = mean / sd of the per-seed "
        "differences (tools/stats.py). The authors do not say which d they computed."
    )
    return "\n".join(lines)


def _mode(data: dict[str, Any]) -> str:
    return (data.get("protocol") or {}).get("mode", "resize")


def size_table(results: dict[str, dict[str, Any]]) -> str:
    """mIoU per UAV size bin (engine.breakdown.SIZE_BINS) for every model, and the images per
    bin; frames without a UAV get their false-positive rate."""
    from engine.breakdown import EMPTY, SIZE_BINS

    names = [name for name in LABELS if results.get(name, {}).get("sizes")]
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
    for name in LABELS:
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


def render(
    results: dict[str, dict[str, Any]], reference: str = "first", seeds: bool = False
) -> str:
    """The whole report as markdown, beside the ``reference`` version's table."""
    table = REFERENCES[reference]
    ours = "our means over seeds (± sample std)" if seeds else "our single runs"
    modes = sorted({_mode(r) for r in results.values()})
    sections = [
        "## Comparison with the paper (Table: segmentation accuracy and speed)",
        f"Reference: {REFERENCE_NOTES[reference]}; {ours}.",
        main_table(results, table),
        "## Ablation (mIoU, improvement over ThinDyUNet)",
        ablation_table(results, table),
        "## Per modality (ours)",
        modality_table(results),
        f"## By UAV size (ours, test.mode {', '.join(modes)})",
        size_table(results),
        "## Best and worst sequences (ours)",
        sequence_table(results),
    ]
    if reference == "final":
        sections += ["## Statistics over seeds (DAS-Net vs UNet)", statistics_table(results)]
    return "\n\n".join(sections) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", help="folder of <model>.json files (default: results)")
    p.add_argument("--demo", action="store_true", help="read results/demo")
    p.add_argument("--out", help="also write the markdown to this file")
    p.add_argument(
        "--reference",
        choices=sorted(REFERENCES),
        default="first",
        help="the published table to compare with: the paper's first version (seven models, "
        "one run) or the authors' final version (eight models, three-seed means)",
    )
    p.add_argument(
        "--single-run",
        action="store_true",
        help="use <results>/<model>.json even where run_seeds.py has written multi-seed results",
    )
    p.add_argument(
        "--mode",
        default="resize",
        choices=MODES,
        help="the test.mode whose results to tabulate (default: resize, the paper's protocol)",
    )
    args = p.parse_args(argv)
    folder = Path(args.results or ("results/demo" if args.demo else "results"))
    try:
        results = load_results(folder, args.mode)
        seeded = {} if args.single_run else load_seed_results(folder)
        results.update(seeded)
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
    text = render(results, args.reference, bool(seeded))
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
