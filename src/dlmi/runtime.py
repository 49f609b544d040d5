"""Where code runs and how it is made repeatable."""
from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

_VALID_DEVICES = ("cuda", "mps", "cpu")


def device() -> torch.device:
    """Pick the compute device: ``$DLMI_DEVICE`` if set, else cuda → mps → cpu."""
    wanted = os.environ.get("DLMI_DEVICE", "").strip()
    if wanted:
        kind = wanted.split(":")[0]
        if kind not in _VALID_DEVICES:
            raise ValueError(
                f"DLMI_DEVICE={wanted!r} is not a device; use one of {', '.join(_VALID_DEVICES)} "
                "(optionally with an index, e.g. cuda:1) or unset it."
            )
        if kind == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"DLMI_DEVICE={wanted!r} but torch sees no CUDA GPU; unset DLMI_DEVICE or use cpu.")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"DLMI_DEVICE={wanted!r} but MPS is not available; unset DLMI_DEVICE or use cpu.")
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a torch generator with that seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def socket_timeout(seconds: float | None) -> Iterator[None]:
    """Set the process-wide default socket timeout for the block, then restore the previous one
    (for libraries that open URLs without a timeout argument)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)
