"""Augmentation (data/augment.py): image and mask move together, UAVs stay in view, IR keeps its
grey levels."""

import pytest
import torch

from data.augment import PairAugment, make_augment, parse_augment
from engine.config import ConfigError, load_config


def pattern(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A frame whose first channel is its mask (255 on the target), an L-shaped target."""
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[0, 20:30, 8:12] = True
    mask[0, 26:30, 8:24] = True
    image = torch.randint(0, 100, (3, size, size), dtype=torch.uint8)
    image[0] = mask[0].to(torch.uint8) * 255
    return image, mask


def test_names_parse_and_bad_ones_are_refused():
    assert parse_augment("none") == () and parse_augment("flip+scale") == ("flip", "scale")
    assert make_augment("none") is None and make_augment(False) is None
    for bad in ("blur", "flip+flip", "flip+", ""):
        with pytest.raises(ValueError, match="flip, scale, color"):
            parse_augment(bad)
    assert load_config("dasnet", overrides=["dataset.augment=flip+scale"]).dataset.augment
    with pytest.raises(ConfigError, match="dataset.augment"):
        load_config("dasnet", overrides=["dataset.augment=blur"])


def test_flip_moves_image_and_mask_together():
    image, mask = pattern()
    flips = 0
    for seed in range(8):
        torch.manual_seed(seed)
        out, out_mask = PairAugment(("flip",))(image, mask, "visible")
        assert out_mask.dtype == torch.bool and out.shape == image.shape
        assert torch.equal(out[0], out_mask[0].to(torch.uint8) * 255)
        flips += torch.equal(out_mask, mask.flip(-1))
    assert 0 < flips < 8  # a coin, not always or never


def test_scale_crops_image_and_mask_alike_and_zooms_in():
    image, mask = pattern()
    for seed in range(10):
        torch.manual_seed(seed)
        out, out_mask = PairAugment(("scale",), scale_range=(1.4, 1.6))(image, mask, "infrared")
        assert out.shape == image.shape and out_mask.shape == mask.shape
        bright = out[0] > 127
        agree = (bright == out_mask[0]).float().mean()
        assert agree > 0.98  # only boundary pixels differ (bilinear image, nearest mask)
        assert out_mask.sum() > 1.4 * mask.sum()  # zoomed in, target whole


def test_scale_keeps_a_small_uav_in_view_even_at_the_border():
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 60:63, 61:64] = True  # 3x3 UAV in a corner
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    two = mask.clone()
    two[0, 0:3, 0:3] = True  # and one in the opposite corner: cannot both fit
    for seed in range(30):
        torch.manual_seed(seed)
        _, out = PairAugment(("scale",), scale_range=(1.5, 1.5))(image, mask, "visible")
        assert out.sum() >= mask.sum()
        _, out = PairAugment(("scale",), scale_range=(1.5, 1.5))(image, two, "visible")
        assert out.sum() >= mask.sum()  # at least one whole


def test_colour_jitter_changes_visible_frames_only():
    image, mask = pattern()
    augment = PairAugment(("color",))
    torch.manual_seed(0)
    infrared, ir_mask = augment(image, mask, "infrared")
    assert torch.equal(infrared, image) and torch.equal(ir_mask, mask)
    visible, vis_mask = augment(image, mask, "visible")
    assert not torch.equal(visible, image) and torch.equal(vis_mask, mask)
