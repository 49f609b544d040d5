"""Data the judge uses for a lab's ``metadata.dlmi.data`` (flag, size): never sent to a kernel
before a hidden test asks for it, and its labels never leave the judge.

* :func:`heldout` — the grader's held-out split: MedMNIST's official ``test`` split when the
  real data is used (the labs never load it, and kernels never see it: :func:`kernel_copy`), else
  a fresh sample of the synthetic stand-in drawn with the course's secret seed (:func:`heldout_seed`).
* :func:`split` — the same ``train``/``val`` data the student's notebook sees.
* :func:`prepare_data` — the read-only view of the data set kernels load (no test split in it).
* :func:`heldout_seed` — the course's secret: ``$DLMI_HELDOUT_SEED`` (in CI a variable of the private
  grading repository), else a random
  number kept in the git-ignored file ``.dlmi-heldout-secret`` (mode 0600) of the course root,
  made on the first grading run. No graded run uses a seed written in the repository.
"""
from __future__ import annotations

import functools
import hashlib
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .scratch import base as scratch_base

if TYPE_CHECKING:
    from dlmi.datasets import Mode

SEED_ENV = "DLMI_HELDOUT_SEED"
SEED_FD_ENV = "_DLMI_HELDOUT_SEED_FD"  # set by reexec_without_seed: a pipe that holds the seed
SECRET_FILE = ".dlmi-heldout-secret"


def _take_seed() -> tuple[str | None, bool]:
    """The seed, from the environment or from the pipe a re-exec left, and whether it came from
    the environment; removed from ``os.environ`` so that no process the grader starts (the kernel
    zygote, hence every kernel) inherits it."""
    fd = os.environ.pop(SEED_FD_ENV, None)
    if fd is not None:
        with os.fdopen(int(fd), "rb") as pipe:
            return pipe.read().decode(), False
    seed = os.environ.pop(SEED_ENV, None)
    return seed, seed is not None


_ENV_SEED, _SEED_IN_ENVIRON = _take_seed()


def reexec_without_seed(module: str, argv: list[str]) -> None:
    """Replace this process by ``python -m module argv`` without ``$DLMI_HELDOUT_SEED`` in its
    environment block, the seed handed over in a pipe. Deleting the variable from ``os.environ``
    does not change ``/proc/<pid>/environ``, which any process of the same user can read — a
    kernel too, where no sandbox separates it from the grader (isolation ``none``)."""
    if not _SEED_IN_ENVIRON or _ENV_SEED is None:
        return
    read, write = os.pipe()
    os.write(write, _ENV_SEED.encode())
    os.close(write)
    os.set_inheritable(read, True)
    env = {k: v for k, v in os.environ.items() if k != SEED_ENV}
    env[SEED_FD_ENV] = str(read)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def _seed_from(text: str) -> int:
    text = text.strip()
    if text.isdigit():
        return int(text)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 2


def heldout_seed(root: str | os.PathLike | None = None) -> int:
    """The course's secret held-out seed (see the module's text)."""
    if _ENV_SEED and _ENV_SEED.strip():
        return _seed_from(_ENV_SEED)
    if root is None:
        from .course import course_root
        root = course_root()
    path = Path(root) / SECRET_FILE
    if os.environ.get("CI") and not path.exists():
        print(f"WARNING: ${SEED_ENV} is not set on this CI runner: this run makes its own held-out secret, so "
              "shards or re-runs graded elsewhere draw other held-out sets; set the grading repository's "
              f"variable {SEED_ENV} (see README)", file=sys.stderr)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{secrets.randbits(62)}\n")
        print(f"made the course's held-out secret {path} (mode 0600, git-ignored): keep it, or set "
              f"${SEED_ENV} to the same value on every machine that grades (CI: a variable of the private "
              "grading repository)",
              file=sys.stderr)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return _seed_from(path.read_text())


