"""Generate a small demo dataset in the exact published layout, so everything runs without the
real 605,045-frame dataset.

Each sequence is a short video from a rig of two cameras panning together: a visible (VL)
camera with a 16:9 frame and an infrared (IR) camera with a 5:4 frame and a narrower field of
view. Both look at one scene (clear sky, clouds, a horizon over land, or mostly ground) in which
one or two UAVs (quadcopter or fixed-wing silhouettes) cross the view, growing or shrinking as
they approach or recede; about a fifth of the frames show no UAV. UAV sizes follow the sequence's
range (``RANGES``, taken in turn): from a few pixels (0.02% of the frame) to one passing near the
camera (14%). Birds and warm buildings are distractors. In IR the UAVs are hot (bright).
Some IR sequences are stored as single-channel JPEGs, as in real copies.

Everything is drawn from ``numpy.random.default_rng([seed, sequence_index])``, so a seed gives
identical files, and a sequence does not depend on how many others are generated.

    python -m data.synthetic --out demo_data [--seed 0] [--sequences 16] [--frames 40] [--size 320]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .layout import INPUT_DIRS, LABEL_DIRS, MASK_SUFFIX

logger = logging.getLogger(__name__)

MARKER = "demo_dataset.json"
VL_HEIGHT = 9 / 16  # VL frame height in VL frame widths (the world unit)
IR_FOV = 0.75  # IR field of view, in VL frame widths
IR_ASPECT = 4 / 5
SUPERSAMPLE = 4  # silhouettes are drawn at 4x and box-filtered: anti-aliased edges
MARGIN = 0.05  # world border around the cameras' views

SKIES = [  # VL sky colour at the top and at the bottom of the view
    ((60, 110, 190), (170, 200, 235)),
    ((120, 160, 210), (200, 215, 235)),
    ((150, 155, 165), (200, 200, 205)),
    ((70, 80, 130), (230, 170, 120)),
]
GROUNDS = [  # VL ground colours mixed by a texture
    ((70, 100, 50), (115, 135, 70)),
    ((140, 120, 80), (175, 155, 110)),
    ((95, 95, 95), (150, 150, 145)),
]
TREES = (35, 55, 30)


# -- shapes ------------------------------------------------------------------------------------
# Silhouettes are lists of polygons in unit coordinates (largest extent about 1, centred on 0).


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 14) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _bar(x0: float, y0: float, x1: float, y1: float, width: float) -> np.ndarray:
    """A line segment of the given width as a quadrilateral."""
    d = np.array([x1 - x0, y1 - y0])
    n = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9) * width / 2
    p0, p1 = np.array([x0, y0]), np.array([x1, y1])
    return np.stack([p0 + n, p1 + n, p1 - n, p0 - n])


def quadcopter(view: str) -> list[np.ndarray]:
    """A quadcopter seen from below (an X with four rotors) or from the side."""
    if view == "below":
        parts = [_ellipse(0, 0, 0.14, 0.11)]
        for sx in (-1, 1):
            for sy in (-1, 1):
                parts.append(_bar(0, 0, 0.3 * sx, 0.3 * sy, 0.07))
                parts.append(_ellipse(0.34 * sx, 0.34 * sy, 0.15, 0.15))
        return parts
    return [
        _bar(-0.15, 0.0, 0.15, 0.0, 0.16),  # body
        _bar(-0.42, -0.05, 0.42, -0.05, 0.06),  # arms
        _ellipse(-0.42, -0.1, 0.1, 0.03),  # rotors
        _ellipse(0.42, -0.1, 0.1, 0.03),
        _bar(-0.12, 0.05, -0.2, 0.18, 0.04),  # legs
        _bar(0.12, 0.05, 0.2, 0.18, 0.04),
    ]


def fixed_wing() -> list[np.ndarray]:
    """A fixed-wing UAV seen from below, nose along +x."""
    return [
        _ellipse(0, 0, 0.5, 0.05),
        np.array([(0.12, 0), (-0.02, -0.5), (-0.12, -0.5), (-0.05, 0), (-0.12, 0.5), (-0.02, 0.5)]),
        np.array(
            [(-0.36, 0), (-0.44, -0.17), (-0.5, -0.17), (-0.47, 0), (-0.5, 0.17), (-0.44, 0.17)]
        ),
    ]


def bird(flap: float) -> list[np.ndarray]:
    """A gull-winged bird; ``flap`` in [-1, 1] raises or lowers the wing tips."""
    tip = -0.25 * flap
    return [
        _bar(-0.5, tip, -0.18, 0.02, 0.09),
        _bar(-0.18, 0.02, 0.0, 0.1, 0.1),
        _bar(0.0, 0.1, 0.18, 0.02, 0.1),
        _bar(0.18, 0.02, 0.5, tip, 0.09),
        _ellipse(0, 0.1, 0.08, 0.05, n=8),
    ]


def render_alpha(
    shape: list[np.ndarray], cx: float, cy: float, extent: float, angle: float, squash: float
) -> tuple[np.ndarray, int, int]:
    """Coverage (0..1) of a silhouette centred at pixel (cx, cy), ``extent`` pixels across.

    Returns the coverage array and its top-left pixel; the array is aligned to the frame grid.
    """
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]]) * extent
    radius = extent * 0.75 + 2
    x0, y0 = math.floor(cx - radius), math.floor(cy - radius)
    n = math.ceil(2 * radius) + 2
    canvas = Image.new("L", (n * SUPERSAMPLE, n * SUPERSAMPLE))
    draw = ImageDraw.Draw(canvas)
    offset = np.array([cx - x0, cy - y0])
    for poly in shape:
        pts = (poly * [1.0, squash]) @ rot.T + offset
        draw.polygon([tuple(p) for p in pts * SUPERSAMPLE], fill=255)
    alpha = np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255
    return alpha, x0, y0


def composite(
    frame: np.ndarray,
    alpha: np.ndarray,
    x0: int,
    y0: int,
    value: np.ndarray | float,
    mask: np.ndarray | None = None,
) -> None:
    """Blend ``value`` into ``frame`` (in place) with coverage ``alpha``; mark ``mask`` if given."""
    h, w = frame.shape[:2]
    ya, xa = max(0, -y0), max(0, -x0)
    yb, xb = min(alpha.shape[0], h - y0), min(alpha.shape[1], w - x0)
    if ya >= yb or xa >= xb:
        return
    a = alpha[ya:yb, xa:xb]
    region = frame[y0 + ya : y0 + yb, x0 + xa : x0 + xb]
    if frame.ndim == 3:
        a = a[..., None]
    region *= 1 - a
    region += a * value
    if mask is not None:
        covered = alpha[ya:yb, xa:xb] >= 0.5
        if not covered.any() and alpha[ya:yb, xa:xb].max() > 0.1:
            # A UAV smaller than a pixel still marks the pixel it covers most.
            covered = alpha[ya:yb, xa:xb] == alpha[ya:yb, xa:xb].max()
        mask[y0 + ya : y0 + yb, x0 + xa : x0 + xb] |= covered


def local_mean(frame: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray | float:
    """Mean background value around a pixel, used to keep a target visible."""
    h, w = frame.shape[:2]
    ya, yb = int(np.clip(cy - r, 0, h - 1)), int(np.clip(cy + r + 1, 1, h))
    xa, xb = int(np.clip(cx - r, 0, w - 1)), int(np.clip(cx + r + 1, 1, w))
    return frame[ya:yb, xa:xb].reshape(-1, *frame.shape[2:]).mean(axis=0)


# -- scenes ------------------------------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bicubically."""
    ch = max(2, round(cells * h / w))
    grid = rng.random((ch, cells)).astype(np.float32)
    out = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC))
    return np.clip(out, 0, 1)


