"""engine/visuals.py: the same validation frames each epoch, truth and prediction side by side."""

import torch

from data import UAVSegDataset
from engine.config import load_config
from engine.visuals import TRUTH, example_grid, example_indices, tint


def test_examples_are_both_images_of_fixed_frames(tiny_root):
    val = UAVSegDataset(tiny_root, "val", image_size=32)
    chosen = example_indices(val, frames=3)
    assert chosen == example_indices(val, frames=3)  # fixed
    modalities = [val.samples[i].modality for i in chosen]
    assert modalities[::2] == ["visible"] * (len(chosen) // 2) and set(modalities[1::2]) == {
        "infrared"
    }
    frames = [(val.samples[i].sequence, val.samples[i].frame) for i in chosen]
    assert frames[::2] == frames[1::2]  # a frame's visible image, then its infrared image


def test_tint_colours_the_mask_pixels_only():
    image = torch.full((3, 4, 4), 0.5)
    mask = torch.zeros(1, 4, 4)
    mask[0, 1, 2] = 1
    out = tint(image, mask, TRUTH)
    assert torch.equal(out[:, 0], image[:, 0]) and out[1, 1, 2] > 0.5 > out[0, 1, 2]


def test_grid_rows_are_frame_truth_prediction(tiny_root):
    val = UAVSegDataset(tiny_root, "val", image_size=32)
    cfg = load_config("unet", overrides=["trainer.threshold=0.5"])

    class Everywhere(torch.nn.Module):  # predicts a UAV on every pixel
        def forward(self, x):
            return torch.ones(x.shape[0], 1, *x.shape[2:])

    grid = example_grid(Everywhere(), val, cfg, torch.device("cpu"))
    rows = len(example_indices(val))
    assert grid.shape == (3, 2 + rows * 34, 2 + 3 * 34)
    first = val[example_indices(val)[0]]
    frame, truth, pred = (grid[:, 2:34, 2 + k * 34 : 34 + k * 34] for k in range(3))
    assert torch.allclose(frame, first["image"])
    assert torch.allclose(truth, tint(first["image"], first["mask"], TRUTH))
    assert (pred[0] > pred[1]).all()  # red everywhere
