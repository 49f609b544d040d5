"""Showing medical images: CT windowing and small plotting helpers."""
from __future__ import annotations

import numpy as np

# Standard CT display windows: name -> (level, width) in Hounsfield units.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "soft tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}


def window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map HU to display grey levels in [0, 1]: ``level ± width/2`` spans black to white."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return np.clip((np.asarray(hu, dtype=np.float32) - (level - width / 2)) / width, 0.0, 1.0)
