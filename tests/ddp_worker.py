"""Run by test_distributed.py under torchrun: train, then save this rank's final weights."""

import sys
from pathlib import Path

import torch

from engine import distributed as dist
from engine.config import load_config
from engine.train import train

if __name__ == "__main__":
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    summary = train(load_config("thindyunet", overrides=overrides, demo=True))
    torch.save(summary["model"].state_dict(), out / f"rank{dist.rank()}.pt")
    dist.cleanup()
