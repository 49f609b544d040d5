"""MedMNIST through the real ``medmnist`` classes, with an honest offline stand-in.

Modes (argument ``mode`` or env ``DLMI_DATA``, default ``auto``):

* ``real``: the cached npz under the data root, else a download by medmnist (short timeout);
  failure is an error, never a silent stand-in.
* ``synthetic``: the learnable stand-in of :mod:`dlmi.standin`, registered with medmnist under
  the flag ``<flag>_synthetic`` and stored in ``<root>/synthetic/`` apart from real files.
* ``auto``: real if it can be had, else the stand-in with a loud one-line notice.

The data root is ``root`` or env ``DLMI_DATA_DIR`` (default ``~/.medmnist``).
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Literal

import medmnist
import numpy as np
import torch
from medmnist.dataset import MedMNIST2D
from medmnist.info import INFO
from torchvision.transforms import v2

from .standin import SPLITS, make_standin, split_sizes

Mode = Literal["real", "synthetic", "auto"]
MODES = ("real", "synthetic", "auto")
SIZES = (28, 64, 128, 224)
FLAGS_2D = tuple(sorted(k for k, v in INFO.items() if "3d" not in k and not k.endswith("_synthetic")))
STANDIN_SEED = 20231
_noticed: set[tuple[str, int]] = set()


class DataUnavailableError(RuntimeError):
    """Real MedMNIST data was asked for and could not be had."""


class CorruptDataError(RuntimeError):
    """An npz file on disk is unreadable or not in MedMNIST's format."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root``, else ``$DLMI_DATA_DIR``, else ``~/.medmnist``; created if missing."""
    path = Path(root or os.environ.get("DLMI_DATA_DIR") or Path.home() / ".medmnist").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _suffix(size: int) -> str:
    return "" if size == 28 else f"_{size}"


def _check_args(flag: str, size: int, mode: str, split: str | None = None) -> None:
    if flag not in FLAGS_2D:
        raise ValueError(f"Unknown MedMNIST flag {flag!r}; valid 2D flags: {', '.join(FLAGS_2D)}.")
    if size not in SIZES:
        raise ValueError(f"Unknown MedMNIST size {size!r}; valid sizes: {', '.join(map(str, SIZES))}.")
    if mode not in MODES:
        raise ValueError(f"Unknown data mode {mode!r}; valid modes: {', '.join(MODES)} (argument or $DLMI_DATA).")
    if split is not None and split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")


def _validate(path: Path, info: dict, expected: dict[str, int] | None = None) -> None:
    """Raise :class:`CorruptDataError` unless ``path`` is a readable MedMNIST npz."""
    hint = (f"Delete {path} and load again with mode='real' (online) to re-fetch it, "
            f"or download {info.get('url') or 'it'} by hand.")
    try:
        with np.load(path) as npz:
            for split in SPLITS:
                images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
                if images.dtype != np.uint8 or len(images) != len(labels):
                    raise ValueError(f"{split} arrays have dtype {images.dtype} / lengths "
                                     f"{len(images)} vs {len(labels)}")
                if expected and len(images) != expected[split]:
                    raise ValueError(f"{split} has {len(images)} samples, expected {expected[split]}")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise CorruptDataError(f"{path} is not a valid MedMNIST file ({err}). {hint}") from err


def _download(flag: str, size: int, root: Path) -> Path:
    """Fetch the real npz with medmnist's own code into a temp dir, validate, then move in place."""
    target = root / f"{flag}{_suffix(size)}.npz"
    timeout = float(os.environ.get("DLMI_DOWNLOAD_TIMEOUT", "20"))
    old_timeout = socket.getdefaulttimeout()
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        socket.setdefaulttimeout(timeout)
        try:
            getattr(medmnist, INFO[flag]["python_class"])(split="train", root=tmp, size=size, download=True)
        except Exception as err:  # medmnist wraps every network failure in a bare Exception
            reason = next((line.strip() for line in str(err).splitlines() if line.strip()), repr(err))
            raise DataUnavailableError(
                f"Could not download MedMNIST {flag!r} at size {size} ({reason}). Put {target.name} "
                f"into {root} by hand, or use mode='synthetic' (or DLMI_DATA=synthetic) for the stand-in."
            ) from err
        finally:
            socket.setdefaulttimeout(old_timeout)
        fetched = Path(tmp) / target.name
        _validate(fetched, INFO[flag], INFO[flag]["n_samples"])
        shutil.move(fetched, target)
    return target


def _register_standin(flag: str, fraction: float, size: int) -> str:
    """Register ``<flag>_synthetic`` with medmnist (INFO entry + MedMNIST2D subclass)."""
    name = f"{flag}_synthetic"
    info = dict(INFO[flag])
    info.update(
        python_class=f"{info['python_class']}Synthetic",
        description=f"SYNTHETIC stand-in for {flag} made by dlmi.standin (not real patient data).",
        n_samples=split_sizes(INFO[flag], fraction, size),
    )
    info.update({k: None for k in info if k.startswith(("url", "MD5"))})
    INFO[name] = info
    if not hasattr(medmnist, info["python_class"]):
        setattr(medmnist, info["python_class"], type(info["python_class"], (MedMNIST2D,), {"flag": name}))
    return name


