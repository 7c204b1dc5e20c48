"""Figures: training curves from metrics.csv, and a qualitative grid like the paper's Figure 5.

    python plots.py curves runs/dasnet runs/unet [--out figures/curves.png]
    python plots.py grid --models dasnet unet [--demo] [--checkpoints A.pt B.pt] [--n 4]

The grid's rows are test images that show a UAV, half visible and half infrared, spread over
the split in a fixed order; its columns are the frame with the ground truth outlined, then the
frame with each model's prediction outlined (titled with its IoU on that image), with a zoomed
inset where the UAV is small. The curves compare the validation loss (the main head's, for every
model) and mIoU, with integer epoch ticks; the training objective has its own panel.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from data import UAVSegDataset
from data.decode import open_file, read_pair
from engine.checkpoint import atomic_write
from models import MODEL_NAMES

from . import (
    DEMO_ROOT,
    ToolError,
    checkpoint_for,
    input_size,
    load_for_inference,
    pick_device,
    run_cli,
)
from .predict import Predictor

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("epoch", "train_loss", "val_loss", "miou")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Render a figure to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def read_metrics(run_dir: Path) -> dict[str, list[float]]:
    """Columns of ``<run_dir>/metrics.csv`` (or the csv file itself) needed for the curves."""
    path = run_dir if run_dir.suffix == ".csv" else run_dir / "metrics.csv"
    if not path.is_file():
        raise ToolError(f"metrics file '{path}' not found")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in CSV_COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise ToolError(f"metrics file '{path}' has no rows or lacks columns {missing}")
    try:
        return {c: [float(row[c]) for row in rows] for c in CSV_COLUMNS}
    except (TypeError, ValueError) as exc:
        raise ToolError(f"metrics file '{path}' has a bad value: {exc}") from None


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Folder names; with the parent's too where two runs share a name (dasnet/seed42)."""
    names = [p.parent.name if p.suffix == ".csv" else p.name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    folders = [p.parent if p.suffix == ".csv" else p for p in run_dirs]
    return [str(Path(*p.resolve().parts[-2:])) for p in folders]


def deep_supervised(run_dir: Path) -> bool:
    """Whether a run's model trains with auxiliary heads (from its config.yaml, if there)."""
    from models import VARIANTS

    config = (run_dir.parent if run_dir.suffix == ".csv" else run_dir) / "config.yaml"
    if not config.is_file():
        return False
    import yaml

    name = ((yaml.safe_load(config.read_text()) or {}).get("model") or {}).get("name")
    return bool(VARIANTS.get(name, {}).get("deep_supervision"))


def plot_curves(run_dirs: list[Path], out: Path) -> Path:
    """Per epoch, one colour per run: validation loss and mIoU, then the training objective.

    The validation loss is the main head's Dice for every model, so runs compare like with like;
    the training objective of a deep-supervision model adds 0.4 x each auxiliary head's loss and
    is larger by construction, so it has its own panel and is marked.
    """
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, (val_ax, miou_ax, train_ax) = plt.subplots(1, 3, figsize=(15, 4))
    for label, run_dir in zip(run_labels(run_dirs), run_dirs, strict=True):
        m = read_metrics(run_dir)
        line = val_ax.plot(m["epoch"], m["val_loss"], marker=".", label=label)[0]
        miou_ax.plot(m["epoch"], m["miou"], color=line.get_color(), marker=".", label=label)
        aux = deep_supervised(run_dir)
        train_ax.plot(
            m["epoch"],
            m["train_loss"],
            "--" if aux else "-",
            color=line.get_color(),
            label=f"{label} (main + aux)" if aux else label,
        )
    val_ax.set(xlabel="epoch", ylabel="Dice loss", title="Validation loss (main head)")
    miou_ax.set(xlabel="epoch", ylabel="mIoU", title="Validation mIoU")
    train_ax.set(
        xlabel="epoch",
        ylabel="loss",
        title="Training objective (dashed: + 0.4 x aux heads)",
    )
    for ax in (val_ax, miou_ax, train_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out)


def has_uav(mask_path: str) -> bool:
    """Whether a mask file has any non-zero pixel (read from its bounding box)."""
    with open_file(mask_path, "mask") as mk:
        return mk.getbbox() is not None


def pick_rows(dataset: UAVSegDataset, n: int) -> list[int]:
    """``n`` items with a UAV, alternating visible and infrared, spread evenly over the split."""
    samples = dataset.samples
    per_modality = {
        m: [i for i, s in enumerate(samples) if s.modality == m] for m in ("visible", "infrared")
    }
    chosen: list[int] = []
    for k in range(n):
        modality = ("visible", "infrared")[k % 2]
        items = per_modality[modality] or per_modality["visible"] or per_modality["infrared"]
        want = (k // 2) * len(items) // max(1, (n + 1) // 2)
        for offset in range(len(items)):
            i = items[(want + offset) % len(items)]
            if i not in chosen and has_uav(samples[i].mask_path):
                chosen.append(i)
                break
    if len(chosen) < n:
        raise ToolError(
            f"test split of '{dataset.root}' has only {len(chosen)} images with a "
            f"UAV; ask for fewer rows (--n)"
        )
    return chosen


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground IoU of one image (1 when both are empty)."""
    union = np.logical_or(pred, truth).sum()
    return float(np.logical_and(pred, truth).sum() / union) if union else 1.0


TRUTH_COLOUR, PREDICTION_COLOUR = "#33e04d", "#ff3b2f"


def zoom_box(mask: np.ndarray, small: float = 0.15, context: int = 4) -> tuple[int, ...] | None:
    """(top, bottom, left, right) of a square around a small UAV, None when it is large or absent.

    Small: the UAV's longer side is under ``small`` of the frame's shorter side; the square is
    ``context`` times that side (at least 24 pixels), kept inside the frame.
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    height, width = mask.shape
    extent = max(np.ptp(ys), np.ptp(xs)) + 1
    if extent >= small * min(height, width):
        return None
    side = min(max(context * extent, 24), height, width)
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    top = int(np.clip(cy - side // 2, 0, height - side))
    left = int(np.clip(cx - side // 2, 0, width - side))
    return top, top + side, left, left + side


def draw_cell(ax, frame: np.ndarray, outlines: list[tuple[np.ndarray, str]], zoom) -> None:
    """The frame with each mask drawn as an outline; a zoomed inset over ``zoom`` if given."""

    def draw(target, crop: tuple[slice, slice], width: float) -> None:
        target.imshow(frame[crop], interpolation="nearest")
        for mask, colour in outlines:
            part = mask[crop]
            if part.any() and not part.all():
                target.contour(part.astype(float), levels=[0.5], colors=colour, linewidths=width)

    draw(ax, (slice(None), slice(None)), 0.8)
    if zoom is not None:
        top, bottom, left, right = zoom
        height, width = frame.shape[:2]
        # In the corner away from the UAV, so that the inset does not hide it.
        x = 0.02 if (left + right) / 2 > width / 2 else 0.6
        y = 0.02 if (top + bottom) / 2 < height / 2 else 0.6  # axes y grows upwards
        inset = ax.inset_axes([x, y, 0.38, 0.38])
        draw(inset, (slice(top, bottom), slice(left, right)), 1.2)
        inset.set_xticks([])
        inset.set_yticks([])
        for spine in inset.spines.values():
            spine.set_edgecolor("yellow")
        ax.add_patch(
            _pyplot().Rectangle(
                (left - 0.5, top - 0.5), right - left, bottom - top, fill=False, ec="yellow", lw=0.8
            )
        )
    ax.axis("off")


def plot_grid(
    models: list[tuple[str, Any, tuple[int, int]]],
    root: Path,
    n: int,
    out: Path,
    threshold: float = 0.5,
    device: str = "auto",
) -> Path:
    """The qualitative grid; ``models`` is (label, loaded model, input size) per column.

    Every cell is the frame: the first with the ground truth's outline (green), the others with
    a model's prediction outlined (red) over the truth; a UAV too small to see at this scale
    gets a zoomed inset in every cell of its row.
    """
    dataset = UAVSegDataset(root, "test")
    rows = [dataset.samples[i] for i in pick_rows(dataset, n)]
    frames, truths = [], []
    for s in rows:
        image, mask = read_pair(s.image_path, s.mask_path)
        frames.append(image.permute(1, 2, 0).numpy())
        truths.append(mask.numpy())
    torch_device = pick_device(device)
    predictions = [
        Predictor(net.to(torch_device), size, torch_device, threshold)(frames)
        for _, net, size in models
    ]
    plt = _pyplot()
    cols = 1 + len(models)
    fig, axes = plt.subplots(n, cols, figsize=(2.8 * cols, 2.0 * n), squeeze=False)
    for r, s in enumerate(rows):
        truth = (truths[r], TRUTH_COLOUR)
        zoom = zoom_box(truths[r])
        draw_cell(axes[r][0], frames[r], [truth], zoom)
        axes[r][0].set_title(f"{s.sequence}/{s.modality}/{s.frame}: truth", fontsize=7)
        for c, ((label, _, _), pred) in enumerate(zip(models, predictions, strict=True), 1):
            draw_cell(axes[r][c], frames[r], [truth, (pred[r], PREDICTION_COLOUR)], zoom)
            axes[r][c].set_title(f"{label} (IoU {iou(pred[r], truths[r]):.2f})", fontsize=7)
    fig.suptitle("green: ground truth, red: prediction; yellow: zoomed inset", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plots.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    curves = sub.add_parser("curves", help="loss and val mIoU per epoch from metrics.csv")
    curves.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (metrics.csv)")
    curves.add_argument("--out", default="figures/curves.png")
    grid = sub.add_parser("grid", help="test images, ground truth and each model's mask")
    grid.add_argument("--models", nargs="+", required=True, choices=MODEL_NAMES)
    grid.add_argument(
        "--checkpoints",
        nargs="+",
        metavar="PATH",
        help="one per model (default with --demo: runs/demo/<model>/best.pt)",
    )
    grid.add_argument("--demo", action="store_true", help="demo data and demo checkpoints")
    grid.add_argument("--root", help="dataset root (default: the first checkpoint's)")
    grid.add_argument("--n", type=int, default=4, help="rows (test images)")
    grid.add_argument("--threshold", type=float, default=0.5)
    grid.add_argument("--device", default="auto")
    grid.add_argument("--out", default="figures/grid.png")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line of plots.py."""
    args = parser().parse_args(argv)
    return run_cli(lambda: _curves(args) if args.command == "curves" else _grid(args))


def _curves(args: argparse.Namespace) -> int:
    out = plot_curves([Path(r) for r in args.runs], Path(args.out))
    print(f"curves of {len(args.runs)} runs -> {out}")
    return 0


def _grid(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ToolError(f"--n {args.n} must be >= 1")
    if args.checkpoints and len(args.checkpoints) != len(args.models):
        raise ToolError(
            f"--checkpoints gives {len(args.checkpoints)} files for "
            f"{len(args.models)} models; give one per model, in order"
        )
    columns, root = [], args.root
    for k, model in enumerate(args.models):
        path = checkpoint_for(model, args.checkpoints[k] if args.checkpoints else None, args.demo)
        net, ckpt = load_for_inference(path, model)
        columns.append((model, net, input_size(ckpt, None)))
        if root is None:
            root = (
                DEMO_ROOT
                if args.demo
                else (ckpt.get("config") or {}).get("dataset", {}).get("root")
            )
    if not root:
        raise ToolError("the checkpoint does not record its dataset root; give --root")
    if not Path(root).is_dir():
        raise ToolError(f"dataset root '{root}' not found")
    out = plot_grid(columns, Path(root), args.n, Path(args.out), args.threshold, args.device)
    print(f"grid of {args.n} test images x {len(columns)} models -> {out}")
    return 0
