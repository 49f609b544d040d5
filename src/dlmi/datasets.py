"""MedMNIST through the real ``medmnist`` classes, with an honest offline stand-in.

Modes (argument ``mode`` or env ``DLMI_DATA``, default ``auto``):

* ``real``: the npz under the data root, else a download through :func:`dlmi.fetch.fetch`
  (medmnist's own download, MD5 checked, three attempts); failure is an error, never a silent
  stand-in. Fetch files ahead with ``dlmi-data fetch`` (``make data``).
* ``synthetic``: the learnable stand-in of :mod:`dlmi.standin` (real split sizes and class
  priors, a look made from real images of the flag's modality), registered with medmnist under
  the flag ``<flag>_synthetic`` and stored in ``<root>/synthetic/`` apart from real files,
  with the generator's version: a file made by an older generator is made again.
* ``auto``: real if it can be had, else the stand-in with a loud one-line notice.

The data root is ``root`` or env ``DLMI_DATA_DIR`` (default ``~/.medmnist``). A real file is
validated once (every array decompressed and checked against ``medmnist.INFO``); a stamp in
``<root>/.verified/`` keyed by the file's size and mtime lets later loads skip that.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Literal, cast
from collections.abc import Callable

import medmnist
import numpy as np
import torch
from medmnist.dataset import MedMNIST2D
from medmnist.info import INFO
from torchvision.transforms import v2

from .standin import SPLITS, STANDIN_VERSION, make_standin, split_sizes

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


def _refetch_hint(path: Path, flag: str, size: int) -> str:
    suffix = _suffix(size)
    sized = "" if size == 28 else f" --size {size}"
    return (f"Delete {path} and re-fetch it with `dlmi-data fetch {flag}{sized}` (it checks the "
            f"MD5), or download {INFO[flag].get(f'url{suffix}') or 'it'} by hand "
            f"(MD5 {INFO[flag].get(f'MD5{suffix}')}). A subset of your own (other split sizes) "
            "loads with allow_nonstandard=True, under a flag of its own: medmnist checks every "
            "split's length against medmnist.INFO.")


def _validate(path: Path, flag: str, size: int = 28, *, standard: bool = True) -> None:
    """Raise :class:`CorruptDataError` unless ``path`` is a readable MedMNIST npz for ``flag``
    at ``size``: all six arrays, as many labels as images, uint8 images (N, size, size[, 3]),
    integer labels of the task's shape and range, and (if ``standard``) the split sizes of
    ``medmnist.INFO`` (decompresses every array)."""
    meta = INFO[flag]
    channels, n_labels = meta["n_channels"], len(meta["label"])
    multi = meta["task"].startswith("multi-label")
    image_shape = (size, size) if channels == 1 else (size, size, 3)
    try:
        with np.load(path) as npz:
            for split in SPLITS:
                missing = [k for k in (f"{split}_images", f"{split}_labels") if k not in npz.files]
                if missing:
                    raise ValueError(f"it has no array {missing[0]!r} "
                                     f"(arrays: {', '.join(npz.files) or 'none'})")
                images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
                want = meta["n_samples"][split] if standard else len(images)
                if len(images) != want or len(labels) != want:
                    expects = (f"medmnist.INFO[{flag!r}] expects {want}" if standard
                               else "every image needs one label")
                    raise ValueError(f"its {split} split has {len(images)} images and {len(labels)} "
                                     f"labels, but {expects}")
                if images.dtype != np.uint8 or images.shape[1:] != image_shape:
                    raise ValueError(f"its {split} images are {images.dtype} {images.shape[1:]}, "
                                     f"expected uint8 {image_shape} for {flag} at size {size} "
                                     f"(a file of another size is named {flag}_<size>.npz)")
                label_shape = (n_labels,) if multi else (1,)
                if labels.dtype.kind not in "ui" or labels.shape[1:] != label_shape:
                    raise ValueError(f"its {split} labels are {labels.dtype} {labels.shape[1:]}, "
                                     f"expected integer class labels of shape {label_shape}")
                top = 1 if multi else n_labels - 1
                if len(labels) and (labels.min() < 0 or labels.max() > top):
                    raise ValueError(f"its {split} labels run from {labels.min()} to "
                                     f"{labels.max()}, expected 0 to {top}")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise CorruptDataError(f"{path} is not a valid MedMNIST file for {flag!r} at size "
                               f"{size}: {err}. {_refetch_hint(path, flag, size)}") from err


# A file is validated once: its (size, mtime) is remembered in this process and in a stamp
# beside the data (``<root>/.verified/<name>.json``), so later loads, and other kernels, skip
# the decompression. A file that changes on disk (new size or mtime) is validated again.
# A stamp also says whether the split sizes were checked (``standard``): a file accepted with
# ``allow_nonstandard=True`` is not thereby accepted as the real data set.
CHECKS_VERSION = 3  # bump when _validate checks more: older stamps are then ignored
_verified: dict[str, tuple[int, int, int, bool]] = {}
validations = 0  # full validations done in this process (for tests and measurements)


def _stamp_path(path: Path) -> Path:
    return path.parent / ".verified" / f"{path.name}.json"


def _stamp_matches(path: Path, standard: bool = True) -> dict[str, Any] | None:
    """The stamp of ``path`` if it was written for this very file (size, mtime, checks) with
    the split sizes checked, or (``standard=False``) with or without."""
    try:
        stamp = json.loads(_stamp_path(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return None
    same = (stamp.get("checks") == CHECKS_VERSION and stamp.get("size") == st.st_size
            and stamp.get("mtime_ns") == st.st_mtime_ns and (stamp.get("standard") or not standard))
    return stamp if same else None


def mark_verified(path: Path, md5: str | None = None, *, standard: bool = True) -> None:
    """Remember that ``path`` passed :func:`_validate` (and, with ``md5``, its checksum);
    ``standard=False``: passed without the split-size check."""
    st = path.stat()
    _verified[str(path)] = (st.st_size, st.st_mtime_ns, st.st_ino, standard)
    stamp = {"checks": CHECKS_VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": md5,
             "standard": standard}
    try:  # best effort: a read-only data root only loses the memory across processes
        folder = _stamp_path(path).parent
        folder.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as tmp:
            json.dump(stamp, tmp)
        os.replace(tmp.name, _stamp_path(path))
    except OSError:
        pass


def ensure_valid(path: Path, flag: str, size: int = 28, *, standard: bool = True) -> None:
    """:func:`_validate` ``path`` unless this very file (size, mtime) was validated before
    (with the split-size check, unless ``standard=False``)."""
    global validations
    st = path.stat()
    known = _verified.get(str(path))
    if known and known[:3] == (st.st_size, st.st_mtime_ns, st.st_ino) and (known[3] or not standard):
        return
    if stamp := _stamp_matches(path, standard):
        _verified[str(path)] = (st.st_size, st.st_mtime_ns, st.st_ino, bool(stamp["standard"]))
        return
    validations += 1
    _validate(path, flag, size, standard=standard)
    mark_verified(path, standard=standard)


def _file_split_sizes(path: Path) -> dict[str, int] | None:
    """Number of labels per split in an npz (labels are small); None if it cannot be read."""
    try:
        with np.load(path) as npz:
            return {s: len(npz[f"{s}_labels"]) for s in SPLITS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def register_flag(flag: str, kind: Literal["synthetic", "nonstandard"], sizes: dict[str, int],
                  description: str) -> str:
    """Register ``<flag>_<kind>`` with medmnist and return that name: an entry in ``medmnist.INFO``
    (``flag``'s, with these split sizes, this description and no URL or MD5) and a ``MedMNIST2D``
    subclass ``<Class><Kind>`` in the ``medmnist`` namespace.

    This changes medmnist's registry on purpose and for the life of the process: medmnist's
    Dataset objects read ``INFO[name]`` whenever they are measured (``len``, ``repr``, a
    DataLoader), and ``Evaluator`` and ``montage`` look the flag up there, so the entry must
    outlive the call that made it. Real flags are never changed. Registering the same name again
    with the same sizes changes nothing; other sizes (another stand-in fraction, another subset
    file) replace the entry's sizes, and the class is made once.
    """
    name = f"{flag}_{kind}"
    meta = dict(INFO[flag])
    meta.update(python_class=f"{meta['python_class']}{kind.capitalize()}", n_samples=dict(sizes),
                description=description)
    meta.update({k: None for k in meta if k.startswith(("url", "MD5"))})
    if INFO.get(name) != meta:
        INFO[name] = meta
    if not hasattr(medmnist, meta["python_class"]):
        setattr(medmnist, meta["python_class"], type(meta["python_class"], (MedMNIST2D,), {"flag": name}))
    return name


def _register_nonstandard(flag: str, size: int, path: Path, sizes: dict[str, int]) -> tuple[str, Path]:
    """Register a subset file of ``flag`` with other split sizes as ``<flag>_nonstandard``
    (INFO entry with its sizes + MedMNIST2D subclass), linked as
    ``<root>/nonstandard/<flag>_nonstandard[_size].npz``, where medmnist looks for it."""
    name = register_flag(flag, "nonstandard", sizes,
                         f"NONSTANDARD subset of {flag} from {path} (split sizes {sizes}).")
    folder = path.parent / "nonstandard"
    folder.mkdir(exist_ok=True)
    link = folder / f"{name}{_suffix(size)}.npz"
    if not (link.is_symlink() and link.resolve() == path.resolve()):
        link.unlink(missing_ok=True)
        link.symlink_to(path.resolve())
    return name, link


def _register_standin(flag: str, fraction: float, size: int) -> str:
    """Register ``<flag>_synthetic`` with medmnist (INFO entry + MedMNIST2D subclass)."""
    return register_flag(flag, "synthetic", split_sizes(INFO[flag], fraction, size),
                         f"SYNTHETIC stand-in for {flag} made by dlmi.standin (not real patient data).")


def _standin_is_fresh(path: Path, name: str) -> bool:
    """Whether the stand-in file at ``path`` was made by this generator version with the
    split sizes registered for ``name`` (an unreadable file is stale too)."""
    try:
        with np.load(path) as npz:
            return ("standin_version" in npz.files
                    and int(npz["standin_version"]) == STANDIN_VERSION
                    and all(len(npz[f"{s}_labels"]) == INFO[name]["n_samples"][s] for s in SPLITS))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False


def _standin(flag: str, size: int, root: Path, fraction: float | None) -> tuple[str, Path]:
    """Register the stand-in and make its npz unless a fresh one exists: one made by another
    generator version (:data:`dlmi.standin.STANDIN_VERSION`, stored in the file as
    ``standin_version``) or with another fraction is made again."""
    fraction = float(os.environ.get("DLMI_STANDIN_FRACTION", "0.05")) if fraction is None else fraction
    if not 0 < fraction <= 1:
        raise ValueError(f"Stand-in fraction must be in (0, 1], got {fraction}.")
    name = _register_standin(flag, fraction, size)
    folder = root / "synthetic"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}{_suffix(size)}.npz"
    if path.exists() and _standin_is_fresh(path, name):
        return name, path
    arrays = make_standin(INFO[flag], size, fraction, STANDIN_SEED)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".npz", delete=False) as tmp:
        contents = {"standin_version": np.array(STANDIN_VERSION), **arrays}
        np.savez_compressed(tmp, **contents)  # type: ignore[arg-type]  # numpy's stub reads **contents as allow_pickle
    os.replace(tmp.name, path)
    return name, path


def resolve(flag: str, size: int = 28, root: str | os.PathLike | None = None,
            mode: Mode | None = None, fraction: float | None = None, *,
            allow_nonstandard: bool = False) -> tuple[str, str, Path]:
    """Decide where a data set comes from: ``(mode_used, medmnist_flag, npz_path)``.

    A real file whose split sizes differ from ``medmnist.INFO`` is an error, unless
    ``allow_nonstandard`` (an instructor's own subset): it is then checked in every other way
    and registered with medmnist as ``<flag>_nonstandard`` with its own sizes."""
    wanted = mode or os.environ.get("DLMI_DATA", "auto")
    _check_args(flag, size, wanted)
    mode = cast(Mode, wanted)
    folder = data_root(root)
    if mode != "synthetic":
        real = folder / f"{flag}{_suffix(size)}.npz"
        try:
            if not real.exists() and mode == "auto" and (flag, size) in _noticed:
                raise DataUnavailableError("download already failed in this process")
            if not real.exists():  # auto: one attempt (offline falls back fast); real: retries
                from .fetch import fetch
                tries = 1 if mode == "auto" else int(os.environ.get("DLMI_FETCH_RETRIES") or 3)
                real = fetch(flag, size, folder, retries=tries, quiet=True)
            sizes = _file_split_sizes(real) if allow_nonstandard else None
            if sizes and sizes != INFO[flag]["n_samples"]:
                ensure_valid(real, flag, size, standard=False)
                return "real", *_register_nonstandard(flag, size, real, sizes)
            ensure_valid(real, flag, size)
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
                 mode: Mode | None = None, *,
                 allow_nonstandard: bool = False) -> Literal["real", "synthetic"]:
    """``"real"`` or ``"synthetic"``: which data :func:`load_medmnist` would use."""
    used = resolve(flag, size, root, mode, allow_nonstandard=allow_nonstandard)[0]
    return used  # type: ignore[return-value]


def to_tensor() -> v2.Compose:
    """The default image transform: PIL → float32 tensor (C, H, W) in [0, 1]."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def load_medmnist(flag: str, split: str, size: int = 28, root: str | os.PathLike | None = None,
                  mode: Mode | None = None, transform: Callable | None = None,
                  target_transform: Callable | None = None, as_rgb: bool = False,
                  fraction: float | None = None, *, allow_nonstandard: bool = False) -> MedMNIST2D:
    """A MedMNIST split as the real medmnist Dataset class; ``.data_mode`` says real or synthetic.

    ``allow_nonstandard=True`` accepts a real file with other split sizes (a subset of your
    own), loaded as medmnist flag ``<flag>_nonstandard``; see :func:`resolve`."""
    wanted = mode or os.environ.get("DLMI_DATA", "auto")
    _check_args(flag, size, wanted, split)
    mode = cast(Mode, wanted)
    used, name, path = resolve(flag, size, root, mode, fraction, allow_nonstandard=allow_nonstandard)
    cls = getattr(medmnist, INFO[name]["python_class"])
    ds = cls(split=split, transform=transform or to_tensor(), target_transform=target_transform,
             download=False, as_rgb=as_rgb, root=str(path.parent), size=size)
    ds.data_mode = used
    return ds


def load_medmnist_tensors(flag: str, split: str, size: int = 28, root: str | os.PathLike | None = None,
                          mode: Mode | None = None, device: torch.device | str | None = None,
                          fraction: float | None = None, *, dtype: torch.dtype = torch.float32,
                          allow_nonstandard: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as tensors ``(x, y)`` for GPU-resident training.

    ``x`` is float32 (N, C, H, W) in [0, 1]; with ``dtype=torch.uint8`` it keeps the file's
    bytes (a quarter of the memory: pick a subset first, then :func:`to_float`). ``y`` is int64
    (N,) for single-label tasks and float32 (N, L) for multi-label ones. ``allow_nonstandard``:
    as in :func:`load_medmnist`.
    """
    if dtype not in (torch.float32, torch.uint8):
        raise ValueError(f"dtype must be torch.float32 or torch.uint8, got {dtype}")
    ds = load_medmnist(flag, split, size, root, mode, fraction=fraction,
                       allow_nonstandard=allow_nonstandard)
    x, y = arrays_to_tensors(ds.imgs, ds.labels, ds.info["task"], dtype=dtype)
    return x.to(device or "cpu"), y.to(device or "cpu")


def arrays_to_tensors(images: np.ndarray, labels: np.ndarray, task: str, *,
                      dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """MedMNIST arrays (uint8, channels-last (N, H, W) or (N, H, W, 3); labels (N, L)) → ``(x, y)``
    as :func:`load_medmnist_tensors` returns them (``task`` from :func:`info`)."""
    x = torch.from_numpy(images)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    x = x.contiguous() if dtype == torch.uint8 else to_float(x)
    y = torch.from_numpy(labels)
    return x, y.float() if task.startswith("multi-label") else y.view(-1).long()


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) → float32 in [0, 1], contiguous (one copy)."""
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    return out.copy_(x).div_(255)


def info(flag: str) -> dict[str, Any]:
    """medmnist's INFO entry for a 2D flag (task, labels, channels, sizes, licence)."""
    _check_args(flag, 28, "auto")
    return INFO[flag]
