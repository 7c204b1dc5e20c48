"""Paired experiments on the demo data: two arms of config overrides, several seeds, in parallel.

    python experiments.py --device cuda --jobs 6              # the three experiments below
    python experiments.py --only augment --epochs 4 --max-samples 120
    python experiments.py --arm lr:1e-4 trainer.lr=1e-4 --arm lr:1e-3 trainer.lr=1e-3

An experiment compares arm A with arm B, each a list of ``key=value`` overrides of
``train_dasnet.py --demo``; every arm is trained and tested with every seed (``dataset.seed``
draws the subset, the initialisation and the batch order, so runs are paired by seed). Both
arms train for the same number of epochs (early stopping is off), and the best checkpoint on
the validation loss is tested. Runs whose resolved configs are equal are trained once and
shared between experiments. The report (means +- std, paired t-tests and Cohen's d from
tools/seeds.py and tools/stats.py, per-seed values and the exact commands) is written to
docs/experiments.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.checkpoint import atomic_write_text
from engine.config import ConfigError, config_diff, load_config

from . import ToolError, run_cli
from .seeds import render_markdown
from .stats import paired_test, summary

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
MODEL = "dasnet"

# name -> (title, arm A, arm B); an arm is (label, overrides). B is compared against A.
EXPERIMENTS: dict[str, tuple[str, tuple[str, list[str]], tuple[str, list[str]]]] = {
    "init_lr1e-4": (
        "Kernel-bank initialisation at the paper's lr (1e-4)",
        ("paper", ["model.dyconv_init=paper", "trainer.lr=1e-4"]),
        ("kaiming", ["model.dyconv_init=kaiming", "trainer.lr=1e-4"]),
    ),
    "init_lr1e-3": (
        "Kernel-bank initialisation at the demo's lr (1e-3)",
        ("paper", ["model.dyconv_init=paper", "trainer.lr=1e-3"]),
        ("kaiming", ["model.dyconv_init=kaiming", "trainer.lr=1e-3"]),
    ),
    "augment": (
        "Augmentation: none (the paper) against flip+scale",
        ("none", ["dataset.augment=none"]),
        ("flip+scale", ["dataset.augment=flip+scale"]),
    ),
}


@dataclass
class Run:
    """One training and test of DAS-Net: a resolved config, shared by the arms that ask for it."""

    key: str  # folder name under runs/ and results/
    overrides: list[str]
    seed: int
    device: str
    commands: list[list[str]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0


def parse_arms(items: list[list[str]] | None) -> dict[str, tuple[str, Any, Any]]:
    """``--arm EXP:LABEL k=v ...`` twice per experiment, as EXPERIMENTS entries."""
    arms: dict[str, list[tuple[str, list[str]]]] = {}
    for item in items or []:
        name, sep, label = item[0].partition(":")
        if not sep or not name or not label:
            raise ToolError(f"--arm '{item[0]}' must start with EXPERIMENT:LABEL, e.g. lr:1e-4")
        arms.setdefault(name, []).append((label, list(item[1:])))
    for name, pair in arms.items():
        if len(pair) != 2 or pair[0][0] == pair[1][0]:
            raise ToolError(f"experiment '{name}' needs exactly two --arm with different labels")
    return {name: (name, pair[0], pair[1]) for name, pair in arms.items()}


def common_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides every run shares: the budget, no early stopping, no latency timing."""
    extra = [
        f"trainer.epochs={args.epochs}",
        f"trainer.early_stopping.patience={args.epochs}",  # same epochs for every arm
        "test.latency=false",
    ]
    if args.max_samples is not None:
        extra.append(f"dataset.max_samples={args.max_samples}")
    return [*extra, *args.overrides]


def run_key(common: list[str], overrides: list[str]) -> str:
    """A folder name for an arm's resolved config: its differences from the shared one."""
    base = load_config(MODEL, overrides=common, demo=True)
    diff = config_diff(base, load_config(MODEL, overrides=[*common, *overrides], demo=True))
    text = ",".join(f"{k}={v}" for k, (_, v) in sorted(diff.items())) or "base"
    return "".join(c if c.isalnum() or c in "=.,-+_" else "_" for c in text)


