"""Repeat training over seeds and report mean ± std and paired t-tests (markdown).

    python run_seeds.py --models dasnet thindyunet --seeds 42 2024 8888 [--demo]
    python run_seeds.py --models dasnet thindyunet --seeds 42 2024 8888 --report-only

For each model and seed: ``train_<model>.py`` then ``test_<model>.py`` with ``dataset.seed=S``,
run folder ``runs/seeds/<model>/seed<S>`` and results ``results/seeds/seed<S>/<model>.json``
(``runs/demo/seeds`` and ``results/demo/seeds`` with ``--demo``). The report is printed and
written to ``results/seeds.md`` (``results/demo/seeds.md``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.checkpoint import atomic_write_text
from engine.metrics import METRICS
from models import MODEL_NAMES

from . import ToolError, run_cli
from .stats import paired_test, summary

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
LABELS = {"precision": "Precision", "recall": "Recall", "dice": "Dice", "miou": "mIoU"}
TESTED = ("miou", "dice")
D_FORMULA = (
    "Cohen's d for paired samples: d = mean(a_i - b_i) / sd(a_i - b_i) with the "
    "sample sd (ddof=1) of the per-seed differences (d_z = t / sqrt(n))."
)

Results = dict[str, dict[int, dict[str, Any]]]  # model -> seed -> results json


def seed_overrides(model: str, seed: int, runs_dir: Path, results_dir: Path) -> list[str]:
    """The config overrides of one model's run with one seed."""
    return [
        f"dataset.seed={seed}",
        f"output.run_dir={runs_dir / model / f'seed{seed}'}",
        f"output.results_dir={results_dir / f'seed{seed}'}",
    ]


def results_file(results_dir: Path, model: str, seed: int) -> Path:
    return results_dir / f"seed{seed}" / f"{model}.json"


def run_one(
    model: str, seed: int, runs_dir: Path, results_dir: Path, demo: bool, extra: list[str]
) -> None:
    """Train then test ``model`` with ``seed`` in subprocesses; ToolError when one fails."""
    common = [
        *(["--demo"] if demo else []),
        *seed_overrides(model, seed, runs_dir, results_dir),
        *extra,
    ]
    for script, args in (
        (f"train_{model}.py", [*common, "trainer.overwrite=true"]),
        (f"test_{model}.py", common),
    ):
        command = [sys.executable, str(REPO / script), *args]
        logger.info("seed %d: %s", seed, shlex.join(command[1:]))
        code = subprocess.run(command).returncode
        if code:
            raise ToolError(
                f"{script} (seed {seed}) failed with exit code {code}: {shlex.join(command)}"
            )


def load_results(results_dir: Path, models: list[str], seeds: list[int]) -> Results:
    """Every model's results file for every seed; a missing or broken file is named."""
    found: Results = {}
    for model in models:
        found[model] = {}
        for seed in seeds:
            path = results_file(results_dir, model, seed)
            if not path.is_file():
                raise ToolError(
                    f"results file '{path}' not found (model {model}, seed {seed}); "
                    f"run without --report-only to make it"
                )
            try:
                found[model][seed] = json.loads(path.read_text())
                _ = {m: found[model][seed]["overall"][m] for m in METRICS}
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ToolError(
                    f"results file '{path}' is not a test results file: {exc!r}"
                ) from None
    return found


def parse_pairs(pairs: list[str] | None, models: list[str]) -> list[tuple[str, str]]:
    """``a:b`` pairs (a compared with b); by default the first model against every other."""
    if not pairs:
        return [(models[0], model) for model in models[1:]]
    parsed = []
    for item in pairs:
        a, sep, b = item.partition(":")
        if not sep or a not in models or b not in models or a == b:
            raise ToolError(
                f"--pairs '{item}' must be A:B with two different models of "
                f"--models ({', '.join(models)})"
            )
        parsed.append((a, b))
    return parsed


def _cell(values: list[float]) -> str:
    mean, std, n = summary(values)
    return f"{mean:.4f}" if n < 2 else f"{mean:.4f} ± {std:.4f}"


def _number(x: float, spec: str) -> str:
    return (
        "undefined"
        if math.isnan(x)
        else ("∞" if x > 0 else "-∞")
        if math.isinf(x)
        else (format(x, spec))
    )