def kernel_copy(source: Path, target: Path, splits: list[str]) -> Path:
    """Write the MedMNIST npz ``source`` to ``target`` with only ``splits`` in it: the arrays of every
    other split are replaced by blank ones of the same shape and dtype (dlmi checks the sizes), so
    their images never reach a kernel. Skipped when ``target`` was made from the same file."""
    stamp = target.with_name(target.name + ".from")
    st = source.stat()
    origin = f"{source.resolve()} {st.st_size} {st.st_mtime_ns} {','.join(sorted(splits))}"
    if target.exists() and stamp.exists() and stamp.read_text() == origin:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with np.load(source) as npz:
        arrays = {key: np.zeros(npz[key].shape, npz[key].dtype)
                  if key.split("_")[0] in ("train", "val", "test") and key.split("_")[0] not in splits else npz[key]
                  for key in npz.files}  # other keys (the stand-in's standin_version) are kept
    tmp = target.with_name(target.name + ".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **arrays as allow_pickle
    os.replace(tmp, target)
    stamp.write_text(origin)
    return target


def prepare_data(settings: dict[str, Any], root: Path | None = None) -> tuple[dict[str, str], list[str]]:
    """Make the lab's data set readable by kernels: (environment, paths to bind read-only).

    Kernels see only a copy, in a grader folder that mirrors the data root, holding the splits the
    lab may load (``metadata.dlmi.data.splits``, default train and val); every other split (test)
    is there as blank placeholder arrays of the same shape, so the test images never enter a
    kernel's file system (:func:`kernel_copy`).
    """
    spec = settings.get("data")
    if not spec:
        return {}, []
    from dlmi.datasets import data_root, resolve

    flag, size = spec["flag"], spec.get("size", 28)
    splits = list(spec.get("splits", ["train", "val"]))
    if "test" in splits:
        raise ValueError("the test split is the grader's held-out data: a lab may not load it (metadata.dlmi.data)")
    mode, _, path = resolve(flag, size)
    rel = path.resolve().relative_to(data_root().resolve())
    view = Path(scratch_base()) / "data"
    target = view / rel
    kernel_copy(path, target, splits)
    for p in [target, *target.parents]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
        if p == view:
            break
    return {"DLMI_DATA": mode, "DLMI_DATA_DIR": str(view)}, [str(view)]


@functools.lru_cache(maxsize=4)
def heldout(flag: str, size: int = 28, mode: str = "synthetic", n: int = 1000, *,
            seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``n`` held-out images and labels (a fixed subset, the same on every run of a course)."""
    import dlmi
    from dlmi.datasets import arrays_to_tensors
    from dlmi.standin import make_standin
    from medmnist.info import INFO

    if mode == "real":
        x, y = dlmi.load_medmnist_tensors(flag, "test", size, mode="real")
    else:
        seed = heldout_seed() if seed is None else seed
        arrays = make_standin(INFO[flag], size, 1e-9, seed)  # the smallest stand-in: 800 per split
        x, y = arrays_to_tensors(arrays["test_images"], arrays["test_labels"], INFO[flag]["task"])
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return x[keep], y[keep]


@functools.lru_cache(maxsize=4)
def split(flag: str, name: str, size: int = 28, mode: Mode = "synthetic",
          n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples of the split ``name`` the notebook itself loads."""
    import dlmi

    if name == "test":
        raise ValueError("the test split is the grader's held-out data: use heldout()")
    x, y = dlmi.load_medmnist_tensors(flag, name, size, mode=mode)
    return x[:n], y[:n]


def providers(settings: dict[str, Any], mode: str | None = None, seed: int | None = None) -> dict[str, Any]:
    """The ``grader.<name>`` helpers hidden tests of a lab with a data set may use: ``mode`` is the data
    the lab's kernels load (``real`` or ``synthetic``, the ``DLMI_DATA`` of :func:`prepare_data`),
    ``seed`` the course's held-out seed (default :func:`heldout_seed`; outside a course, as in the
    benchmark's in-kernel stand-in, a secret of its own)."""
    if seed is None:
        try:
            seed = heldout_seed()
        except FileNotFoundError:
            seed = secrets.randbits(62)
    base: dict[str, Any] = {"heldout_seed": seed}  # for hidden tests that draw their own hidden set
    spec = settings.get("data")
    if not spec:
        return base
    if mode is None:
        raise ValueError(f"the lab loads {spec['flag']}: its grader helpers need the data mode its kernels "
                         "use (real or synthetic; see prepare_data)")
    flag, size = spec["flag"], spec.get("size", 28)
    return {**base, "heldout": functools.partial(heldout, flag, size, mode, seed=seed),
            "dataset": functools.partial(split, flag, size=size, mode=mode), "data_mode": mode, "flag": flag}
