"""The dataset loads the published layout with the right counts, shapes and values, names every
defect's file, and caches its index (issue 3)."""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import data.index
from data import DatasetError, UAVSegDataset
from data.decode import decode_image, decode_mask, read_pair

PUBLISHED = ("UAVSemanticSegmentationInput", "UAVSemanticSegmentationLabels")
OLD = ("input", "labels")
VL_SIZE, IR_SIZE = (64, 36), (40, 32)  # (width, height): 16:9 and 5:4


def write_frame(path: Path, size: tuple[int, int], mode: str = "RGB", value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    pixels = np.clip(value + rng.integers(-20, 20, shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def write_mask(path: Path, size: tuple[int, int], box: tuple[int, int, int, int] | None) -> None:
    """A 0/255 mask with an optional UAV rectangle (x0, y0, x1, y1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), np.uint8)
    if box:
        mask[box[1] : box[3], box[0] : box[2]] = 255
    Image.fromarray(mask).save(path)


def make_tree(
    root: Path,
    names: tuple[str, str] = PUBLISHED,
    split: str = "train",
    sequences: dict[str, int] | None = None,
    ir_mode: str = "RGB",
) -> Path:
    """A small split: each sequence has n frames in both modalities, every other one with a UAV."""
    for seq, n in (sequences or {"seq001": 3, "seq002": 2}).items():
        for modality, size in (("visible", VL_SIZE), ("infrared", IR_SIZE)):
            for t in range(n):
                frame = f"{t:06d}"
                write_frame(
                    root / names[0] / split / seq / modality / f"{frame}.jpg",
                    size,
                    mode="RGB" if modality == "visible" else ir_mode,
                )
                box = (4, 4, 12, 10) if t % 2 == 0 else None
                write_mask(
                    root / names[1] / split / seq / modality / f"{frame}_mask.png", size, box
                )
    return root


def image_file(root: Path, seq: str, modality: str, frame: str, split: str = "train") -> Path:
    return root / PUBLISHED[0] / split / seq / modality / f"{frame}.jpg"


def mask_file(root: Path, seq: str, modality: str, frame: str, split: str = "train") -> Path:
    return root / PUBLISHED[1] / split / seq / modality / f"{frame}_mask.png"


# -- layout, items, counts ---------------------------------------------------------------------


@pytest.mark.parametrize("names", [PUBLISHED, OLD], ids=["published", "input-labels"])
def test_both_folder_namings_load_every_vl_and_ir_image_as_a_sample(tmp_path, names):
    ds = UAVSegDataset(make_tree(tmp_path, names), "train", image_size=(32, 48))
    assert len(ds) == 10  # (3 + 2 frames) x 2 modalities
    item = ds[0]
    assert item["image"].shape == (3, 32, 48) and item["image"].dtype == torch.float32
    assert item["image"].min() >= 0 and item["image"].max() <= 1
    assert item["mask"].shape == (1, 32, 48) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["modality"] == "visible" and item["name"] == "seq001/visible/000000"
    names_seen = [ds.samples[i].name for i in range(len(ds))]
    assert len(set(names_seen)) == len(ds)
    assert ds.stats["frames"] == 10 and ds.stats.pairs == 5


def test_items_collate_with_the_default_dataloader(tmp_path):
    ds = UAVSegDataset(make_tree(tmp_path), "train", image_size=32)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 1, 32, 32)
    assert batch["name"][:2] == ["seq001/visible/000000", "seq001/visible/000001"]
    assert batch["modality"] == ["visible"] * 3 + ["infrared"]


def test_a_frame_without_a_mask_is_skipped_and_counted_in_one_log_line(tmp_path, caplog):
    root = make_tree(tmp_path)
    mask_file(root, "seq001", "visible", "000001").unlink()
    mask_file(root, "seq002", "infrared", "000000").unlink()
    with caplog.at_level(logging.WARNING, logger="data"):
        ds = UAVSegDataset(root, "train", image_size=32)
    assert len(ds) == 8
    assert ds.stats.frames == 10 and ds.stats.frames_without_mask == 2 and ds.stats.masks == 8
    assert "seq001/visible/000001" not in [s.name for s in ds.samples]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2 frames without a mask" in warnings[0].getMessage()


def test_a_mask_without_a_frame_is_counted(tmp_path):
    root = make_tree(tmp_path)
    image_file(root, "seq002", "visible", "000001").unlink()
    write_mask(mask_file(root, "seq003", "infrared", "000000"), IR_SIZE, None)  # no seq003 images
    ds = UAVSegDataset(root, "train", image_size=32)
    assert len(ds) == 9
    assert ds.stats.masks_without_frame == 2 and ds.stats.frames_without_mask == 0


def test_hidden_and_foreign_files_are_ignored(tmp_path):
    root = make_tree(tmp_path)
    (image_file(root, "seq001", "visible", "000000").parent / "Thumbs.db").write_bytes(b"x")
    (image_file(root, "seq001", "visible", "000000").parent / "._000000.jpg").write_bytes(b"x")
    assert len(UAVSegDataset(root, "train", image_size=32)) == 10


# -- modalities and pairing --------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_modality_filter_keeps_only_that_modality(tmp_path, modality):
    ds = UAVSegDataset(make_tree(tmp_path), "train", image_size=32, modality=modality)
    assert len(ds) == 5
    assert {s.modality for s in ds.samples} == {modality}
    assert {ds[i]["modality"] for i in range(len(ds))} == {modality}
    assert ds.stats.frames == 5


def test_pairs_link_the_visible_and_infrared_image_of_each_frame(tmp_path):
    root = make_tree(tmp_path)
    image_file(root, "seq001", "infrared", "000002").unlink()  # this frame has VL only
    ds = UAVSegDataset(root, "train", image_size=32)
    assert len(ds.pairs) == 4 == ds.stats.pairs
    for vis, ir in ds.pairs:
        v, i = ds.samples[vis], ds.samples[ir]
        assert (v.modality, i.modality) == ("visible", "infrared")
        assert (v.sequence, v.frame) == (i.sequence, i.frame)
        assert ds.partner(vis) == ir and ds.partner(ir) == vis
    lone = [s.name for s in ds.samples].index("seq001/visible/000002")
    assert ds.partner(lone) is None


# -- subsets -----------------------------------------------------------------------------------


def test_max_samples_draws_the_same_subset_for_a_seed_and_another_for_another(tmp_path):
    root = make_tree(tmp_path, sequences={"seq001": 10, "seq002": 10})

    def subset(seed: int) -> list[str]:
        return [s.name for s in UAVSegDataset(root, "train", max_samples=8, seed=seed).samples]

    assert len(subset(1)) == 8 and subset(1) == subset(1)
    assert subset(2) != subset(1)
    assert UAVSegDataset(root, "train", max_samples=8, seed=1).stats.selected == 8
    assert len(UAVSegDataset(root, "train", max_samples=1000)) == 40


# -- pixels ------------------------------------------------------------------------------------


def test_single_channel_infrared_gives_three_identical_channels(tmp_path):
    root = make_tree(tmp_path, ir_mode="L")
    assert Image.open(image_file(root, "seq001", "infrared", "000000")).mode == "L"
    ds = UAVSegDataset(root, "train", image_size=32, modality="infrared")
    image = ds[0]["image"]
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_a_0_255_mask_becomes_exactly_0_and_1(tmp_path):
    root = make_tree(tmp_path)
    ds = UAVSegDataset(root, "train", image_size=(VL_SIZE[1], VL_SIZE[0]), modality="visible")
    mask = ds[0]["mask"][0]
    expected = torch.zeros(VL_SIZE[1], VL_SIZE[0])
    expected[4:10, 4:12] = 1
    assert torch.equal(mask, expected)


def test_any_non_zero_pixel_of_an_anti_aliased_mask_is_uav(tmp_path):
    image, mask = tmp_path / "f.jpg", tmp_path / "f_mask.png"
    write_frame(image, (16, 16))
    soft = np.zeros((16, 16), np.uint8)
    soft[4, 4:8] = [1, 64, 128, 255]
    Image.fromarray(soft).save(mask)
    _, bits = read_pair(str(image), str(mask))
    assert bits[4, 4:8].all() and bits.sum() == 4


def test_bilinear_mask_resize_keeps_a_small_target_that_nearest_drops(tmp_path):
    image, mask = tmp_path / "f.jpg", tmp_path / "f_mask.png"
    write_frame(image, (64, 64))
    write_mask(mask, (64, 64), (9, 9, 10, 10))  # one pixel, between nearest's sample points
    _, bilinear = read_pair(str(image), str(mask), (16, 16), "bilinear")
    _, nearest = read_pair(str(image), str(mask), (16, 16), "nearest")
    assert bilinear.sum() >= 1 and nearest.sum() == 0
    # A large target: bilinear (then > 0) covers nearest's result and grows it slightly.
    write_mask(mask, (64, 64), (8, 8, 40, 40))
    _, bilinear = read_pair(str(image), str(mask), (16, 16), "bilinear")
    _, nearest = read_pair(str(image), str(mask), (16, 16), "nearest")
    assert not (nearest & ~bilinear).any() and nearest.sum() == 64 < bilinear.sum() <= 100


def test_a_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    write_frame(path, (640, 360))
    with Image.open(path) as im:
        out = decode_image(im, str(path), (128, 128))
        assert im.size == (320, 180)  # DCT scaling 1/2: the largest scale still >= 128x128
    assert out.shape == (3, 128, 128) and out.dtype == torch.uint8


def test_augmentation_applies_the_same_geometry_to_image_and_mask(tmp_path):
    from torchvision.transforms import v2

    root = make_tree(tmp_path)
    plain = UAVSegDataset(root, "train", image_size=32)[0]
    flipped = UAVSegDataset(root, "train", image_size=32, augment=v2.RandomHorizontalFlip(p=1))[0]
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    assert torch.equal(flipped["mask"], plain["mask"].flip(-1))
    default = UAVSegDataset(root, "train", image_size=32, augment=True)
    assert default[0]["image"].shape == (3, 32, 32)
    assert UAVSegDataset(root, "train", image_size=32).transform is None  # off by default


# -- defects name their files ------------------------------------------------------------------


def test_a_missing_root_is_named_with_how_to_make_demo_data(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as err:
        UAVSegDataset(missing, "train")
    assert str(missing) in str(err.value) and "python -m data.synthetic --out" in str(err.value)


def test_a_root_without_the_dataset_folders_is_named(tmp_path):
    with pytest.raises(DatasetError, match="UAVSemanticSegmentationInput"):
        UAVSegDataset(tmp_path, "train")


def test_a_missing_split_folder_is_named(tmp_path):
    root = make_tree(tmp_path)
    with pytest.raises(DatasetError) as err:
        UAVSegDataset(root, "val")
    assert str(root / PUBLISHED[0] / "val") in str(err.value) and "train" in str(err.value)


def test_an_empty_split_is_named(tmp_path):
    root = make_tree(tmp_path)
    for top in PUBLISHED:
        (root / top / "test").mkdir()
    with pytest.raises(DatasetError) as err:
        UAVSegDataset(root, "test")
    assert str(root / PUBLISHED[0] / "test") in str(err.value)


@pytest.mark.parametrize(
    ("argument", "value"), [("split", "training"), ("modality", "rgb"), ("mask_resize", "cubic")]
)
def test_a_bad_argument_names_itself_and_the_choices(tmp_path, argument, value):
    with pytest.raises(ValueError, match=rf"{argument}='{value}'.*choose one of"):
        UAVSegDataset(make_tree(tmp_path), **{"split": "train", argument: value})


def _index_of(ds: UAVSegDataset, name: str) -> int:
    return [s.name for s in ds.samples].index(name)


def test_an_unreadable_image_is_named(tmp_path):
    root = make_tree(tmp_path)
    bad = image_file(root, "seq001", "visible", "000001")
    bad.write_bytes(b"not a jpeg at all")
    ds = UAVSegDataset(root, "train", image_size=32)
    with pytest.raises(DatasetError, match=str(bad)):
        ds[_index_of(ds, "seq001/visible/000001")]


def test_a_truncated_image_is_named(tmp_path):
    root = make_tree(tmp_path)
    bad = image_file(root, "seq002", "visible", "000000")
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    ds = UAVSegDataset(root, "train", image_size=32)
    with pytest.raises(DatasetError, match=str(bad)):
        ds[_index_of(ds, "seq002/visible/000000")]


def test_a_truncated_mask_is_named(tmp_path):
    root = make_tree(tmp_path)
    bad = mask_file(root, "seq001", "infrared", "000000")
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    ds = UAVSegDataset(root, "train", image_size=32)
    with pytest.raises(DatasetError, match=str(bad)):
        ds[_index_of(ds, "seq001/infrared/000000")]


def test_a_mask_of_another_size_names_both_files(tmp_path):
    root = make_tree(tmp_path)
    bad = mask_file(root, "seq001", "visible", "000002")
    write_mask(bad, IR_SIZE, None)
    ds = UAVSegDataset(root, "train", image_size=32)
    with pytest.raises(DatasetError) as err:
        ds[_index_of(ds, "seq001/visible/000002")]
    assert str(bad) in str(err.value)
    assert str(image_file(root, "seq001", "visible", "000002")) in str(err.value)


def test_skip_unreadable_drops_and_counts_bad_pairs(tmp_path):
    root = make_tree(tmp_path)
    image_file(root, "seq001", "visible", "000001").write_bytes(b"garbage")
    truncated = image_file(root, "seq002", "infrared", "000001")
    truncated.write_bytes(truncated.read_bytes()[:-100])
    write_mask(mask_file(root, "seq001", "visible", "000002"), IR_SIZE, None)
    ds = UAVSegDataset(root, "train", image_size=32, skip_unreadable=True)
    assert len(ds) == 7
    assert ds.stats.skipped_unreadable == 2 and ds.stats.skipped_size_mismatch == 1
    assert all(ds[i]["image"].shape == (3, 32, 32) for i in range(len(ds)))


# -- index cache -------------------------------------------------------------------------------


def test_reopening_uses_the_cached_index_without_scanning(tmp_path, monkeypatch):
    root = make_tree(tmp_path)
    first = UAVSegDataset(root, "train", image_size=32)
    assert (root / ".uavseg_index_train.json").is_file()

    def no_scan(*args, **kwargs):
        raise AssertionError("the tree was scanned again")

    monkeypatch.setattr(data.index, "scan_split", no_scan)
    again = UAVSegDataset(root, "train", image_size=32)
    assert [s.name for s in again.samples] == [s.name for s in first.samples]
    assert again.stats == first.stats


def test_the_cached_index_is_invalidated_when_a_file_is_added_or_removed(tmp_path):
    root = make_tree(tmp_path)
    assert len(UAVSegDataset(root, "train", image_size=32)) == 10
    write_frame(image_file(root, "seq002", "infrared", "000009"), IR_SIZE)
    write_mask(mask_file(root, "seq002", "infrared", "000009"), IR_SIZE, None)
    ds = UAVSegDataset(root, "train", image_size=32)
    assert len(ds) == 11 and "seq002/infrared/000009" in [s.name for s in ds.samples]
    mask_file(root, "seq001", "visible", "000000").unlink()
    assert UAVSegDataset(root, "train", image_size=32).stats.frames_without_mask == 1


def test_a_new_sequence_invalidates_the_cached_index(tmp_path):
    root = make_tree(tmp_path)
    UAVSegDataset(root, "train", image_size=32)
    make_tree(root, sequences={"seq009": 1})
    assert len(UAVSegDataset(root, "train", image_size=32)) == 12


def test_the_index_cache_can_live_elsewhere_and_be_turned_off(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "root")
    cache_dir = tmp_path / "cache"
    UAVSegDataset(root, "train", cache=cache_dir)
    files = list(cache_dir.iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"  # written atomically: no temp left
    assert not (root / ".uavseg_index_train.json").exists()
    calls = []
    real_scan = data.index.scan_split

    def counting_scan(*args):
        calls.append(args)
        return real_scan(*args)

    monkeypatch.setattr(data.index, "scan_split", counting_scan)
    UAVSegDataset(root, "train", cache=False)
    UAVSegDataset(root, "train", cache=False)
    assert len(calls) == 2


def test_a_corrupt_cache_file_is_ignored(tmp_path):
    root = make_tree(tmp_path)
    UAVSegDataset(root, "train")
    (root / ".uavseg_index_train.json").write_text("{not json")
    assert len(UAVSegDataset(root, "train")) == 10


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((1920, 1080), (512, 512)),
        ((320, 180), (128, 128)),
        ((160, 128), (512, 512)),
        ((64, 64), (16, 16)),
        ((101, 67), (33, 47)),
    ],
)
def test_the_exact_mask_resize_matches_pillow_on_the_whole_mask(source, target):
    rng = np.random.default_rng(source[0])
    for _ in range(6):
        bits = np.zeros((source[1], source[0]), bool)
        for _ in range(rng.integers(1, 4)):
            x, y = rng.integers(0, source[0]), rng.integers(0, source[1])
            bits[y : y + rng.integers(1, 12), x : x + rng.integers(1, 12)] = True
        mask = Image.fromarray(bits.astype(np.uint8) * 255)
        floats = Image.fromarray(bits.astype(np.float32))
        # Pillow's float resize, with a margin for its rounding where a weight is exactly 0.
        bilinear = np.asarray(floats.resize(target, Image.Resampling.BILINEAR)) > 1e-6
        nearest = np.asarray(mask.resize(target, Image.Resampling.NEAREST)) > 0
        size = (target[1], target[0])
        assert np.array_equal(decode_mask(mask, "m.png", size, "bilinear").numpy(), bilinear)
        assert np.array_equal(decode_mask(mask, "m.png", size, "nearest").numpy(), nearest)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "LA", "RGBA", "I;16"])
def test_masks_in_any_mode_read_non_zero_as_uav(mode):
    bits = np.zeros((12, 16), bool)
    bits[3:6, 4:9] = True
    mask = Image.fromarray(bits.astype(np.uint8) * 255).convert(mode)
    if mode in ("LA", "RGBA"):
        mask.putalpha(255)  # opaque everywhere: alpha must not count as UAV
    assert np.array_equal(decode_mask(mask, "m.png").numpy(), bits)
    assert decode_mask(mask, "m.png", (6, 8)).sum() >= 1
