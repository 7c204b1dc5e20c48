"""Figures: training curves from metrics.csv, and a qualitative grid like the paper's Figure 5.

    python plots.py curves runs/dasnet runs/unet [--out figures/curves.png]
    python plots.py grid --models dasnet unet [--demo] [--checkpoints A.pt B.pt] [--n 4]
    python plots.py tradeoff [--results results | --demo] [--reference final|first|none]
    python plots.py size [--demo | --results results] [--mode pad] [--out figures/size.png]

The grid's rows are test images that show a UAV, half visible and half infrared, spread over
the split in a fixed order; its columns are the frame with the ground truth outlined, then the
frame with each model's prediction outlined (titled with its IoU on that image), with a zoomed
inset where the UAV is small. The curves compare the validation loss (the main head's, for every
model) and mIoU, with integer epoch ticks; the training objective has its own panel. The
trade-off figure puts each model's mIoU against its parameters (log scale) and its FPS, ours
filled, the published table's hollow, with the Pareto fronts (no other model is both smaller or
faster and more accurate) drawn through them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from data import UAVSegDataset
from data.decode import open_file, read_pair
from engine.breakdown import SIZE_BINS
from engine.checkpoint import atomic_write
from engine.inference_modes import MODES
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


def pareto_front(points: list[tuple[float, float]], lower_x_better: bool) -> list[int]:
    """Indices of the points no other point beats on both x and y (higher y is better; lower
    or higher x as said), ordered along x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    if not lower_x_better:
        order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def tradeoff_points(
    results: dict[str, dict[str, Any]], reference: dict[str, dict[str, float]]
) -> dict[str, list[tuple[str, float, float, float | None]]]:
    """(model, params in M, mIoU, FPS or None) per source: ours and the reference table."""
    ours = [
        (
            name,
            r["params"] / 1e6,
            r["overall"]["miou"],
            (r.get("latency") or {}).get("fps"),
        )
        for name, r in results.items()
    ]
    theirs = [(name, p["params"], p["miou"], p["fps"]) for name, p in reference.items()]
    return {"ours": ours, "reference": theirs}


