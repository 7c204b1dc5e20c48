"""A local web page to try a trained model on your own frames, built with Gradio.

    python app.py                  # the checkpoints under runs/, on http://127.0.0.1:7860
    python app.py --demo           # the demo checkpoints (made by python train_dasnet.py --demo)
    python app.py --port 8080      # another port; --share also asks Gradio for a public link

Pick a checkpoint (or type the path of any other), upload images or a short video, choose the
inference mode and the threshold: the page shows each frame's overlay and mask, the UAV area in
pixels and as a fraction of the frame, the latency and the device, and offers the mask PNGs
(for a video, the overlay video and a zip of its masks) for download. Frames go through
tools.predict's ``Predictor``, ``read_image`` and ``predict_video``: the same code path as
predict.py, so the page and the command line give the same mask for the same frame.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from torch import nn

from . import (
    DEMO_ROOT,
    DEMO_RUNS,
    EXPECTED_ERRORS,
    ToolError,
    add_size_argument,
    load_for_inference,
    pick_device,
    predict,
    run_cli,
)

logger = logging.getLogger(__name__)

RUNS = Path("runs")
VIDEO_BATCH = 8
DEMO_HINT = "python train_dasnet.py --demo"
HEADERS = [
    "file",
    "frames",
    "size (HxW)",
    "UAV pixels",
    "UAV fraction",
    "latency ms",
    "device",
]


def modes() -> tuple[str, ...]:
    """The inference modes predict offers (engine/inference_modes.py)."""
    return tuple(predict.MODES)


def make_predictor(
    model: nn.Module,
    ckpt: dict[str, Any],
    device: torch.device,
    threshold: float,
    mode: str,
    size: tuple[int, int] | None = None,
) -> predict.Predictor:
    """predict.py's Predictor for ``mode``, set up as predict.py sets it up by default.

    The page goes through predict's own ``make_predictor`` with predict's own defaults (tile,
    stride, padding), so the page and the command line cannot drift apart.
    """
    if mode not in modes():
        raise ToolError(f"mode '{mode}' is not one of {', '.join(modes())}")
    argv = ["--mode", mode, "--threshold", repr(threshold)]
    argv += ["--size", *map(str, size)] if size else []
    return predict.make_predictor(model, ckpt, device, predict.parser().parse_args(argv))


# -- the model picker ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """A checkpoint found under the runs folder, with what the picker shows about it."""

    path: Path
    model: str
    epoch: int | None
    val_miou: float | None

    @property
    def label(self) -> str:
        which = "best epoch" if self.path.name == "best.pt" else "epoch"
        epoch = f"{which} {self.epoch}" if self.epoch is not None else "epoch ?"
        miou = f"val mIoU {self.val_miou:.3f}" if self.val_miou is not None else "val mIoU ?"
        return f"{self.path}: {self.model}, {epoch}, {miou}"


def find_checkpoints(root: Path) -> list[Found]:
    """Every checkpoint of this project under ``root`` (best.pt and last.pt of each run)."""
    found = []
    for path in sorted(root.rglob("*.pt")) if root.is_dir() else []:
        try:
            # mmap: only the small entries are read, not the weights.
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # a half-copied or foreign file is skipped, not fatal
            logger.warning("skipping '%s': %s", path, exc)
            continue
        if not isinstance(ckpt, dict) or "model_name" not in ckpt:
            continue
        epoch = ckpt.get("epoch")  # best.pt is saved at its best epoch
        found.append(Found(path, ckpt["model_name"], epoch, _val_miou(path.parent, epoch)))
    return found


def _val_miou(run_dir: Path, epoch: int | None) -> float | None:
    """The validation mIoU of ``epoch`` from the run's metrics.csv, when it is there."""
    try:
        with open(run_dir / "metrics.csv", newline="") as f:
            for row in csv.DictReader(f):
                if epoch is not None and int(row["epoch"]) == int(epoch):
                    return float(row["miou"])
    except (OSError, KeyError, ValueError):
        pass
    return None