@dataclass
class World:
    """A sequence's static scene, rendered once at VL pixel density over the panned area."""

    vl: np.ndarray  # HxWx3 float32
    ir: np.ndarray  # HxW float32
    density: float  # pixels per world unit


def render_world(rng: np.random.Generator, kind: str, density: float, pan: float) -> World:
    """Sky, clouds, horizon, trees, ground and buildings for both cameras' radiometry."""
    w = math.ceil((1 + pan + 2 * MARGIN) * density)
    h = math.ceil((max(VL_HEIGHT, IR_FOV * IR_ASPECT) + 2 * MARGIN) * density)
    v = (np.arange(h, dtype=np.float32)[:, None] / density - MARGIN) / VL_HEIGHT  # 0 top, 1 bottom
    v = np.clip(v, 0, 1)

    top, bottom = (
        np.array(c, np.float32) + rng.uniform(-10, 10, 3) for c in SKIES[rng.integers(4)]
    )
    vl = (top + (bottom - top) * v[..., None]) * np.ones((1, w, 1), np.float32)
    ir_top = rng.uniform(20, 50)
    ir = (ir_top + rng.uniform(15, 45) * v) * np.ones((1, w), np.float32)

    if kind in ("cloudy", "horizon") or (kind == "clear" and rng.random() < 0.3):
        cover = smooth_noise(rng, h, w, 6) * 0.65 + smooth_noise(rng, h, w, 18) * 0.35
        cloud = np.clip((cover - rng.uniform(0.45, 0.6)) / 0.15, 0, 1)
        shade = 0.75 + 0.25 * smooth_noise(rng, h, w, 24)
        white = rng.uniform(200, 250) * shade
        vl += (white[..., None] - vl) * cloud[..., None]
        ir += rng.uniform(15, 40) * cloud

    if kind in ("horizon", "ground"):
        line = rng.uniform(0.55, 0.85) if kind == "horizon" else rng.uniform(0.1, 0.3)
        cols = np.arange(w)
        edge = line + (smooth_noise(rng, 1, w, 8)[0] - 0.5) * 0.06
        tree_top = edge - smooth_noise(rng, 1, w, 40)[0] * rng.uniform(0.02, 0.08)
        trees = (v >= tree_top[cols][None, :]).astype(np.float32)
        ground = (v >= edge[cols][None, :]).astype(np.float32)
        lo, hi = (np.array(c, np.float32) for c in GROUNDS[rng.integers(3)])
        tex = smooth_noise(rng, h, w, 12) * 0.7 + rng.random((h, w), np.float32) * 0.3
        ground_vl = lo + (hi - lo) * tex[..., None]
        ground_ir = rng.uniform(90, 140) + 25 * (tex - 0.5)
        for _ in range(rng.integers(2, 7)):  # buildings: grey in VL, warm in IR
            bw, bh = rng.uniform(0.02, 0.08) * density, rng.uniform(0.01, 0.04) * density
            bx = rng.uniform(0, w - bw)
            by = rng.uniform((edge.mean() * VL_HEIGHT + MARGIN) * density, h - bh)
            ys, xs = slice(int(by), int(by + bh) + 1), slice(int(bx), int(bx + bw) + 1)
            ground_vl[ys, xs] = rng.uniform(110, 190)
            ground_ir[ys, xs] += rng.uniform(20, 40)
        vl += (np.float32(TREES) - vl) * (trees - ground)[..., None]
        ir += (ground_ir - rng.uniform(5, 20) - ir) * (trees - ground)
        vl += (ground_vl - vl) * ground[..., None]
        ir += (ground_ir - ir) * ground
    return World(vl, ir, density)