def render_markdown(results: Results, seeds: list[int], pairs: list[tuple[str, str]]) -> str:
    """The seed report: per-model mean ± std table, then paired tests on mIoU and Dice."""
    n = len(seeds)
    seed_list = ", ".join(map(str, seeds))
    lines = [f"## Results over {n} seed{'s' if n != 1 else ''} ({seed_list})", ""]
    lines += [
        "| Model | Seeds | " + " | ".join(LABELS[m] for m in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for model, by_seed in results.items():
        cells = [_cell([by_seed[s]["overall"][m] for s in seeds]) for m in METRICS]
        lines.append(f"| {model} | {n} | " + " | ".join(cells) + " |")
    lines.append("")
    if n < 2:
        lines.append(
            f"Only one seed ({seed_list}): the standard deviation and the paired "
            f"t-tests are undefined and not reported; run at least two seeds, e.g. "
            f"--seeds 42 2024 8888."
        )
        return "\n".join(lines) + "\n"
    lines.append("Mean ± sample standard deviation (ddof=1) over seeds.")
    if not pairs:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"### Paired t-tests over seeds (n = {n})",
        "",
        "| A vs B | Metric | Mean A - B | t | p | Cohen's d |",
        "|---|---|---|---|---|---|",
    ]
    constant = False
    for a, b in pairs:
        for metric in TESTED:
            xa = [results[a][s]["overall"][metric] for s in seeds]
            xb = [results[b][s]["overall"][metric] for s in seeds]
            t, p, d = paired_test(xa, xb)
            constant |= not math.isfinite(t)
            diff = summary([x - y for x, y in zip(xa, xb, strict=True)])[0]
            lines.append(
                f"| {a} vs {b} | {LABELS[metric]} | {diff:+.4f} | {_number(t, '.3f')} "
                f"| {_number(p, '.4f')} | {_number(d, '.3f')} |"
            )
    lines += [
        "",
        "Two-sided paired t-test (scipy.stats.ttest_rel), pairs matched by seed. " + D_FORMULA,
    ]
    if constant:
        lines.append(
            "Where every seed gives the same difference its spread is 0, so t and d "
            "are infinite (or undefined when the difference is 0)."
        )
    return "\n".join(lines) + "\n"


def report(
    results_dir: Path, models: list[str], seeds: list[int], pairs: list[tuple[str, str]], out: Path
) -> str:
    """Read the results files, render the markdown, write it atomically to ``out``."""
    text = render_markdown(load_results(results_dir, models, seeds), seeds, pairs)
    atomic_write_text(out, text)
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_seeds.py", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True, choices=MODEL_NAMES)
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 2024, 8888])
    p.add_argument("--demo", action="store_true", help="demo data and settings (--demo runs)")
    p.add_argument(
        "--pairs",
        nargs="+",
        metavar="A:B",
        help="models to compare (default: the first model against every other)",
    )
    p.add_argument(
        "--skip-existing", action="store_true", help="keep a model/seed whose results file exists"
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: report from the existing results files",
    )
    p.add_argument("--results-dir", help="default: results/seeds (results/demo/seeds)")
    p.add_argument("--runs-dir", help="default: runs/seeds (runs/demo/seeds)")
    p.add_argument(
        "--out", help="markdown report (default: results/seeds.md, results/demo/seeds.md)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides for every run, e.g. trainer.epochs=10",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line of run_seeds.py."""
    args = parser().parse_args(argv)
    return run_cli(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    models = list(dict.fromkeys(args.models))
    seeds = list(dict.fromkeys(args.seeds))
    pairs = parse_pairs(args.pairs, models)
    base = Path("results/demo" if args.demo else "results")
    results_dir = Path(args.results_dir or base / "seeds")
    runs_dir = Path(args.runs_dir or ("runs/demo/seeds" if args.demo else "runs/seeds"))
    out = Path(args.out or base / "seeds.md")
    if not args.report_only:
        for model in models:
            for seed in seeds:
                if args.skip_existing and results_file(results_dir, model, seed).is_file():
                    logger.info("%s seed %d: results exist, skipped", model, seed)
                    continue
                run_one(model, seed, runs_dir, results_dir, args.demo, list(args.overrides))
    print(report(results_dir, models, seeds, pairs, out), end="")
    print(f"written to {out}")
    return 0
