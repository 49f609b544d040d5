"""dlmi — the helper library of the course *Deep Learning for Medical Imaging*.

Chapters, labs and tests import from here so that no code is written twice.
"""
from .cells import SyntheticCells, collate_detection
from .datasets import (FLAGS_2D, CorruptDataError, DataUnavailableError, data_root, info,
                       load_medmnist, load_medmnist_tensors, resolve_mode)
from .runtime import device, seed_everything

__all__ = [
    "FLAGS_2D", "CorruptDataError", "DataUnavailableError", "SyntheticCells", "collate_detection",
    "data_root", "device", "info", "load_medmnist", "load_medmnist_tensors", "resolve_mode",
    "seed_everything",
]
