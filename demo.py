"""The main job on a fresh machine: train and test all eight models on generated demo data.

    python demo.py [--models dasnet unet ...] [--epochs 3] [key=value ...]

Each model runs ``train_<model>.py --demo`` then ``test_<model>.py --demo`` (demo data is
generated on first use under demo_data/; outputs go to runs/demo and results/demo, re-running
replaces them), and the paper's tables are printed from the results at the end, beside three
figures in results/demo/figures: the training curves, a grid of test predictions and the
mIoU trade-off against size and speed (the authors' final table drawn hollow).

The tour trains each model for --epochs (3: about 15 minutes for the first seven on 2 CPU cores;
MobileUNet, lighter than UNet, adds less than UNet does), fewer than a single model's demo run
(``python train_dasnet.py --demo``: 8 epochs, DAS-Net's test mIoU above 0.5), so its table shows
the models early in training.
"""

from __future__ import annotations

import argparse
import sys
import time

import report
from engine import run_script
from models import MODEL_NAMES
from tools import DEMO_RUNS, plots

ORDER = (
    "thindyunet",
    "fulldyunet",
    "deepsupdyunet",
    "dasnet",
    "unet",
    "pan",
    "pspnet",
    "mobileunet",
)
FIGURES = "results/demo/figures"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(ORDER), choices=MODEL_NAMES)
    p.add_argument(
        "--epochs", type=int, default=3, help="training epochs per model (demo config: 8)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides for every model, e.g. trainer.epochs=2",
    )
    args = p.parse_args(argv)
    overrides = [f"trainer.epochs={args.epochs}", *args.overrides]
    started = time.perf_counter()
    for model in args.models:
        print(f"== {model}: train", flush=True)
        code = run_script(model, True, ["--demo", "trainer.overwrite=true", *overrides])
        if code:
            return code
        print(f"== {model}: test", flush=True)
        code = run_script(model, False, ["--demo", *overrides])
        if code:
            return code
    print(f"\n== demo done in {(time.perf_counter() - started) / 60:.1f} min\n")
    code = report.main(["--demo"])
    if code:
        return code
    runs = [str(DEMO_RUNS / m) for m in args.models]
    code = plots.main(["curves", *runs, "--out", f"{FIGURES}/curves.png"])
    grid = ["grid", "--demo", "--models", *args.models, "--n", "4", "--out", f"{FIGURES}/grid.png"]
    code = code or plots.main(grid)
    return code or plots.main(["tradeoff", "--demo", "--out", f"{FIGURES}/tradeoff.png"])


if __name__ == "__main__":
    sys.exit(main())
