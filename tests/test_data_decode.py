"""Frames as the camera means them: 16-bit infrared scaled by its own range, EXIF rotations
applied; masks holding JPEG data reported by the check and warned about when loading."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data.decode
from data import UAVSegDataset
from data.check import check_root
from data.decode import decode_image, open_file, read_pair
from tools.predict import read_image


@pytest.fixture
def root(tiny_root, tmp_path) -> Path:
    """A private copy of the tiny dataset to change."""
    return Path(shutil.copytree(tiny_root, tmp_path / "uav", ignore=shutil.ignore_patterns(".*")))


def frames(root: Path, split: str = "train", modality: str = "infrared") -> list[Path]:
    return sorted((root / "UAVSemanticSegmentationInput" / split).glob(f"*/{modality}/*.jpg"))


def mask_of(frame: Path) -> Path:
    parts = list(frame.parts)
    parts[parts.index("UAVSemanticSegmentationInput")] = "UAVSemanticSegmentationLabels"
    return Path(*parts).with_name(frame.stem + "_mask.png")


def thermal_frame(height: int = 128, width: int = 160) -> np.ndarray:
    """Raw 16-bit counts as a thermal core gives them: a narrow band (21000-23000), a hot spot."""
    counts = np.linspace(21000, 22000, width)[None, :].repeat(height, 0)
    counts[40:50, 60:80] = 23000
    return counts.astype(np.uint16)


def save_16bit(path: Path, counts: np.ndarray) -> Path:
    Image.fromarray(counts).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    return path


def test_a_16_bit_frame_is_scaled_by_its_own_range_not_clipped_to_white(tmp_path):
    counts = thermal_frame()
    path = save_16bit(tmp_path / "ir.png", counts)
    with open_file(str(path), "image") as im:
        image = decode_image(im, str(path), None)
    assert image.shape == (3, 128, 160) and image.dtype == torch.uint8
    assert image.min() == 0 and image.max() == 255  # coldest -> 0, hottest -> 255
    row = image[0, 0].int()
    assert (row.diff() >= 0).all() and row[-1] - row[0] > 100  # the gradient survives
    expected = np.rint((counts.astype(float) - 21000) * 255 / 2000).astype(np.uint8)
    assert torch.equal(image[1], torch.from_numpy(expected))


def test_16_bit_frames_load_alike_in_the_dataset_predict_and_the_check(root):
    frame = frames(root)[0]
    with Image.open(frame) as im:
        height, width = im.size[1], im.size[0]
    frame.unlink()
    png = save_16bit(frame.with_suffix(".png"), thermal_frame(height, width))
    image, _ = read_pair(str(png), str(mask_of(frame)), (128, 128))
    assert image.float().std() > 20  # not one solid value
    data = UAVSegDataset(root, "train", image_size=128, cache=False)
    items = [data[i]["image"] for i in range(len(data)) if data.samples[i].image_path == str(png)]
    assert len(items) == 1 and items[0].std() > 0.05 and items[0].max() <= 1.0
    assert read_image(png).std() > 20  # tools/predict.py's reader (and the app's)
    report = check_root(root, decode_images=True)
    assert not [d for d in report.defects if "ir" in d and str(png) in d]


def test_an_exif_rotated_photo_is_read_as_displayed_with_its_mask(root):
    frame = frames(root, modality="visible")[0]
    with Image.open(frame) as im:
        shown = np.array(im.convert("RGB"))
    # Store it as a phone does: pixels turned 90 degrees, EXIF orientation 6 to turn them back.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(shown, 1).copy()).save(frame, quality=98, exif=exif)
    image = read_image(frame)
    assert image.shape == shown.shape
    assert np.abs(image.astype(int) - shown.astype(int)).mean() < 4  # JPEG re-encoding only
    read, mask = read_pair(str(frame), str(mask_of(frame)), None)
    assert read.shape[1:] == mask.shape == shown.shape[:2]
    sized, _ = read_pair(str(frame), str(mask_of(frame)), (64, 96))
    assert sized.shape == (3, 64, 96)
    assert not [d for d in check_root(root).defects if str(frame) in d]


def test_a_mask_of_the_wrong_orientation_names_exif_as_a_possible_cause(root):
    frame = frames(root, modality="visible")[0]
    with Image.open(frame) as im:
        shown = np.array(im.convert("RGB"))[:, :-16]  # not square: a turn changes the size
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(shown).save(frame, exif=exif)
    with pytest.raises(data.decode.MaskSizeError, match="EXIF"):
        read_pair(str(frame), str(mask_of(frame)), None)


def test_a_mask_holding_jpeg_data_is_a_defect_and_warned_about(root, caplog, monkeypatch):
    frame = frames(root)[0]
    mask = mask_of(frame)
    with Image.open(mask) as im:
        im.convert("L").save(mask, format="JPEG", quality=75)  # keeps its _mask.png name
    report = check_root(root)
    assert any("JPEG" in d and str(mask) in d for d in report.defects)
    assert sum(row["jpeg_masks"] for row in report.rows.values()) == 1
    monkeypatch.setattr(data.decode, "_warned_jpeg_mask", False)
    with caplog.at_level(logging.WARNING, logger="data.decode"):
        read_pair(str(frame), str(mask), (128, 128))
    assert "JPEG" in caplog.text and str(mask) in caplog.text
