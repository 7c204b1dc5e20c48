"""Datasets and DataLoaders from the config, and the demo data they fall back on."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, DistributedSampler

from data import UAVSegDataset, generate_demo_dataset
from data.decode import IMAGE_CHANNELS

from . import distributed as dist
from .config import ConfigError

logger = logging.getLogger(__name__)

_SPLIT_LIMIT = {"train": "max_samples", "val": "val_max_samples", "test": "test_max_samples"}


def ensure_demo_data(cfg: DictConfig) -> None:
    """With dataset.demo, generate the demo dataset at dataset.root on first use (rank 0 only)."""
    root = Path(cfg.dataset.root)
    if not cfg.dataset.demo or (root / "UAVSemanticSegmentationInput").is_dir():
        return
    if dist.is_main():
        logger.info("generating demo data in %s (first use)", root)
        generate_demo_dataset(root, seed=0)
    dist.barrier()


def make_dataset(cfg: DictConfig, split: str) -> UAVSegDataset:
    """One split as the config describes it (size, modality, subset, mask resize)."""
    d = cfg.dataset
    if cfg.model.in_channels != IMAGE_CHANNELS:
        raise ConfigError(
            f"config key 'model.in_channels' = {cfg.model.in_channels}: the dataset's frames are "
            f"read as {IMAGE_CHANNELS}-channel RGB (infrared ones too)"
        )
    return UAVSegDataset(
        d.root,
        split,
        image_size=tuple(d.image_size),
        modality=d.modality.value,
        max_samples=d[_SPLIT_LIMIT[split]],
        seed=d.seed,
        mask_resize=d.mask_resize.value,
        skip_unreadable=d.skip_unreadable,
        augment=d.augment if split == "train" else "none",
    )


def make_loader(
    cfg: DictConfig,
    dataset: UAVSegDataset,
    train: bool,
    batch_size: int,
    device: torch.device,
    collate_fn=None,
) -> DataLoader:
    """A tuned DataLoader: shuffled and sharded per process for training, sharded in order else.

    The training order depends only on dataset.seed and the epoch (DistributedSampler with
    set_epoch, also for one process), so a resumed run sees the batches an unbroken one would.
    """
    d = cfg.dataset
    if train:
        sampler = DistributedSampler(
            dataset, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=True, seed=d.seed
        )
    else:
        sampler = dist.ShardSampler(len(dataset))
    workers = d.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=d.pin_memory and device.type == "cuda",
        persistent_workers=d.persistent_workers and workers > 0,
        prefetch_factor=d.prefetch_factor if workers > 0 else None,
        drop_last=False,
        collate_fn=collate_fn,
    )
