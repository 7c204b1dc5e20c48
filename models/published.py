"""Every number the DAS-Net authors published, in one place.

``python -m models``, report.py and plots.py read them from here; the tests keep their own copy
on purpose (an oracle, not a duplicate). Two versions of the paper exist: the first (one run on a
168,143-image test set) and the final one (eight models, means over three seeds on the full
174,008-image test set, latency on an NVIDIA A6000), whose table is in the authors' README.
"""

from __future__ import annotations

from typing import NamedTuple

COLUMNS = ("params", "precision", "recall", "dice", "miou", "ms", "fps")

# Trainable parameters of our builds (SPEC section 1); the first seven equal the paper's models
# to the last parameter. The authors' table says "6.0 M" for MobileUNet (README: why it differs).
PARAMS: dict[str, int] = {
    "dasnet": 1_657_672,
    "thindyunet": 1_341_385,
    "fulldyunet": 1_628_581,
    "deepsupdyunet": 1_341_580,
    "unet": 24_436_369,
    "pan": 21_475_816,
    "pspnet": 21_437_985,
    "mobileunet": 6_628_945,
}

LABELS: dict[str, str] = {
    "thindyunet": "ThinDyUNet",
    "pspnet": "PSPNet",
    "mobileunet": "MobileUNet",
    "pan": "PAN",
    "deepsupdyunet": "DeepSupDyUNet",
    "fulldyunet": "FullDyUNet",
    "unet": "UNet",
    "dasnet": "DAS-Net",
}


Row = dict[str, float]


def row(*values: float) -> Row:
    """One row of a published table: Params (M) as printed, the four scores, ms and FPS."""
    return dict(zip(COLUMNS, values, strict=True))


# The first version's table (SPEC section 7), in its row order.
FIRST_VERSION: dict[str, Row] = {
    "thindyunet": row(1.34, 0.9597, 0.5937, 0.6407, 0.5731, 8.72, 114.7),
    "pspnet": row(21.4, 0.8553, 0.6686, 0.6768, 0.6094, 13.80, 72.5),
    "pan": row(21.4, 0.9055, 0.7047, 0.7045, 0.6438, 14.77, 67.7),
    "deepsupdyunet": row(1.34, 0.9364, 0.6838, 0.7084, 0.6485, 8.67, 115.3),
    "fulldyunet": row(1.63, 0.8794, 0.7301, 0.7394, 0.6706, 9.49, 105.4),
    "unet": row(24.4, 0.9003, 0.7333, 0.7413, 0.6760, 14.16, 70.6),
    "dasnet": row(1.66, 0.8408, 0.7700, 0.7506, 0.6786, 9.41, 106.3),
}

# The final version's table (the authors' README): three-seed means, A6000 latency.
FINAL_VERSION: dict[str, Row] = {
    "thindyunet": row(1.34, 0.9308, 0.6449, 0.6766, 0.6115, 8.29, 120.6),
    "pspnet": row(21.4, 0.8554, 0.6685, 0.6768, 0.6094, 11.46, 87.3),
    "mobileunet": row(6.0, 0.9248, 0.6593, 0.6790, 0.6185, 10.23, 97.7),
    "pan": row(21.4, 0.9055, 0.7047, 0.7045, 0.6438, 11.16, 89.6),
    "fulldyunet": row(1.63, 0.8816, 0.6994, 0.7159, 0.6451, 9.04, 110.7),
    "deepsupdyunet": row(1.34, 0.9268, 0.7063, 0.7222, 0.6627, 8.26, 121.0),
    "unet": row(24.4, 0.9004, 0.7333, 0.7413, 0.6760, 9.93, 100.7),
    "dasnet": row(1.66, 0.8422, 0.7643, 0.7509, 0.6780, 8.83, 113.2),
}


class PairedTest(NamedTuple):
    """A published paired comparison over seeds: model a against model b."""

    a: str
    b: str
    seeds: int
    p: float
    cohens_d: float


# The final version's statistics: DAS-Net against UNet over three seeds (issue 16; SPEC section 7
# names ThinDyUNet as the other model, the issue, quoting the authors' README, names UNet).
FINAL_STATS: tuple[PairedTest, ...] = (PairedTest("dasnet", "unet", 3, 0.045, 1.74),)

REFERENCES: dict[str, dict[str, Row]] = {"first": FIRST_VERSION, "final": FINAL_VERSION}
REFERENCE_NOTES: dict[str, str] = {
    "first": "the paper's first version: one run, 168,143 test images, NVIDIA A6000",
    "final": "the authors' final version: means over three seeds, 174,008 test images, "
    "NVIDIA A6000",
}
