"""The main job on a fresh machine: train and test all seven models on generated demo data.

    python demo.py [--models dasnet unet ...] [key=value ...]

Each model runs ``train_<model>.py --demo`` then ``test_<model>.py --demo`` (demo data is
generated on first use under demo_data/; outputs go to runs/demo and results/demo, re-running
replaces them), and the paper's tables are printed from the results at the end.
"""

from __future__ import annotations

import argparse
import sys
import time

import report
from engine import run_script
from models import MODEL_NAMES

ORDER = ("thindyunet", "fulldyunet", "deepsupdyunet", "dasnet", "unet", "pan", "pspnet")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(ORDER), choices=MODEL_NAMES)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides for every model, e.g. trainer.epochs=2",
    )
    args = p.parse_args(argv)
    started = time.perf_counter()
    for model in args.models:
        print(f"== {model}: train", flush=True)
        code = run_script(model, True, ["--demo", "trainer.overwrite=true", *args.overrides])
        if code:
            return code
        print(f"== {model}: test", flush=True)
        code = run_script(model, False, ["--demo", *args.overrides])
        if code:
            return code
    print(f"\n== demo done in {(time.perf_counter() - started) / 60:.1f} min\n")
    return report.main(["--demo"])


if __name__ == "__main__":
    sys.exit(main())