# -- sequences ---------------------------------------------------------------------------------


@dataclass
class Mover:
    """Something crossing the view: its shape, path and size over the sequence."""

    kind: str  # quadcopter, fixed_wing or bird
    start: np.ndarray  # (x, y) as fractions of the VL frame
    end: np.ndarray
    wobble: np.ndarray  # amplitude (x, y), frequency, phase
    extent: tuple[float, float]  # start and end size in VL frame widths
    squash: float
    view: str
    shade: float  # VL grey level (the colour flips if it would not stand out)
    heat: float  # IR excess over the local background

    def at(self, tau: float) -> tuple[float, float, float, float]:
        """Position (x, y), size and heading at sequence time tau in [0, 1]."""
        amp, freq, phase = self.wobble[:2], self.wobble[2], self.wobble[3]
        wave = np.sin(2 * np.pi * freq * tau + phase + np.array([0, 1.3]))
        x, y = self.start + (self.end - self.start) * tau + amp * wave
        size = self.extent[0] * (self.extent[1] / self.extent[0]) ** tau
        dx, dy = self.end - self.start
        return float(x), float(y), size, math.atan2(dy * VL_HEIGHT, dx)

    def shape(self, t: int) -> list[np.ndarray]:
        if self.kind == "bird":
            return bird(math.sin(t * 1.9 + self.wobble[3]))
        return quadcopter(self.view) if self.kind == "quadcopter" else fixed_wing()


