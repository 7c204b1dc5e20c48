"""Inference modes (engine/inference_modes.py): resize, pad and slide on frames of any size."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from engine.inference_modes import (
    MODES,
    ModeError,
    Segmenter,
    check_frame,
    make_settings,
    pad_to,
    size_multiple,
    tile_starts,
)
from models import DyUNet


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    """A 3-stage DAS-Net (sides multiples of 8), small enough for full-HD frames in a test."""
    torch.manual_seed(0)
    return DyUNet(width=8, stages=3, attention_gates=True, deep_supervision=True).eval()


def test_modes_are_resize_pad_slide():
    assert MODES == ("resize", "pad", "slide")


def test_the_size_multiple_comes_from_the_model():
    assert size_multiple(DyUNet(width=8, stages=3)) == 8
    assert size_multiple(DyUNet(width=8, stages=7)) == 128
    assert size_multiple(smp.Unet(encoder_name="resnet34", encoder_weights=None)) == 32
    assert size_multiple(smp.PAN(encoder_name="resnet34", encoder_weights=None)) == 32
    assert size_multiple(smp.Unet(encoder_name="mobilenet_v2", encoder_weights=None)) == 32
    assert size_multiple(smp.PSPNet(encoder_name="resnet34", encoder_weights=None)) == 8
    assert size_multiple(nn.Conv2d(3, 1, 1)) == 1


@pytest.mark.parametrize("mode", ["pad", "slide"])
@pytest.mark.parametrize("size", [(757, 1001), (5, 9)])
def test_pad_and_slide_give_logits_at_the_frame_size(tiny, mode, size):
    x = torch.rand(1, 3, *size)
    tile = (256, 256) if mode == "slide" else None
    logits = Segmenter(tiny, make_settings(mode, tile=tile))(x)
    assert logits.shape == (1, 1, *size)
    assert torch.isfinite(logits).all()


def test_pad_pads_to_the_next_multiple_and_crops_back(tiny):
    seen = []
    tiny_hook = tiny.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    try:
        x = torch.rand(1, 3, 1080, 1920)
        logits = Segmenter(tiny, make_settings("pad"))(x)
        x2 = torch.rand(1, 3, 757, 1001)
        logits2 = Segmenter(tiny, make_settings("pad"))(x2)
    finally:
        tiny_hook.remove()
    # 1080x1920 is already a multiple of 8: no padding at all; 757x1001 grows to 760x1008
    assert seen == [(1, 3, 1080, 1920), (1, 3, 760, 1008)]
    with torch.inference_mode():
        assert torch.equal(logits, tiny(x))
        padded = pad_to(x2, 760, 1008, "reflect")
        assert torch.equal(logits2, tiny(padded)[..., :757, :1001])


def test_padding_reflects_by_default_or_adds_zeros():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    reflected = pad_to(x, 5, 6, "reflect")
    assert torch.equal(reflected[..., :3, :4], x)
    assert torch.equal(reflected[0, 0, 3, :4], x[0, 0, 1])  # the row above the edge, mirrored
    assert torch.equal(reflected[0, 0, :3, 4], x[0, 0, :, 2])
    zeros = pad_to(x, 5, 6, "zeros")
    assert zeros[..., 3:, :].abs().sum() == 0 and zeros[..., 4:].abs().sum() == 0
    # a frame smaller than its padding repeats its edge (reflection cannot)
    assert torch.equal(pad_to(x, 9, 4, "reflect")[0, 0, 8], x[0, 0, 2])


def test_a_tile_covering_the_whole_padded_frame_is_exactly_pad(tiny):
    x = torch.rand(1, 3, 757, 1001)
    pad = Segmenter(tiny, make_settings("pad"))(x)
    slide = Segmenter(tiny, make_settings("slide", tile=(760, 1008)))(x)
    assert torch.equal(slide, pad)


def test_slide_blends_tiles_into_what_one_forward_gives_for_a_pointwise_model():
    # A 1x1 convolution sees only its pixel, so every tiling must give the whole-frame logits:
    # a tile placed or averaged wrongly would show.
    torch.manual_seed(0)
    model = nn.Conv2d(3, 1, 1).eval()
    x = torch.rand(2, 3, 37, 53)
    for tile, stride in [((16, 16), (16, 16)), ((16, 24), (5, 7)), ((37, 53), None)]:
        got = Segmenter(model, make_settings("slide", tile=tile, stride=stride, tile_batch=3))(x)
        torch.testing.assert_close(got, model(x), rtol=1e-6, atol=1e-6)


def test_tiles_cover_the_side_and_the_last_one_ends_at_the_edge():
    assert tile_starts(1001, 256, 128) == [0, 128, 256, 384, 512, 640, 745]
    assert tile_starts(256, 256, 128) == [0]
    assert tile_starts(100, 256, 128) == [0]


def test_tiles_are_batched(tiny):
    calls = []
    hook = tiny.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        Segmenter(tiny, make_settings("slide", tile=64, stride=32, tile_batch=8))(
            torch.rand(1, 3, 128, 128)
        )
    finally:
        hook.remove()
    assert calls == [8, 1]  # 3x3 tiles: one batch of 8, then the last


def test_resize_at_the_model_size_is_the_plain_forward(tiny):
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(Segmenter(tiny, make_settings("resize", size=64))(x), tiny(x))
    assert Segmenter(tiny, make_settings("resize", size=64))(torch.rand(1, 3, 50, 70)).shape == (
        1,
        1,
        50,
        70,
    )


@pytest.mark.parametrize(
    "settings, key, hint",
    [
        (dict(mode="zoom"), "test.mode", "resize, pad, slide"),
        (dict(mode="slide", tile=(100, 128)), "test.tile", "multiples of 8, e.g. [104, 128]"),
        (dict(mode="slide"), "test.tile", "needs a tile"),
        (dict(mode="slide", tile=64, stride=(80, 32)), "test.stride", "at most the tile"),
        (dict(mode="pad", tile=64), "test.tile", "only to mode slide"),
        (dict(mode="pad", padding="none"), "test.padding", "reflect or zeros"),
        (dict(mode="resize", size=(100, 100)), "test.size", "multiples of 8"),
        (dict(mode="pad", scale=0), "test.scale", "> 0"),
    ],
)
def test_a_combination_that_cannot_work_names_the_key(tiny, settings, key, hint):
    keys = {k: f"test.{k}" for k in ("mode", "size", "tile", "stride", "padding", "scale")}
    with pytest.raises(ModeError, match=key) as info:
        Segmenter(tiny, make_settings(**settings), keys)
    assert hint in str(info.value)


def test_slide_without_padding_refuses_a_frame_smaller_than_the_tile(tiny):
    s = make_settings("slide", tile=64, padding="none")
    with pytest.raises(ModeError, match=r"tile = \[64, 64\]: larger than the frame \(40x90\)"):
        check_frame(s, 40, 90)
    with pytest.raises(ModeError, match="larger than the frame"):
        Segmenter(tiny, s)(torch.rand(1, 3, 40, 90))
    assert Segmenter(tiny, s)(torch.rand(1, 3, 64, 90)).shape == (1, 1, 64, 90)
