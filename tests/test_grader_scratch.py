"""The grader's scratch space on a shared machine: private to one run of one user, made with a
unique name, removed at exit; what this user's killed runs left is removed on the next run, nothing
of anyone else's. Sandbox user ids are claimed in one root-only folder for the whole machine."""
from __future__ import annotations

import multiprocessing as mp
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from autograder import scratch

ROOT = Path(__file__).resolve().parents[1]
SHOW = "from autograder import scratch; import os; b = scratch.base(); st = os.stat(b); " \
       "print(b, oct(st.st_mode & 0o777), st.st_uid, flush=True)"


def _python(code: str, tmp: Path) -> str:
    env = {**os.environ, "TMPDIR": str(tmp)}
    env.pop(scratch.SCRATCH_ENV, None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_each_run_gets_a_private_unique_folder_removed_at_exit(tmp_path: Path) -> None:
    first, second = _python(SHOW, tmp_path).split(), _python(SHOW, tmp_path).split()
    for path, mode, uid in (first, second):
        assert Path(path).parent == tmp_path
        assert Path(path).name.startswith(f"dlmi-grader-{os.geteuid()}-")
        assert mode == "0o700" and int(uid) == os.geteuid()
        assert not Path(path).exists(), "the scratch folder outlived its run"
    assert first[0] != second[0]


def test_a_folder_someone_else_made_is_never_used(tmp_path: Path) -> None:
    """The old fixed name (``$TMPDIR/dlmi-grader``, made by root or another user) no longer matters."""
    taken = tmp_path / "dlmi-grader"
    taken.mkdir(mode=0o711)
    path = _python(SHOW, tmp_path).split()[0]
    assert Path(path) != taken and taken.is_dir()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_folders_of_dead_runs_of_this_user_only_are_removed(tmp_path: Path) -> None:
    me = os.geteuid()
    dead = tmp_path / f"dlmi-grader-{me}-{_dead_pid()}-abc123"
    alive = tmp_path / f"dlmi-grader-{me}-{os.getpid()}-def456"
    other = tmp_path / f"dlmi-grader-{me + 1}-{_dead_pid()}-ghi789"  # another user's name: never touched
    for d in (dead, alive, other):
        (d / "run1-g0-x").mkdir(parents=True)
    link = tmp_path / f"dlmi-grader-{me}-{_dead_pid()}-lnk000"
    link.symlink_to(alive)
    # a PID reused by a younger process does not keep a dead run's folder
    reused = tmp_path / f"dlmi-grader-{me}-{os.getpid()}-old999"
    reused.mkdir()
    os.utime(reused, (1_000_000, 1_000_000))
    removed = scratch.remove_stale(tmp_path)
    assert sorted(removed) == sorted([dead, reused])
    assert not dead.exists() and not reused.exists()
    assert alive.is_dir() and other.is_dir() and link.is_symlink() and (alive / "run1-g0-x").is_dir()
    # the next run cleans up by itself
    (dead / "x").mkdir(parents=True)
    _python(SHOW, tmp_path)
    assert not dead.exists() and alive.is_dir()


def _worker_scratch(q) -> None:
    q.put(scratch.base())


def test_worker_processes_share_their_runs_folder_other_processes_do_not(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    code = (f"import multiprocessing as mp, sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
            "from test_grader_scratch import _worker_scratch\n"
            "from autograder import scratch\n"
            "if __name__ == '__main__':\n"
            "    base = scratch.base()\n"
            "    ctx = mp.get_context('spawn'); q = ctx.Queue(); p = ctx.Process(target=_worker_scratch, args=(q,))\n"
            "    p.start(); child = q.get(); p.join()\n"
            "    import subprocess, os\n"
            "    other = subprocess.run([sys.executable, '-c', 'from autograder import scratch; "
            "print(scratch.base())'], capture_output=True, text=True).stdout.strip()\n"
            "    print(base, child, other)\n")
    script = tmp_path / "run.py"
    script.write_text(code)
    base, child, other = _python(f"exec(open({str(script)!r}).read())", tmp_path).split()
    assert child == base  # a spawned grading worker works in its run's folder
    assert other != base  # a grader started by this one (a test, a shard) gets its own


def test_sandbox_user_ids_are_claimed_in_a_machine_wide_root_only_folder() -> None:
    path = scratch.uid_lock_dir()
    st = path.lstat()
    if os.geteuid() == 0:
        # parallel grading runs (pytest -n, shards on one machine) must never share a sandbox uid
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
        assert path.name == "dlmi-grader-uids" and path.parent in (Path("/run"), Path(tempfile.gettempdir()))
    else:
        # without root no user id is switched: the private scratch folder holds the locks
        assert str(path) == scratch.base() and stat.S_IMODE(st.st_mode) == 0o700


def test_spawned_children_of_other_programs_do_not_adopt_a_stale_variable(tmp_path: Path) -> None:
    env_value = f"{os.getppid()}:{tmp_path}"
    code = (f"import os; os.environ[{scratch.SCRATCH_ENV!r}] = {env_value!r}\n") + SHOW.replace("; ", "\n")
    path = _python(code, tmp_path).split()[0]
    assert path != str(tmp_path) and mp.parent_process() is None
