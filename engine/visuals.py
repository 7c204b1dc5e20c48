"""Pictures of a run while it runs: validation frames with truth and prediction in TensorBoard.

Each epoch the same few validation frames (visible and infrared images of the same frames) are
shown as rows of three: the frame, the ground truth in green over it, the prediction in red.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from data import UAVSegDataset

from .losses import main_logits

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

TRUTH, PREDICTION = (0.1, 0.9, 0.2), (1.0, 0.15, 0.1)


def example_indices(dataset: UAVSegDataset, frames: int = 3) -> list[int]:
    """Items of ``frames`` frames spread evenly over the split: both images of each when paired."""
    pairs = dataset.pairs
    if pairs:
        step = len(pairs) / min(frames, len(pairs))
        return [i for k in range(min(frames, len(pairs))) for i in pairs[int(k * step)]]
    count = min(2 * frames, len(dataset))
    return [int(k * len(dataset) / count) for k in range(count)]


def tint(image: Tensor, mask: Tensor, colour: tuple[float, float, float]) -> Tensor:
    """``image`` (3xHxW in [0, 1]) with ``colour`` blended over the pixels where ``mask`` is set."""
    colour_map = torch.tensor(colour, dtype=image.dtype).view(3, 1, 1).expand_as(image)
    return torch.where(mask.bool(), 0.35 * image + 0.65 * colour_map, image)


@torch.inference_mode()
def example_grid(
    model: nn.Module, dataset: UAVSegDataset, cfg: DictConfig, device: torch.device
) -> Tensor:
    """The rows of frame | truth | prediction as one 3xHxW image in [0, 1]."""
    from torchvision.utils import make_grid

    items = [dataset[i] for i in example_indices(dataset)]
    images = torch.stack([item["image"] for item in items])
    was_training = model.training
    model.eval()
    logits = main_logits(model(images.to(device))).float().cpu()
    model.train(was_training)
    predicted = torch.sigmoid(logits) > cfg.trainer.threshold
    panels = []
    for image, item, pred in zip(images, items, predicted, strict=True):
        panels += [image, tint(image, item["mask"], TRUTH), tint(image, pred, PREDICTION)]
    return make_grid(panels, nrow=3, padding=2, pad_value=1.0)


def log_examples(
    writer: SummaryWriter,
    model: nn.Module,
    dataset: UAVSegDataset,
    cfg: DictConfig,
    device: torch.device,
    epoch: int,
) -> None:
    """Add this epoch's example grid to TensorBoard as ``val/examples``."""
    writer.add_image("val/examples", example_grid(model, dataset, cfg, device), epoch)
