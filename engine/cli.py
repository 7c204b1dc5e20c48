"""The command line of the 14 train_/test_ scripts: parse, load the config, run, exit cleanly.

Every expected failure (bad config, missing data or checkpoint, occupied run folder, signal)
ends with one ``error:`` line naming the file, key or value, and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from data import DatasetError
from models import PretrainedWeightsError

from . import distributed as dist
from .checkpoint import CheckpointError, WriteError
from .config import ConfigError, config_diff, format_diff, load_config, to_yaml
from .runfolder import RunFolderError

logger = logging.getLogger(__name__)

EXPECTED_ERRORS = (
    ConfigError,
    DatasetError,
    CheckpointError,
    WriteError,
    RunFolderError,
    PretrainedWeightsError,
    FileNotFoundError,
    PermissionError,
)


def _parser(script: str, model: str, train: bool) -> argparse.ArgumentParser:
    what = "Train" if train else "Test"
    p = argparse.ArgumentParser(
        prog=script,
        description=f"{what} {model} with configs/config_{model}.yaml (the paper's recipe).",
        epilog="Overrides: any config key as key=value, e.g. trainer.epochs=10 "
        "dataset.root=/data/uav dataset.image_size=[256,256]",
    )
    p.add_argument("--config", help=f"config file (default: configs/config_{model}.yaml)")
    p.add_argument(
        "--demo",
        action="store_true",
        help="generated demo data, 128x128, few epochs, outputs under runs/demo",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML and exit (creates nothing, reads no data)",
    )
    if train:
        p.add_argument(
            "--resume",
            nargs="?",
            const=True,
            default=None,
            metavar="PATH",
            help="continue from last.pt of the run folder (or from PATH)",
        )
    else:
        p.add_argument("--checkpoint", help="checkpoint to test (default: <run_dir>/best.pt)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def parse_args(
    script: str, model: str, train: bool, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, list[str]]:
    """The parsed arguments and the config overrides they amount to.

    ``--resume`` takes an optional path, so argparse would take a following ``key=value`` as
    that path: a bare ``--resume`` is moved to the end when the next word is no file but an
    override. Options and overrides may come in any order.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if train and "--resume" in argv:
        i = argv.index("--resume")
        after = argv[i + 1] if i + 1 < len(argv) else ""
        if "=" in after and not Path(after).is_file():
            argv.append(argv.pop(i))
    args = _parser(script, model, train).parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if train and args.resume is not None:
        overrides.append(
            "trainer.resume=true" if args.resume is True else f"trainer.resume_from={args.resume}"
        )
    if not train and args.checkpoint:
        overrides.append(f"test.checkpoint={args.checkpoint}")
    return args, overrides


def _setup_logging() -> None:
    level = logging.INFO if dist.rank() == 0 else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", force=True
    )


def run_script(model: str, train: bool, argv: Sequence[str] | None = None) -> int:
    """Entry point of train_<model>.py (train=True) and test_<model>.py; returns the exit code."""
    from .evaluate import format_results, test
    from .train import Interrupted, TrainingError
    from .train import train as train_run

    script = f"{'train' if train else 'test'}_{model}.py"
    args, overrides = parse_args(script, model, train, argv)
    _setup_logging()
    train_command = (
        f"python train_{model}.py"
        + (" --demo" if args.demo else "")
        + "".join(f" {shlex.quote(o)}" for o in args.overrides)
    )
    try:
        cfg = load_config(model, args.config, overrides, demo=args.demo)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        diff = format_diff(config_diff(load_config(model, args.config), cfg))
        source = args.config or f"configs/config_{model}.yaml"
        logger.info("config: %s", f"{source} with {diff}" if diff else f"{source} as is")
        if train:
            summary = train_run(cfg, command=train_command)
            if dist.is_main():
                print(
                    f"{model}: best epoch {summary['best_epoch']} (val loss "
                    f"{summary['best_val_loss']:.4f}), checkpoints in {summary['run_dir']}"
                )
        else:
            results = test(cfg, command=train_command)
            if dist.is_main():
                print(format_results(results))
        return 0
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    except (*EXPECTED_ERRORS, TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (setup, testing)
        print(f"interrupted: {script} stopped by Ctrl-C; nothing was written", file=sys.stderr)
        return 130
    finally:
        dist.cleanup()
