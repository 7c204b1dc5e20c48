"""The UAV segmentation dataset: loading it as published, checking it, and a demo stand-in."""

from .dataset import Sample, SplitStats, UAVSegDataset
from .index import load_index
from .layout import MODALITIES, SPLITS, DatasetError


def __getattr__(name: str):
    # Imported on first use so that `python -m data.synthetic` does not import itself twice.
    if name == "generate_demo_dataset":
        from .synthetic import generate_demo_dataset

        return generate_demo_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MODALITIES",
    "SPLITS",
    "DatasetError",
    "Sample",
    "SplitStats",
    "UAVSegDataset",
    "generate_demo_dataset",
    "load_index",
]