def plan(
    experiments: dict[str, tuple[str, Any, Any]],
    common: list[str],
    seeds: list[int],
    devices: list[str],
) -> tuple[dict[tuple[str, int], Run], dict[tuple[str, str], str]]:
    """Every distinct (config, seed) run, and which config each (experiment, label) uses.

    Every arm's config is loaded first, so an unknown key stops everything before any run.
    """
    runs: dict[tuple[str, int], Run] = {}
    arm_keys: dict[tuple[str, str], str] = {}
    for name, (_, *arms) in experiments.items():
        for label, overrides in arms:
            merged = [*common, *overrides]
            try:
                key = run_key(common, overrides)
            except ConfigError as exc:
                raise ToolError(f"experiment '{name}', arm '{label}': {exc}") from None
            arm_keys[(name, label)] = key
            for seed in seeds:
                runs.setdefault((key, seed), Run(key, merged, seed, devices[0]))
    # Seed by seed, so that a run cut short by a time budget leaves whole seeds behind.
    runs = dict(sorted(runs.items(), key=lambda item: seeds.index(item[0][1])))
    for k, run in enumerate(runs.values()):
        run.device = devices[k % len(devices)]
    return runs, arm_keys


def execute(run: Run, runs_dir: Path, results_dir: Path, threads: int, deadline: float) -> Run:
    """Train then test one run in subprocesses, logging to ``<run folder>/log.txt``; a run
    that would start after ``deadline`` (time.perf_counter) is not started."""
    if time.perf_counter() > deadline:
        run.error = "not started: --budget-minutes reached"
        return run
    run_dir = runs_dir / run.key / f"seed{run.seed}"
    out_dir = results_dir / run.key / f"seed{run.seed}"
    args = [
        "--demo",
        *run.overrides,
        f"dataset.seed={run.seed}",
        f"trainer.device={run.device}",
        f"output.run_dir={run_dir}",
        f"output.results_dir={out_dir}",
    ]
    run.commands = [
        [sys.executable, str(REPO / f"train_{MODEL}.py"), *args, "trainer.overwrite=true"],
        [sys.executable, str(REPO / f"test_{MODEL}.py"), *args],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log:
        for command in run.commands:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
            if code:
                tail = (run_dir / "log.txt").read_text().strip().splitlines()[-1:]
                run.error = f"exit {code}: {tail[0] if tail else ''} (log: {run_dir / 'log.txt'})"
                break
    run.seconds = time.perf_counter() - started
    if run.error is None:
        run.result = json.loads((out_dir / f"{MODEL}.json").read_text())
    return run


def _verdict(a: str, b: str, xa: list[float], xb: list[float]) -> str:
    diff = summary([y - x for x, y in zip(xa, xb, strict=True)])[0]
    if len(xa) < 2:
        return f"{b} - {a}: mIoU {diff:+.4f} (one seed: no test)"
    t, p, d = paired_test(xb, xa)
    word = "significant" if p < 0.05 else "not significant"
    return f"{b} - {a}: mIoU {diff:+.4f}, p = {p:.3g} ({word} at 0.05), d = {d:.2f}"


def render(
    experiments: dict[str, tuple[str, Any, Any]],
    runs: dict[tuple[str, int], Run],
    arm_keys: dict[tuple[str, str], str],
    seeds: list[int],
    header: list[str],
) -> str:
    """docs/experiments.md: per experiment the arms, the seed report, per-seed values, commands."""
    lines = [*header, ""]
    for name, (title, (la, oa), (lb, ob)) in experiments.items():
        lines += [
            f"## {title}",
            "",
            f"`{name}`: arm A **{la}** `{shlex.join(oa)}`, arm B **{lb}** `{shlex.join(ob)}`.",
            "",
        ]
        arm_runs = {
            label: [runs[(arm_keys[(name, label)], s)] for s in seeds] for label in (la, lb)
        }
        failed = [r for rs in arm_runs.values() for r in rs if r.result is None]
        if failed:
            lines += [
                "Not measured: "
                + "; ".join(f"{r.key} seed {r.seed}: {r.error or 'running'}" for r in failed),
                "",
            ]
            continue
        results = {label: {r.seed: r.result for r in rs} for label, rs in arm_runs.items()}
        seed_report = render_markdown(results, seeds, [(lb, la)])
        lines += [
            line.replace("## ", "### ", 1) if line.startswith("#") else line.replace("Model", "Arm")
            for line in seed_report.splitlines()
        ]
        miou = {label: [r.result["overall"]["miou"] for r in rs] for label, rs in arm_runs.items()}
        lines += [
            "",
            "Per seed (test mIoU and Dice):",
            "",
            "| Seed | " + " | ".join(f"{lb_} mIoU | {lb_} Dice" for lb_ in (la, lb)) + " |",
            "|---|" + "---|---|" * 2,
        ]
        for k, seed in enumerate(seeds):
            cells = []
            for label in (la, lb):
                o = arm_runs[label][k].result["overall"]
                cells += [f"{o['miou']:.4f}", f"{o['dice']:.4f}"]
            lines.append(f"| {seed} | " + " | ".join(cells) + " |")
        lines += ["", f"Reading: {_verdict(la, lb, miou[la], miou[lb])}.", ""]
    lines += ["## Commands of every run", "", "```"]
    for run in runs.values():
        for command in run.commands:
            lines.append(shlex.join([Path(command[0]).name, *map(_relative, command[1:])]))
    lines += ["```", ""]
    return "\n".join(lines)


def _relative(arg: str) -> str:
    return os.path.relpath(arg, REPO) if arg.startswith(str(REPO)) else arg


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="experiments.py", description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(EXPERIMENTS), help="these experiments only")
    p.add_argument(
        "--arm",
        nargs="+",
        action="append",
        metavar="EXP:LABEL [key=value ...]",
        help="define an experiment instead: two --arm per experiment name",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 2024, 8888])
    p.add_argument("--epochs", type=int, default=8, help="epochs of every run (default: demo's)")
    p.add_argument("--max-samples", type=int, help="training images (default: demo's 240)")
    p.add_argument(
        "--device",
        nargs="+",
        default=["auto"],
        help="device(s) for the runs, round robin (e.g. cuda, or cuda:0 cuda:1)",
    )
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    p.add_argument("--threads", type=int, help="CPU threads per run (default: cores / jobs)")
    p.add_argument(
        "--budget-minutes",
        type=float,
        help="start no run after this many minutes (the report says which were not run)",
    )
    p.add_argument("--runs-dir", default="runs/demo/experiments")
    p.add_argument("--results-dir", default="results/demo/experiments")
    p.add_argument("--out", default="docs/experiments.md")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="for every run")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line of experiments.py."""
    args = parser().parse_args(argv)
    return run_cli(lambda: _run(args, argv if argv is not None else sys.argv[1:]))


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.jobs < 1 or args.epochs < 1:
        raise ToolError(f"--jobs {args.jobs} and --epochs {args.epochs} must be >= 1")
    experiments = parse_arms(args.arm) if args.arm else dict(EXPERIMENTS)
    if args.only:
        experiments = {k: v for k, v in experiments.items() if k in args.only}
    seeds = list(dict.fromkeys(args.seeds))
    runs, arm_keys = plan(experiments, common_overrides(args), seeds, args.device)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    from engine.loaders import ensure_demo_data

    device = _device_name(args.device[0])

    ensure_demo_data(load_config(MODEL, overrides=list(args.overrides), demo=True))
    logger.info("%d runs (%d jobs, %d threads each)", len(runs), args.jobs, threads)
    started = time.perf_counter()
    deadline = math.inf if args.budget_minutes is None else started + 60 * args.budget_minutes
    out = Path(args.out)

    def write_report() -> None:
        minutes = (time.perf_counter() - started) / 60
        took = sorted(r.seconds for r in runs.values() if r.result is not None)
        each = f", {took[0]:.0f}-{took[-1]:.0f} s per run" if took else ""
        header = [
            "# Experiments: kernel-bank initialisation and augmentation (DAS-Net, demo data)",
            "",
            f"Written by `python experiments.py {shlex.join(argv)}` "
            f"({len(runs)} runs, {minutes:.1f} min on {device} with {args.jobs} at a time"
            f"{each}). "
            f"Each run: `train_{MODEL}.py --demo` then `test_{MODEL}.py --demo` with the "
            f"overrides below and `{shlex.join(common_overrides(args))}`; test mIoU/Dice of "
            f"the best checkpoint (lowest validation loss) on the demo test split.",
        ]
        atomic_write_text(out, render(experiments, runs, arm_keys, seeds, header))

    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(
                execute, run, Path(args.runs_dir), Path(args.results_dir), threads, deadline
            )
            for run in runs.values()
        ]
        for future in as_completed(futures):
            run = future.result()
            status = run.error or f"mIoU {run.result['overall']['miou']:.4f}"
            print(f"{run.key} seed {run.seed}: {status} ({run.seconds:.0f} s)", flush=True)
            write_report()  # after every run: a call cut short still leaves its numbers
    print(f"report -> {out}")
    failed = [r for r in runs.values() if r.error]
    if failed:
        raise ToolError(f"{len(failed)} of {len(runs)} runs failed, first: {failed[0].error}")
    return 0


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name(torch.device(device if device != "auto" else "cuda"))
    return f"CPU ({os.cpu_count()} cores)"
