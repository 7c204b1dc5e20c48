"""Benchmark test.mode=pad: a 1920x1080 frame through the Segmenter against one plain forward of
the padded 1920x1152 frame (what the pixels cost without the mode's padding and cropping).

    python benchmarks/bench_pad_mode.py [--model dasnet] [--rounds 5] [--device cpu]

Both sides run interleaved in one process, on the same optimised model, after one warm-up each;
the ratio is of the medians. Target (issue 15): pad <= 1.2x the plain forward. ``--slide`` also
times a slide with one whole-frame tile (it must cost what pad costs: one forward).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.inference_modes import Segmenter, make_settings, pad_to, size_multiple  # noqa: E402
from engine.latency import timed  # noqa: E402
from engine.losses import main_logits  # noqa: E402
from models import MODEL_NAMES, build_model, optimize_for_inference  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="dasnet", choices=MODEL_NAMES)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", nargs=2, type=int, default=[1080, 1920], metavar=("H", "W"))
    p.add_argument("--slide", action="store_true", help="also a slide with one whole-frame tile")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    kwargs = {"encoder_weights": None} if args.model in ("unet", "pan", "pspnet") else {}
    model = optimize_for_inference(build_model(args.model, **kwargs).to(device).eval())
    m = size_multiple(model)
    h, w = args.size
    frame = torch.rand(1, 3, h, w, device=device)
    padded = pad_to(frame, -(-h // m) * m, -(-w // m) * m, "reflect")
    pad = Segmenter(model, make_settings("pad"))
    slide = Segmenter(model, make_settings("slide", tile=tuple(padded.shape[-2:])))

    def plain() -> None:
        with torch.inference_mode():
            main_logits(model(padded)).float()

    sides = {"plain forward": plain, "pad": lambda: pad(frame)}
    if args.slide:
        sides["slide, one tile"] = lambda: slide(frame)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for fn in sides.values():  # warm-up: buffers, workspace
        fn()
    for r in range(args.rounds):
        for name, fn in sides.items():
            times[name].append(timed(fn, device))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()))
    base = statistics.median(times["plain forward"])
    logits = torch.zeros(1, 1, *padded.shape[-2:], device=device)
    extra = statistics.median(
        timed(
            lambda: (pad_to(frame, *padded.shape[-2:], "reflect"), logits[..., :h, :w].float()),
            device,
        )
        for _ in range(20)
    )
    print(
        f"{args.model} on {device} ({torch.get_num_threads()} threads), frame {h}x{w}, "
        f"padded {padded.shape[-2]}x{padded.shape[-1]}, median of {args.rounds} interleaved rounds"
    )
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"  {name:16s} {median * 1000:9.1f} ms   {median / base:.3f}x the plain forward")
    print(
        f"  what pad adds (reflect padding and the crop, median of 20): {extra * 1000:.2f} ms, "
        f"{extra / base:.2e} of the plain forward"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