# UAV sizes as the fraction of the VL frame the silhouette covers (IR frames see a UAV about a
# quarter larger), by the sequence's range. Sequences take the ranges in turn, so any four
# consecutive ones (the default demo's test split) hold UAVs in every size bin of
# engine.breakdown: from a few pixels (tiny, < 0.1%) to one passing near the camera (> 5%).
RANGES: dict[str, tuple[float, float]] = {
    "far": (0.0002, 0.0006),
    "mid": (0.002, 0.006),
    "near": (0.015, 0.035),
    "close": (0.08, 0.14),
}


def coverage(shape: list[np.ndarray], squash: float) -> float:
    """The fraction of its extent squared that a silhouette covers (about 0.1 to 0.4)."""
    alpha, _, _ = render_alpha(shape, 50.0, 50.0, 64.0, 0.0, squash)
    return float(alpha.sum()) / 64.0**2


def make_uav(rng: np.random.Generator, sky_bottom: float, reach: str = "mid") -> Mover:
    kind = "quadcopter" if rng.random() < 0.5 else "fixed_wing"
    ys = (0.1, max(0.25, sky_bottom - 0.08))
    start = np.array([rng.uniform(0.12, 0.88), rng.uniform(*ys)])
    end = np.array([rng.uniform(0.12, 0.88), rng.uniform(*ys)])
    wobble = np.array(
        [rng.uniform(0, 0.03), rng.uniform(0, 0.02), rng.uniform(0.5, 2), rng.uniform(0, 2 * np.pi)]
    )
    squash = rng.uniform(0.45, 0.9) if kind == "quadcopter" else rng.uniform(0.35, 1.0)
    view = "below" if rng.random() < 0.5 else "side"
    shape = quadcopter(view) if kind == "quadcopter" else fixed_wing()
    # Area fractions log-uniform in the range at both ends of the path (approaching or
    # receding), turned into extents (VL frame widths) through the silhouette's coverage.
    fill = coverage(shape, squash)
    areas = np.exp(rng.uniform(*np.log(RANGES[reach]), size=2))
    extent = tuple(float(np.sqrt(a * VL_HEIGHT / fill)) for a in areas)
    shade = rng.choice([rng.uniform(15, 70), rng.uniform(170, 220)], p=[0.7, 0.3])
    return Mover(
        kind,
        start,
        end,
        wobble=wobble,
        extent=extent,
        squash=squash,
        view=view,
        shade=float(shade),
        heat=rng.uniform(80, 130),
    )


def make_bird(rng: np.random.Generator, sky_bottom: float) -> Mover:
    y = rng.uniform(0.08, max(0.2, sky_bottom - 0.05))
    x0 = rng.uniform(-0.1, 0.4)
    start, end = (
        np.array([x0, y]),
        np.array([x0 + rng.uniform(0.4, 0.8), y + rng.uniform(-0.1, 0.1)]),
    )
    if rng.random() < 0.5:
        start, end = end, start
    size = rng.uniform(0.01, 0.022)
    return Mover(
        "bird",
        start,
        end,
        wobble=np.array([0.0, rng.uniform(0, 0.02), rng.uniform(1, 3), rng.uniform(0, 2 * np.pi)]),
        extent=(size, size),
        squash=1.0,
        view="",
        shade=rng.uniform(50, 110),
        heat=rng.uniform(15, 35),
    )


def _vl_value(frame: np.ndarray, m: Mover, cx: float, cy: float, r: float) -> float:
    """The mover's VL grey, flipped to the other extreme where it would not stand out."""
    bg = float(np.mean(local_mean(frame, cx, cy, r)))
    if m.kind != "bird" and abs(bg - m.shade) < 60:
        return 255 - m.shade if bg > 128 else max(m.shade, 200.0)
    return m.shade


