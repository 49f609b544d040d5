"""The grader's scratch space: private to one grading run of one user, on a machine others share.

``$TMPDIR/dlmi-grader-<uid>-<pid>-<random>`` is made with ``mkdtemp`` (mode 0700, a name nobody can
take first or point elsewhere), shared by the run's worker processes and removed when the run
ends; what this user's killed runs left is removed by the next run, never anything of another
user. Sandbox user ids are claimed in one root-only folder per machine (:func:`uid_lock_dir`).
Kept free of heavy imports: the tests start many short processes that use it.
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import psutil

SCRATCH_ENV = "DLMI_GRADER_SCRATCH"   # "<owner pid>:<folder>", inherited by the run's worker processes
_scratch: str | None = None


def remove_stale(tmp: Path) -> list[Path]:
    """Delete scratch folders that this user's graders left in ``tmp`` when they were killed (their
    process is gone, or its PID now belongs to a younger process). Never another user's, never a link."""
    removed = []
    for path in tmp.glob(f"dlmi-grader-{os.geteuid()}-*-*"):
        match = re.fullmatch(rf"dlmi-grader-{os.geteuid()}-(\d+)-\w+", path.name)
        try:
            st = path.lstat()
        except OSError:
            continue
        if not match or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            continue
        try:
            alive = psutil.Process(int(match[1])).create_time() <= st.st_mtime + 1
        except psutil.Error:
            alive = False
        if not alive:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _remove_scratch(path: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def base() -> str:
    """This grading run's private scratch folder: ``$TMPDIR/dlmi-grader-<uid>-<pid>-<random>``, mode
    0700, made with ``mkdtemp`` (no fixed name another user could take first or point elsewhere),
    removed when the run ends; folders of this user's dead runs are removed first. The run's worker
    processes share it (they inherit :data:`SCRATCH_ENV`); any other process makes its own."""
    global _scratch
    if _scratch is None:
        owner, _, inherited = os.environ.get(SCRATCH_ENV, "").partition(":")
        parent = mp.parent_process()
        if inherited and parent is not None and str(parent.pid) == owner and os.path.isdir(inherited):
            _scratch = inherited
        else:
            tmp = Path(tempfile.gettempdir())
            remove_stale(tmp)
            _scratch = tempfile.mkdtemp(prefix=f"dlmi-grader-{os.geteuid()}-{os.getpid()}-", dir=tmp)
            os.environ[SCRATCH_ENV] = f"{os.getpid()}:{_scratch}"
            atexit.register(_remove_scratch, _scratch, os.getpid())
    return _scratch


def uid_lock_dir() -> Path:
    """Where grader processes claim sandbox user ids (a lock file per id). As root: one root-only
    folder for the whole machine, so that parallel grading runs never share an id. Other users
    cannot switch user ids: their private scratch folder."""
    if os.geteuid() != 0:
        return Path(base())
    for parent in (Path("/run"), Path(tempfile.gettempdir())):
        path = parent / "dlmi-grader-uids"
        try:
            path.mkdir(mode=0o700, exist_ok=True)
            st = path.lstat()
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022:
            return path
    raise RuntimeError("no root-only folder for sandbox user id locks (/run/dlmi-grader-uids or "
                       f"{tempfile.gettempdir()}/dlmi-grader-uids is not a directory owned by root, mode 0700)")
