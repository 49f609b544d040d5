"""Data the judge uses for a lab's ``metadata.dlmi.data`` (flag, size): never sent to a kernel
before a hidden test asks for it, and its labels never leave the judge.

* :func:`heldout` — the grader's held-out split: MedMNIST's official ``test`` split when the
  real data is used (the labs never load it), else a fresh sample of the synthetic stand-in
  drawn with a seed of the grader (``$DLMI_HELDOUT_SEED``; set a private one per course).
* :func:`split` — the same ``train``/``val`` data the student's notebook sees.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import torch

DEFAULT_HELDOUT_SEED = 8_461_937


def _tensors(images: Any, labels: Any, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MedMNIST arrays (uint8, channels-last) → ``(x, y)`` as :func:`dlmi.load_medmnist_tensors` gives."""
    x = torch.from_numpy(images).float().div_(255)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    labels = torch.from_numpy(labels)
    y = labels.float() if task.startswith("multi-label") else labels.view(-1).long()
    return x.contiguous(), y


@functools.lru_cache(maxsize=4)
def heldout(flag: str, size: int = 28, mode: str = "synthetic", n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``n`` held-out images and labels (a fixed subset, the same on every run)."""
    import dlmi
    from dlmi.standin import make_standin
    from medmnist.info import INFO

    if mode == "real":
        x, y = dlmi.load_medmnist_tensors(flag, "test", size, mode="real")
    else:
        seed = int(os.environ.get("DLMI_HELDOUT_SEED", DEFAULT_HELDOUT_SEED))
        arrays = make_standin(INFO[flag], size, 1e-9, seed)  # the smallest stand-in: 800 per split
        x, y = _tensors(arrays["test_images"], arrays["test_labels"], INFO[flag]["task"])
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return x[keep], y[keep]


@functools.lru_cache(maxsize=4)
def split(flag: str, name: str, size: int = 28, mode: str = "synthetic",
          n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples of the split ``name`` the notebook itself loads."""
    import dlmi

    if name == "test":
        raise ValueError("the test split is the grader's held-out data: use heldout()")
    x, y = dlmi.load_medmnist_tensors(flag, name, size, mode=mode)
    return x[:n], y[:n]


def providers(settings: dict[str, Any]) -> dict[str, Any]:
    """The ``grader.<name>`` helpers hidden tests of a lab with a data set may use."""
    data = settings.get("data")
    if not data:
        return {}
    flag, size, mode = data["flag"], data.get("size", 28), settings["_env"]["DLMI_DATA"]
    return {"heldout": functools.partial(heldout, flag, size, mode),
            "dataset": functools.partial(split, flag, size=size, mode=mode), "data_mode": mode, "flag": flag}