def generate_sequence(
    out: Path, split: str, name: str, seed: int, index: int, frames: int, size: int
) -> None:
    """Write one sequence's VL and IR frames and masks."""
    rng = np.random.default_rng([seed, index])
    kind = rng.choice(["clear", "cloudy", "horizon", "ground"], p=[0.25, 0.3, 0.3, 0.15])
    vl_w, vl_h = size, round(size * VL_HEIGHT)
    ir_w, ir_h = size // 2, round(size // 2 * IR_ASPECT)
    density = float(size)
    pan = rng.uniform(0, 0.2)
    world = render_world(rng, str(kind), density, pan)
    pan_sign = rng.choice([-1, 1])
    ir_centre = np.array([0.5 + rng.uniform(-0.02, 0.02), VL_HEIGHT / 2 + rng.uniform(-0.02, 0.02)])
    ir_density = ir_w / IR_FOV
    sky_bottom = {"clear": 0.9, "cloudy": 0.9, "horizon": 0.55, "ground": 0.9}[str(kind)]

    reach = list(RANGES)[index % len(RANGES)]
    uavs = [make_uav(rng, sky_bottom, reach) for _ in range(2 if rng.random() < 0.15 else 1)]
    birds = (
        [make_bird(rng, sky_bottom) for _ in range(rng.integers(1, 5))]
        if rng.random() < 0.35
        else []
    )
    # A contiguous stretch without any UAV (it has left the view): a fifth of frames on average.
    gap = round(rng.uniform(0.1, 0.3) * frames)
    gap_start = int(rng.choice([0, frames - gap, rng.integers(0, max(1, frames - gap))]))
    ir_gray = index % 3 == 1  # every third IR sequence is stored single-channel
    quality = int(rng.integers(85, 96))
    vl_noise, ir_noise = rng.uniform(1.5, 4), rng.uniform(2, 5)
    ir_columns = rng.normal(0, 1.5, ir_w).astype(np.float32)  # fixed-pattern noise of the sensor

    dirs = {}
    for top, kind_ in ((INPUT_DIRS[0], "img"), (LABEL_DIRS[0], "lbl")):
        for modality in ("visible", "infrared"):
            d = out / top / split / name / modality
            d.mkdir(parents=True, exist_ok=True)
            dirs[kind_, modality] = d

    for t in range(frames):
        tau = t / max(frames - 1, 1)
        pan_px = round((pan * tau if pan_sign > 0 else pan * (1 - tau)) * density)
        left = pan_px / density  # world u of the VL frame's left edge, relative to the world
        m0 = round(MARGIN * density)
        vl = world.vl[m0 : m0 + vl_h, m0 + pan_px : m0 + pan_px + vl_w].copy()
        ir_left = left + ir_centre[0] - IR_FOV / 2
        ir_top = ir_centre[1] - IR_FOV * IR_ASPECT / 2
        box = tuple(
            (np.array([ir_left, ir_top, ir_left + IR_FOV, ir_top + IR_FOV * IR_ASPECT]) + MARGIN)
            * density
        )
        ir = np.array(
            Image.fromarray(world.ir).resize((ir_w, ir_h), Image.Resampling.BILINEAR, box=box)
        )
        vl_mask = np.zeros((vl_h, vl_w), bool)
        ir_mask = np.zeros((ir_h, ir_w), bool)
        present = not (gap_start <= t < gap_start + gap)
        for m in birds + (uavs if present else []):
            x, y, extent, heading = m.at(tau)
            angle = heading if m.kind == "fixed_wing" else 0.15 * math.sin(3 * tau + m.wobble[3])
            shape = m.shape(t)
            # VL camera
            cx, cy, e = x * vl_w, y * vl_h, extent * density
            alpha, ax, ay = render_alpha(shape, cx, cy, e, angle, m.squash)
            value = _vl_value(vl, m, cx, cy, e)
            composite(vl, alpha, ax, ay, value, None if m.kind == "bird" else vl_mask)
            # IR camera: same world point, its own field of view and density
            u, v = x + left, y * VL_HEIGHT
            cx, cy, e = (u - ir_left) * ir_density, (v - ir_top) * ir_density, extent * ir_density
            alpha, ax, ay = render_alpha(shape, cx, cy, e, angle, m.squash)
            heat = min(float(local_mean(ir, cx, cy, e)) + m.heat, 250.0)
            composite(ir, alpha, ax, ay, heat, None if m.kind == "bird" else ir_mask)

        vl += rng.standard_normal(vl.shape, np.float32) * vl_noise
        ir += rng.standard_normal(ir.shape, np.float32) * ir_noise + ir_columns
        frame = f"{t:06d}"
        vl_img = Image.fromarray(np.clip(vl + 0.5, 0, 255).astype(np.uint8))
        ir_img = Image.fromarray(np.clip(ir + 0.5, 0, 255).astype(np.uint8))
        vl_img.save(dirs["img", "visible"] / f"{frame}.jpg", quality=quality)
        (ir_img if ir_gray else ir_img.convert("RGB")).save(
            dirs["img", "infrared"] / f"{frame}.jpg", quality=quality
        )
        Image.fromarray(vl_mask.astype(np.uint8) * 255).save(
            dirs["lbl", "visible"] / f"{frame}{MASK_SUFFIX}"
        )
        Image.fromarray(ir_mask.astype(np.uint8) * 255).save(
            dirs["lbl", "infrared"] / f"{frame}{MASK_SUFFIX}"
        )