def picker_choices(root: Path) -> list[tuple[str, str]]:
    """(label, path) pairs for the checkpoint dropdown."""
    return [(found.label, str(found.path)) for found in find_checkpoints(root)]


# -- segmenting uploads -------------------------------------------------------------------------


class Timed:
    """A Predictor that also counts its frames, UAV pixels and the seconds it took."""

    def __init__(self, predictor: predict.Predictor) -> None:
        self.predictor = predictor
        self.frames = self.pixels = self.uav = 0
        self.seconds = 0.0

    def __call__(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        started = time.perf_counter()
        masks = self.predictor(frames)  # returns numpy masks: the device has finished
        self.seconds += time.perf_counter() - started
        self.frames += len(frames)
        self.pixels += sum(m.size for m in masks)
        self.uav += sum(int(m.sum()) for m in masks)
        return masks

    def row(self, name: str, size: tuple[int, int], device: torch.device) -> list[Any]:
        """One line of the results table (area and latency per frame)."""
        per_frame = max(self.frames, 1)
        return [
            name,
            self.frames,
            f"{size[0]}x{size[1]}",
            round(self.uav / per_frame, 1) if self.frames > 1 else self.uav,
            round(self.uav / max(self.pixels, 1), 6),
            round(1000 * self.seconds / per_frame, 1),
            str(device),
        ]


@dataclass
class Outputs:
    """What one press of the button returns, in the order of the page's output components."""

    overlays: list[tuple[str, str]]
    masks: list[tuple[str, str]]
    table: list[list[Any]]
    downloads: list[str]
    video: str | None
    message: str

    def values(self) -> tuple:
        return (
            self.overlays[0][0] if self.overlays else None,
            self.overlays,
            self.masks,
            {"headers": HEADERS, "data": self.table},
            self.downloads or None,
            self.video,
            self.message,
        )


class Segmenter:
    """Loads the chosen checkpoint (kept while it is unchanged) and segments uploaded files."""

    def __init__(
        self, device: torch.device, work_dir: Path, size: tuple[int, int] | None = None
    ) -> None:
        self.device, self.work_dir, self.size = device, work_dir, size
        self._loaded: tuple[tuple[str, float], nn.Module, dict[str, Any]] | None = None

    def load(self, path: str) -> tuple[nn.Module, dict[str, Any]]:
        """The checkpoint's model on the device; reloaded only when the file changes."""
        where = Path(path).expanduser()
        if not where.exists():
            raise ToolError(f"checkpoint '{path}' not found")
        key = (str(where.resolve()), where.stat().st_mtime)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # the old model is freed before the new one loads
            model, ckpt = load_for_inference(where, None, self.device)
            # One warm-up frame, so the first upload's latency is the model's, not its start-up.
            warm = make_predictor(model, ckpt, self.device, 0.5, modes()[0], self.size)
            warm([np.zeros((*warm.size, 3), np.uint8)])
            self._loaded = (key, model, ckpt)
        return self._loaded[1], self._loaded[2]

    def __call__(
        self,
        choice: str | None,
        path: str | None,
        files: list[str] | None,
        mode: str,
        threshold: float,
    ) -> tuple:
        """The page's event: every uploaded file segmented, or a message saying what is wrong."""
        out = Outputs([], [], [], [], None, "")
        checkpoint = (path or "").strip() or choice
        try:
            if not checkpoint:
                raise ToolError("pick a checkpoint, or type the path of one")
            if not files:
                raise ToolError("upload one or more images (jpg, png) or a video (mp4, avi)")
            if not 0 < threshold < 1:
                raise ToolError(f"threshold {threshold} must lie strictly between 0 and 1")
            model, ckpt = self.load(checkpoint)
            predictor = make_predictor(model, ckpt, self.device, float(threshold), mode, self.size)
        except EXPECTED_ERRORS as exc:
            out.message = f"**error:** {exc}"
            return out.values()
        request = Path(tempfile.mkdtemp(prefix="request-", dir=self.work_dir))
        errors, names = [], set()
        for file in files:
            source = Path(file)
            name = _unique(source.stem, names)
            try:
                self._one(predictor, source, name, request, out)
            except EXPECTED_ERRORS as exc:
                errors.append(f"**{source.name}:** {exc}")
        done = len(files) - len(errors)
        at = f" at {predictor.size[0]}x{predictor.size[1]}" if predictor.size else ""
        summary = (
            f"{ckpt['model_name']} from `{checkpoint}`{at}, mode {mode}, threshold "
            f"{threshold:g} on {self.device}: {done} of {len(files)} files segmented."
        )
        out.message = "\n\n".join([summary, *errors])
        return out.values()

    def _one(
        self, predictor: predict.Predictor, source: Path, name: str, request: Path, out: Outputs
    ) -> None:
        suffix = source.suffix.lower()
        timed = Timed(predictor)
        if suffix in predict.VIDEO_SUFFIXES:
            predict.predict_video(timed, predict.Job(source, name), request, VIDEO_BATCH)
            video = request / f"{name}_overlay.mp4"
            masks = shutil.make_archive(
                str(request / f"{name}_masks"), "zip", request / f"{name}_masks"
            )
            out.video = out.video or str(video)
            out.downloads += [str(video), masks]
            size = _video_size(request / f"{name}_masks")
        elif suffix in predict.IMAGE_SUFFIXES:
            frame = predict.read_image(source)
            (mask,) = timed([frame])
            predict.save_image_outputs(request, name, frame, mask)
            caption = f"{source.name}: {int(mask.sum())} UAV pixels"
            out.overlays.append((str(request / f"{name}_overlay.png"), caption))
            out.masks.append((str(request / f"{name}_mask.png"), caption))
            out.downloads.append(str(request / f"{name}_mask.png"))
            size = frame.shape[:2]
        else:
            raise ToolError(
                f"'{source.name}' is neither an image ({', '.join(predict.IMAGE_SUFFIXES)}) "
                f"nor a video ({', '.join(predict.VIDEO_SUFFIXES)})"
            )
        out.table.append(timed.row(source.name, size, self.device))


def _unique(stem: str, taken: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... when two uploads share a name."""
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name


def _video_size(mask_dir: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(next(mask_dir.glob("*.png"))) as im:
        return im.height, im.width


# -- the page -----------------------------------------------------------------------------------


def demo_frames(root: Path = DEMO_ROOT) -> list[str]:
    """Example frames from the demo test set (visible and infrared), when it exists."""
    try:
        return [str(job.path) for job in predict.demo_inputs(root)]
    except (ToolError, IndexError, OSError):
        return []


def build(runs: Path, segmenter: Segmenter, examples: list[str], hint: str = "") -> gr.Blocks:
    """The page: model picker, uploads, mode and threshold; overlay, mask, table, downloads."""
    choices = picker_choices(runs)
    with gr.Blocks(title="UAV segmentation", analytics_enabled=False) as page:
        gr.Markdown(
            "# UAV segmentation\nPick a trained checkpoint, upload frames or a short video, "
            "and see where the model finds UAVs."
        )
        with gr.Row():
            with gr.Column(scale=2):
                with gr.Row():
                    picker = gr.Dropdown(
                        choices,
                        value=choices[0][1] if choices else None,
                        label=f"Checkpoint under {runs}/",
                        scale=4,
                    )
                    rescan = gr.Button("Rescan", scale=1, size="sm")
                path = gr.Textbox(
                    label="...or the path of any checkpoint (overrides the picker)",
                    placeholder="runs/dasnet/best.pt",
                )
                files = gr.File(
                    file_count="multiple",
                    label="Images (jpg, png) or a video (mp4, avi)",
                    elem_id="upload",
                )
                with gr.Row():
                    mode = gr.Radio(list(modes()), value=modes()[0], label="Inference mode")
                    threshold = gr.Slider(0.01, 0.99, value=0.5, step=0.01, label="Threshold")
                run = gr.Button("Segment", variant="primary")
                if examples:
                    gr.Examples(
                        [[[frame]] for frame in examples],
                        inputs=[files],
                        label="Demo test frames",
                        example_labels=[f"{Path(f).parent.name} {Path(f).name}" for f in examples],
                    )
            with gr.Column(scale=3):
                message = gr.Markdown(hint, elem_id="message")
                overlay = gr.Image(
                    label="Overlay (mask tinted red, outline yellow)",
                    format="png",
                    height=400,
                    interactive=False,
                    elem_id="overlay",
                )
                overlays = gr.Gallery(
                    label="Every frame's overlay (click one to show it above)",
                    format="png",
                    columns=6,
                    fit_columns=False,
                    height=150,
                    object_fit="contain",
                    allow_preview=False,
                    elem_id="overlays",
                )
                masks = gr.Gallery(
                    label="Mask",
                    format="png",
                    columns=4,
                    fit_columns=False,
                    height=200,
                    object_fit="contain",
                    elem_id="mask",
                )
                table = gr.Dataframe(headers=HEADERS, label="Per file", elem_id="table")
                video = gr.Video(label="Overlay video", elem_id="video")
                downloads = gr.File(label="Mask PNGs (and overlay videos)", elem_id="downloads")
        outputs = [overlay, overlays, masks, table, downloads, video, message]
        inputs = [picker, path, files, mode, threshold]
        run.click(segmenter, inputs, outputs, api_name="segment")
        files.upload(segmenter, inputs, outputs, api_name=False)
        overlays.select(_shown, None, overlay, api_name=False)
        rescan.click(
            lambda: gr.Dropdown(choices=picker_choices(runs)), None, picker, api_name=False
        )
    return page


def _shown(event: gr.SelectData) -> str:
    """The overlay a click in the gallery picked, for the large view."""
    return event.value["image"]["path"]


def missing_hint(runs: Path, demo: bool) -> str:
    """What the page says when it lists no checkpoint: the command that makes one ('' if any)."""
    if find_checkpoints(runs):
        return ""
    make = DEMO_HINT if demo else f"{DEMO_HINT} (or any train_<model>.py)"
    return f"No checkpoint found under `{runs}/`: make one with `{make}`, or type a path."


@contextmanager
def serving(args: argparse.Namespace, block: bool = True) -> Iterator[gr.Blocks]:
    """Build the page and serve it; outputs live in a temporary folder removed at the end."""
    runs = Path(args.runs) if args.runs else (DEMO_RUNS if args.demo else RUNS)
    hint = missing_hint(runs, args.demo)
    if hint:
        logger.warning(hint.replace("`", ""))
    device = pick_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="uavseg-app-"))
    try:
        segmenter = Segmenter(device, work, tuple(args.size) if args.size else None)
        examples = demo_frames()
        page = build(runs, segmenter, examples, hint)
        page.queue(default_concurrency_limit=1)  # one model, one request at a time
        try:
            page.launch(
                server_name=args.host,
                server_port=args.port,
                share=args.share,
                prevent_thread_lock=not block,
                allowed_paths=[str(Path(e).parent.resolve()) for e in examples],
                ssr_mode=False,
                show_error=True,  # an unexpected failure is shown on the page, not only logged
                quiet=not block,
            )
        except OSError as exc:  # the port is taken, or the host is not this machine's
            raise ToolError(f"cannot serve on {args.host}:{args.port}: {exc}") from None
        yield page
        page.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="app.py", description=__doc__.splitlines()[0])
    p.add_argument("--demo", action="store_true", help=f"the demo checkpoints under {DEMO_RUNS}")
    p.add_argument("--runs", help=f"folder searched for checkpoints (default {RUNS}/)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve your network")
    p.add_argument("--share", action="store_true", help="also a public gradio.live link")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    add_size_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line of app.py: serve the page until interrupted."""
    args = parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home

    def body() -> int:
        with serving(args):
            pass
        return 0

    return run_cli(body)