def plot_tradeoff(
    results: dict[str, dict[str, Any]],
    reference: dict[str, dict[str, float]],
    out: Path,
    reference_note: str = "",
) -> Path:
    """mIoU against parameters (log) and against FPS: one labelled point per model and source,
    ours filled and the reference hollow, each source's Pareto front as a line."""
    from models.published import LABELS

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = {name: f"C{i}" for i, name in enumerate(LABELS)}
    points = tradeoff_points(results, reference)
    devices = sorted({r["latency"]["device"] for r in results.values() if r.get("latency")})
    styles = {
        "ours": dict(marker="o", line="-", label=f"ours ({', '.join(devices) or 'no latency'})"),
        "reference": dict(marker="s", line="--", label=reference_note or "published"),
    }
    for ax, axis in zip(axes, ("params", "fps"), strict=True):
        for source, rows in points.items():
            rows = [r for r in rows if axis == "params" or r[3]]
            if not rows:
                continue
            xy = [(r[1] if axis == "params" else r[3], r[2]) for r in rows]
            style = styles[source]
            for (name, *_), (x, y) in zip(rows, xy, strict=True):
                filled = source == "ours"
                ax.scatter(
                    x,
                    y,
                    s=55,
                    marker=style["marker"],
                    facecolors=colours[name] if filled else "none",
                    edgecolors=colours[name],
                    linewidths=1.5,
                    zorder=3,
                )
                ax.annotate(
                    LABELS[name], (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7
                )
            front = pareto_front(xy, lower_x_better=axis == "params")
            ax.plot(
                [xy[i][0] for i in front],
                [xy[i][1] for i in front],
                style["line"],
                color="0.3",
                label=f"Pareto front, {style['label']}",
                zorder=2,
            )
        xs = [r[1] if axis == "params" else r[3] for rows in points.values() for r in rows]
        xs = [x for x in xs if x]
        if axis == "params" or (xs and max(xs) / min(xs) > 10):
            from matplotlib.ticker import FuncFormatter, NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xticks(
                [
                    t
                    for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
                    if min(xs) / 2 <= t <= max(xs) * 2
                ]
            )
        ax.set(
            xlabel="parameters (M, log scale)" if axis == "params" else "FPS (batch 1, FP32)",
            ylabel="test mIoU",
            title="mIoU vs size" if axis == "params" else "mIoU vs speed",
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Filled: ours; hollow: the published table", fontsize=9)
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
    tradeoff = sub.add_parser("tradeoff", help="mIoU vs parameters and vs FPS, Pareto fronts")
    tradeoff.add_argument("--results", help="folder of <model>.json files (default: results)")
    tradeoff.add_argument("--demo", action="store_true", help="read results/demo")
    tradeoff.add_argument(
        "--reference",
        choices=("final", "first", "none"),
        default="final",
        help="the published table drawn hollow (none: ours only)",
    )
    tradeoff.add_argument(
        "--single-run", action="store_true", help="ignore multi-seed results (see report.py)"
    )
    tradeoff.add_argument("--out", default="figures/tradeoff.png")
    size = sub.add_parser("size", help="IoU against UAV area, one point per test image")
    size.add_argument("--results", help="folder of results files (default: results)")
    size.add_argument("--demo", action="store_true", help="read results/demo")
    size.add_argument("--mode", default="resize", choices=MODES, help="the test.mode to plot")
    size.add_argument("--out", default="figures/size.png")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line of plots.py."""
    args = parser().parse_args(argv)
    commands = {"curves": _curves, "grid": _grid, "tradeoff": _tradeoff, "size": _size}
    return run_cli(lambda: commands[args.command](args))


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
        columns.append((model, net, input_size(ckpt, None, net)))
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


def _tradeoff(args: argparse.Namespace) -> int:
    import report
    from models.published import REFERENCE_NOTES, REFERENCES

    folder = Path(args.results or ("results/demo" if args.demo else "results"))
    try:
        results = report.load_results(folder) if folder.is_dir() else {}
        if not args.single_run:
            results.update(report.load_seed_results(folder))
    except ValueError as exc:
        raise ToolError(str(exc)) from None
    reference = REFERENCES.get(args.reference, {})
    if not results and not reference:
        raise ToolError(f"no results in '{folder}' and --reference none: nothing to draw")
    if not results:
        logger.warning("no results in '%s': drawing the published table only", folder)
    note = REFERENCE_NOTES.get(args.reference, "").split(":")[0]
    out = plot_tradeoff(results, reference, Path(args.out), note)
    print(f"trade-off of {len(results)} models (ours) and {len(reference)} published -> {out}")
    return 0


def read_per_image(folder: Path, mode: str) -> dict[str, list[dict[str, str]]]:
    """Each model's per-image CSV (``<results stem>_images.csv``) for results of ``mode``."""
    found = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ToolError(f"results file '{path}' cannot be read: {exc}") from None
        if not isinstance(data, dict) or data.get("model") not in MODEL_NAMES:
            continue
        if (data.get("protocol") or {}).get("mode", "resize") != mode:
            continue
        table = path.with_name(f"{path.stem}_images.csv")
        if not table.is_file():
            raise ToolError(
                f"'{path}' has no per-image CSV '{table}'; re-run python test_{data['model']}.py"
            )
        with open(table, newline="") as f:
            found[data["model"]] = list(csv.DictReader(f))
    return found


def plot_size(tables: dict[str, list[dict[str, str]]], out: Path, mode: str) -> Path:
    """IoU against ground-truth UAV area (log axis), one point per image, one colour per model;
    frames without a UAV cannot sit on a log axis and are counted in the legend instead."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, rows in tables.items():
        area = np.array([float(r["uav_area"]) for r in rows])
        iou_ = np.array([float(r["iou"]) for r in rows])
        shown = area > 0
        ax.scatter(
            area[shown],
            iou_[shown],
            s=9,
            alpha=0.6,
            label=f"{model} ({shown.sum()} images; {(~shown).sum()} without a UAV)",
        )
    for _, low, _ in SIZE_BINS[1:]:
        ax.axvline(low, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("ground-truth UAV area (fraction of the frame)")
    ax.set_ylabel("IoU")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"IoU by UAV size, test split, test.mode {mode}")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, out)


def _size(args: argparse.Namespace) -> int:
    folder = Path(args.results or ("results/demo" if args.demo else "results"))
    tables = read_per_image(folder, args.mode)
    if not tables:
        raise ToolError(
            f"no {args.mode} results with a per-image CSV in '{folder}'; run a test script first, "
            f"e.g. python test_dasnet.py{' --demo' if args.demo else ''} test.mode={args.mode}"
        )
    out = plot_size(tables, Path(args.out), args.mode)
    print(f"IoU by UAV size of {len(tables)} models -> {out}")
    return 0
