"""The GPU speed targets, each a ratio of two setups timed interleaved in one process.

    python benchmarks/gpu_targets.py [--repeats 50] [--warmup 10] [--skip-compile]

1. latency: DAS-Net vs smp UNet (resnet34), batch 1, 512x512, FP32, both after
   ``optimize_for_inference`` and both plain eval (target: DAS-Net <= 0.7x UNet);
2. inference: DAS-Net bf16 autocast + channels_last + ``torch.compile`` vs FP32 eager
   (target: >= 3x the FPS);
3. training: DAS-Net at batch 24, 512x512 (Dice loss with deep supervision, AdamW), bf16 autocast
   vs FP32 (target: >= 2x the images/s).
Needs CUDA; prints one markdown table per target with the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.latency import interleaved  # noqa: E402
from engine.losses import SegmentationLoss  # noqa: E402
from models import build_model, optimize_for_inference  # noqa: E402


def bf16(enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def forward_fn(model: torch.nn.Module, x: torch.Tensor, amp: bool) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad(), bf16(amp):
            return model(x)

    return run


def train_fn(model: torch.nn.Module, batch: int, size: int, amp: bool) -> Callable[[], object]:
    """One AdamW step of the project's loss on a fixed random batch."""
    device = next(model.parameters()).device
    x = torch.rand(batch, 3, size, size, device=device)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.95).float()
    loss_fn = SegmentationLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> object:
        opt.zero_grad(set_to_none=True)
        with bf16(amp):
            out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        opt.step()
        return loss

    return step


def table(title: str, times: dict[str, float], per_call: int = 1) -> None:
    print(f"\n### {title}\n\n| setup | ms per call | per second |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t * 1e3:.2f} | {per_call / t:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--train-repeats", type=int, default=10)
    p.add_argument("--skip-compile", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device")
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(dev)}")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    x = torch.rand(1, 3, 512, 512, device=dev)
    dasnet = build_model("dasnet").to(dev).eval()
    unet = build_model("unet", encoder_weights=None).to(dev).eval()

    t = interleaved(
        {
            "dasnet optimized": forward_fn(optimize_for_inference(dasnet), x, False),
            "unet optimized": forward_fn(optimize_for_inference(unet), x, False),
            "dasnet plain eval": forward_fn(dasnet, x, False),
            "unet plain eval": forward_fn(unet, x, False),
        },
        dev,
        args.repeats,
        args.warmup,
    )
    table("1. FP32 batch 1, 512x512 (FPS = per second)", t)
    print(
        f"\nDAS-Net / UNet latency: optimized {t['dasnet optimized'] / t['unet optimized']:.2f}x, "
        f"plain {t['dasnet plain eval'] / t['unet plain eval']:.2f}x (target <= 0.7x)",
        flush=True,
    )

    train_t = interleaved(
        {
            "fp32": train_fn(build_model("dasnet").to(dev).train(), 24, 512, False),
            "bf16 autocast": train_fn(build_model("dasnet").to(dev).train(), 24, 512, True),
        },
        dev,
        args.train_repeats,
        3,
    )
    table("3. DAS-Net training step, batch 24, 512x512 (per second = images/s)", train_t, 24)
    print(
        f"\nbf16 / FP32 training images/s: {train_t['fp32'] / train_t['bf16 autocast']:.2f}x "
        "(target >= 2x)",
        flush=True,
    )
    torch.cuda.empty_cache()

    if args.skip_compile:
        return
    fast = optimize_for_inference(dasnet, compile=True, channels_last=True)
    t = interleaved(
        {
            "fp32 eager (plain eval)": forward_fn(dasnet, x, False),
            "bf16 + channels_last + compile": forward_fn(
                fast, x.to(memory_format=torch.channels_last), True
            ),
        },
        dev,
        args.repeats,
        args.warmup,
    )
    table("2. DAS-Net batch 1, 512x512", t)
    gain = t["fp32 eager (plain eval)"] / t["bf16 + channels_last + compile"]
    print(f"\nbf16 + channels_last + compile / FP32 eager FPS: {gain:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