def split_sequences(sequences: int) -> dict[str, int]:
    """How many sequences each split gets: about 5/8 train, 1/8 val, 2/8 test."""
    if sequences < 3:
        raise ValueError(f"sequences={sequences} is too few: train, val and test need one each")
    val = max(1, round(sequences / 8))
    test = max(1, round(sequences / 4))
    return {"train": sequences - val - test, "val": val, "test": test}


def generate_demo_dataset(
    out: str | Path,
    seed: int = 0,
    sequences: int = 16,
    frames: int = 40,
    size: int = 320,
    workers: int = 1,
) -> Path:
    """Write a demo dataset under ``out`` and return its root.

    ``sequences`` videos (split by sequence into train/val/test), ``frames`` frames each, in both
    modalities; ``size`` is the VL frame width (VL size x size*9/16, IR size/2 x size*2/5).
    The defaults give 800 train, 160 val and 320 test images. A previous demo dataset at ``out``
    is replaced; any other content in the two dataset folders is refused, not overwritten.
    """
    if frames < 1 or size < 32:
        raise ValueError(f"frames={frames} must be >= 1 and size={size} >= 32")
    out = Path(out)
    counts = split_sequences(sequences)
    existing = [out / d for d in (*INPUT_DIRS, *LABEL_DIRS) if (out / d).exists()]
    if existing:
        if not (out / MARKER).is_file():
            raise FileExistsError(
                f"'{existing[0]}' exists and is not a generated demo dataset; choose another --out"
            )
        for d in existing:
            shutil.rmtree(d)
    out.mkdir(parents=True, exist_ok=True)

    jobs = []
    index = 0
    for split, n in counts.items():
        for _ in range(n):
            jobs.append((out, split, f"seq{index + 1:03d}", seed, index, frames, size))
            index += 1
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(generate_sequence, *zip(*jobs, strict=True)))
    else:
        for job in jobs:
            generate_sequence(*job)
    params = {"seed": seed, "sequences": sequences, "frames": frames, "size": size, **counts}
    (out / MARKER).write_text(json.dumps(params, indent=2) + "\n")
    logger.info("demo dataset written to %s: %s", out, params)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m data.synthetic", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sequences", type=int, default=16, help="videos, split 5:1:2 train/val/test")
    p.add_argument("--frames", type=int, default=40, help="frames per sequence and modality")
    p.add_argument("--size", type=int, default=320, help="VL frame width (IR is half as wide)")
    p.add_argument("--workers", type=int, default=1, help="processes, one sequence at a time")
    args = p.parse_args(argv)
    root = generate_demo_dataset(
        args.out, args.seed, args.sequences, args.frames, args.size, args.workers
    )
    print(f"demo dataset written to {root}")


if __name__ == "__main__":
    main()