def _standin(flag: str, size: int, root: Path, fraction: float | None) -> tuple[str, Path]:
    """Register the stand-in and make its npz if missing or made with another fraction."""
    fraction = float(os.environ.get("DLMI_STANDIN_FRACTION", "0.05")) if fraction is None else fraction
    if not 0 < fraction <= 1:
        raise ValueError(f"Stand-in fraction must be in (0, 1], got {fraction}.")
    name = _register_standin(flag, fraction, size)
    folder = root / "synthetic"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}{_suffix(size)}.npz"
    if path.exists():
        with np.load(path) as npz:
            fresh = all(len(npz[f"{s}_labels"]) == INFO[name]["n_samples"][s] for s in SPLITS)
        if fresh:
            return name, path
    arrays = make_standin(INFO[flag], size, fraction, STANDIN_SEED)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".npz", delete=False) as tmp:
        np.savez_compressed(tmp, **arrays)
    os.replace(tmp.name, path)
    return name, path


def resolve(flag: str, size: int = 28, root: str | os.PathLike | None = None,
            mode: Mode | None = None, fraction: float | None = None) -> tuple[str, str, Path]:
    """Decide where a data set comes from: ``(mode_used, medmnist_flag, npz_path)``."""
    mode = mode or os.environ.get("DLMI_DATA", "auto")
    _check_args(flag, size, mode)
    folder = data_root(root)
    if mode != "synthetic":
        real = folder / f"{flag}{_suffix(size)}.npz"
        try:
            if not real.exists() and mode == "auto" and (flag, size) in _noticed:
                raise DataUnavailableError("download already failed in this process")
            if not real.exists():
                real = _download(flag, size, folder)
            _validate(real, INFO[flag])
            return "real", flag, real
        except DataUnavailableError as err:
            if mode == "real":
                raise
            if (flag, size) not in _noticed:
                _noticed.add((flag, size))
                print(f"NOTICE: real MedMNIST {flag!r} (size {size}) could not be had; results below "
                      f"come from a SYNTHETIC stand-in, not patient data. ({err})", file=sys.stderr)
    name, path = _standin(flag, size, folder, fraction)
    return "synthetic", name, path


def resolve_mode(flag: str, size: int = 28, root: str | os.PathLike | None = None,
                 mode: Mode | None = None) -> Literal["real", "synthetic"]:
    """``"real"`` or ``"synthetic"``: which data :func:`load_medmnist` would use."""
    return resolve(flag, size, root, mode)[0]  # type: ignore[return-value]


def to_tensor() -> v2.Compose:
    """The default image transform: PIL → float32 tensor (C, H, W) in [0, 1]."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def load_medmnist(flag: str, split: str, size: int = 28, root: str | os.PathLike | None = None,
                  mode: Mode | None = None, transform: Callable | None = None,
                  target_transform: Callable | None = None, as_rgb: bool = False,
                  fraction: float | None = None) -> MedMNIST2D:
    """A MedMNIST split as the real medmnist Dataset class; ``.data_mode`` says real or synthetic."""
    mode = mode or os.environ.get("DLMI_DATA", "auto")
    _check_args(flag, size, mode, split)
    used, name, path = resolve(flag, size, root, mode, fraction)
    cls = getattr(medmnist, INFO[name]["python_class"])
    ds = cls(split=split, transform=transform or to_tensor(), target_transform=target_transform,
             download=False, as_rgb=as_rgb, root=str(path.parent), size=size)
    ds.data_mode = used
    return ds


def load_medmnist_tensors(flag: str, split: str, size: int = 28, root: str | os.PathLike | None = None,
                          mode: Mode | None = None, device: torch.device | str | None = None,
                          fraction: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as tensors ``(x, y)`` for GPU-resident training.

    ``x`` is float32 (N, C, H, W) in [0, 1]; ``y`` is int64 (N,) for single-label tasks and
    float32 (N, L) for multi-label ones.
    """
    ds = load_medmnist(flag, split, size, root, mode, fraction=fraction)
    x = torch.from_numpy(ds.imgs).float().div_(255)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    labels = torch.from_numpy(ds.labels)
    y = labels.float() if ds.info["task"].startswith("multi-label") else labels.view(-1).long()
    return x.contiguous().to(device or "cpu"), y.to(device or "cpu")


def info(flag: str) -> dict[str, Any]:
    """medmnist's INFO entry for a 2D flag (task, labels, channels, sizes, licence)."""
    _check_args(flag, 28, "auto")
    return INFO[flag]
