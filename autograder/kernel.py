"""One sandboxed Jupyter kernel per submission, driven cell by cell under hard limits.

:class:`KernelSession` starts the kernel through :mod:`autograder.sandbox`, executes code with a
per-cell timeout and a whole-notebook deadline, caps printed output, watches memory and the
number of processes, and answers judge requests through :mod:`autograder.bridge`. Any breach
ends the session with :class:`SubmissionFailure` (a status and a reason, never a score).
"""
from __future__ import annotations

import fcntl
import glob
import importlib.util
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.connect import KernelConnectionInfo
from nbformat import NotebookNode
from nbformat.v4 import output_from_msg

from . import bridge, sandbox
from .errors import StudentError, SubmissionFailure
import contextlib

UID_BASE = 61000
_PASS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "DLMI_SCALE", "DLMI_STANDIN_FRACTION", "DLMI_DATA_DIR")


@dataclass
class Limits:
    """Per-submission limits (seconds, MiB, counts)."""

    timeout_s: float = 600          # whole notebook, wall clock
    cell_timeout_s: float = 300     # one cell (or one judge request)
    memory_mb: int = 3072           # resident memory of all kernel processes together
    nproc: int = 192                # processes + threads (RLIMIT_NPROC of the slot's uid)
    max_processes: int = 64         # processes of one notebook (the watchdog's fork-bomb line)
    output_mb: float = 4            # text and images a notebook may print
    answer_mb: float = 256          # data its functions may return to the graded checks (all of them together)
    startup_s: float = 60           # kernel start


@dataclass
class ExecResult:
    """What one execution produced."""

    outputs: list[NotebookNode] = field(default_factory=list)
    error: dict[str, Any] | None = None      # ename / evalue / traceback of a raised exception
    bridge: list[dict[str, Any]] = field(default_factory=list)


def slot_env(slot: int, device: str, gpus: list[str], gpu_memory_mb: int | None = None) -> dict[str, str]:
    """Device variables for grading slot ``slot``: on CUDA slot ``i`` sees GPU ``gpus[i % len(gpus)]``
    only (several slots share a GPU), its GPU memory capped at ``gpu_memory_mb`` (see
    :mod:`autograder.slots`); else the CPU."""
    env = {"DLMI_DEVICE": "cuda" if device == "cuda" else "cpu"}
    if device == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)] if gpus else "0"
        if gpu_memory_mb is not None:
            env["DLMI_GPU_MEMORY_MB"] = str(int(gpu_memory_mb))
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def readonly_paths(extra: list[str] | None = None, course_root: Path | None = None) -> list[str]:
    """Host paths the kernel needs to read: Python, the venv, the import path, the ``dlmi`` sources, data.

    Nothing that is, holds or lies inside the course root is exposed, except inside the virtual
    environment and the ``dlmi`` package itself (a checkout on ``PYTHONPATH`` stays hidden).
    """
    spec = importlib.util.find_spec("dlmi")
    dlmi_dirs = [str(Path(p).resolve()) for p in (spec.submodule_search_locations or [])] if spec else []
    root = (course_root or Path.cwd()).resolve()

    def allowed(path: str) -> bool:
        p = Path(path).resolve()
        if p == root or p in root.parents:
            return False
        return root not in p.parents or Path(sys.prefix).resolve() in (p, *p.parents)

    paths = {sys.prefix, sys.base_prefix, *dlmi_dirs, *(extra or [])}
    paths.update(p for p in sys.path if p and os.path.isdir(p) and allowed(p))
    return sorted(p for p in paths if p and os.path.exists(p) and (p in dlmi_dirs or p in (extra or []) or allowed(p)))


class KernelSession:
    """A kernel for one submission in ``workdir`` (created and removed by the session)."""

    def __init__(self, workdir: Path, zygote: sandbox.ZygoteClient, *, uid: int, limits: Limits, level: str,
                 env: dict[str, str], ro: list[str], devices: list[str] | None = None,
                 files: dict[str, Path] | None = None) -> None:
        self.workdir, self.zygote, self.uid, self.limits, self.level = workdir, zygote, uid, limits, level
        self.scratch, self.io = workdir / "home", workdir / "io"
        self.extra_env, self.ro, self.devices, self.files = env, ro, devices or [], files or {}
        self.deadline = float("inf")
        self.failure: SubmissionFailure | None = None
        self.output_bytes = 0
        self.answer_bytes = 0
        self.pid: int | None = None
        self.client: BlockingKernelClient | None = None
        self._stop = threading.Event()
        self._io_count = 0

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Make the folders, start the sandboxed kernel and wait until it answers."""
        self.deadline = time.monotonic() + self.limits.timeout_s
        for d in (self.scratch, self.io, self.workdir / "root"):
            d.mkdir(parents=True, exist_ok=True)
        for name, src in self.files.items():
            shutil.copy2(src, self.scratch / name)
        if os.geteuid() == 0 and self.level != "none":
            for dirpath, _, filenames in os.walk(self.scratch):
                os.chown(dirpath, self.uid, self.uid)
                for f in filenames:
                    os.chown(os.path.join(dirpath, f), self.uid, self.uid)
        os.chmod(self.scratch, 0o700)
        os.chmod(self.workdir, 0o711)  # the kernel may pass through to home/ and io/, not list or read the rest
        os.chmod(self.io, 0o755)
        conn: KernelConnectionInfo = {
            "transport": "ipc", "ip": str(self.scratch / "k"), "shell_port": 1, "iopub_port": 2,
            "stdin_port": 3, "control_port": 4, "hb_port": 5, "key": secrets.token_hex(16),
            "signature_scheme": "hmac-sha256", "kernel_name": ""}
        conn_file = self.io / "kernel.json"
        conn_file.write_text(json.dumps(conn))
        os.chmod(conn_file, 0o644)
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.scratch),
               "LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1", "MPLCONFIGDIR": str(self.scratch / ".matplotlib"),
               "DLMI_BRIDGE_IO": str(self.io), "PYDEVD_DISABLE_FILE_VALIDATION": "1",
               **{k: os.environ[k] for k in _PASS_ENV if k in os.environ}, **self.extra_env}
        argv = ["-f", str(conn_file), "--HistoryManager.hist_file=:memory:"]
        spec = sandbox.Spec(argv=argv, env=env, cwd=str(self.scratch), workdir=str(self.workdir), level=self.level,
                            uid=self.uid, ro=[*self.ro, str(self.io)], rw=[str(self.scratch)], devices=self.devices,
                            root=str(self.workdir / "root"),
                            memory_mb=None if self.devices else self.limits.memory_mb + 4096, nproc=self.limits.nproc)
        self.pid = self.zygote.spawn(spec)
        threading.Thread(target=self._watch, daemon=True).start()
        client = BlockingKernelClient()
        client.load_connection_info(conn)
        client.start_channels()
        self.client = client
        until = time.monotonic() + min(self.limits.startup_s, self.limits.timeout_s)
        while not all(os.path.exists(f"{conn['ip']}-{p}") for p in range(1, 6)):
            self._check_alive("while starting")
            if time.monotonic() > until:
                raise SubmissionFailure("failed", f"the kernel did not start within {self.limits.startup_s:.0f} s"
                                        f"{self._log_tail()}")
            time.sleep(0.05)
        self._wait_ready(until)

    def _wait_ready(self, until: float) -> None:
        """Send ``kernel_info`` until the kernel answers (the ZMQ sockets may lag the files)."""
        assert self.client is not None
        while True:
            msg_id = self.client.kernel_info()
            try:
                while True:
                    reply = self.client.get_shell_msg(timeout=0.5)
                    if reply["parent_header"].get("msg_id") == msg_id:
                        break
                break
            except queue.Empty:
                self._check_alive("while starting")
                if time.monotonic() > until:
                    raise SubmissionFailure("failed", "the kernel did not answer after starting") from None
        while True:  # drain start-up iopub traffic
            try:
                self.client.get_iopub_msg(timeout=0.05)
            except queue.Empty:
                break

    def close(self) -> None:
        """Kill every process of the sandbox, wait until its user id owns none, delete the work folder."""
        self._stop.set()
        if self.client is not None:
            self.client.stop_channels()
        self._kill()
        if os.geteuid() == 0 and self.level != "none":
            reap_uid(self.uid)
            if self.level == "uid":
                scrub_uid(self.uid)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KernelSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ watchdog
    def _kill(self) -> None:
        if self.pid is not None and self.exit_code() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def exit_code(self) -> int | None:
        """The sandbox's exit code once it has ended, else None."""
        code = sandbox.exit_status(self.workdir)
        if code is not None or self.pid is None:
            return code
        try:
            if psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            pass
        code = sandbox.exit_status(self.workdir)
        return -1 if code is None else code

    def _tree(self) -> list[psutil.Process]:
        assert self.pid is not None
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def _watch(self) -> None:
        """Kill the sandbox when its process count or memory passes the limits."""
        limit = self.limits.memory_mb << 20
        most = self.limits.max_processes
        while not self._stop.wait(0.1):
            try:
                tree = self._tree()
                if len(tree) > most:
                    self._fail("failed", f"process limit exceeded: more than {most} processes (a fork bomb?)")
                elif sum(_memory(p.pid) for p in tree) > limit:
                    self._fail("failed", f"memory limit exceeded: the notebook used more than "
                               f"{self.limits.memory_mb} MiB")
            except (psutil.Error, OSError):
                continue  # processes come and go while we look
    def _fail(self, status: str, reason: str) -> None:
        if self.failure is None:
            self.failure = SubmissionFailure(status, reason)
        self._kill()

    def _log_tail(self) -> str:
        try:
            text = (self.workdir / "kernel.log").read_text(errors="replace").strip()
        except OSError:
            return ""
        return f" (kernel log: {text[-400:]})" if text else ""

    def _check_alive(self, where: str) -> None:
        if self.failure is not None:
            raise self.failure
        code = self.exit_code()
        if code is not None:
            tail = self._log_tail() if where == "while starting" else ""
            raise SubmissionFailure("failed", f"the kernel died {where} ({_describe_exit(code)}){tail}")

    # ------------------------------------------------------------------ execution
    def execute(self, code: str, where: str, *, store_history: bool = True, bridge_call: bool = False) -> ExecResult:
        """Run ``code``; return outputs and the error it raised. Limits raise :class:`SubmissionFailure`."""
        assert self.client is not None
        self._check_alive(f"before {where}")
        msg_id = self.client.execute(code, store_history=store_history, allow_stdin=False)
        cell_end = min(self.deadline, time.monotonic() + self.limits.cell_timeout_s)
        result, clear_pending = ExecResult(), False
        while True:
            self._check_time(cell_end, where)
            try:
                msg = self.client.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                self._check_alive(f"in {where}")
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return result
            clear_pending = self._take(msg, result, where, bridge_call, clear_pending)

    def _check_time(self, cell_end: float, where: str) -> None:
        """End the session with a timeout once the cell's or the notebook's time is up."""
        now = time.monotonic()
        if now <= cell_end:
            return
        if now >= self.deadline:
            self._fail("timeout", f"the notebook ran longer than {self.limits.timeout_s:.0f} s (in {where})")
        else:
            self._fail("timeout", f"{where} ran longer than {self.limits.cell_timeout_s:.0f} s")
        raise self.failure  # type: ignore[misc]

    def _take(self, msg: dict[str, Any], result: ExecResult, where: str, bridge_call: bool,
              clear_pending: bool) -> bool:
        """Add one message of the running cell to ``result``, counting it against the limits; returns
        whether a ``clear_output(wait=True)`` still waits for the next output."""
        kind, content = msg["msg_type"], msg["content"]
        if kind == "clear_output":
            if content.get("wait"):
                return True
            result.outputs.clear()
            return clear_pending
        if kind not in ("stream", "display_data", "execute_result", "error"):
            return clear_pending
        if kind == "display_data" and bridge.MIME in content.get("data", {}):
            if bridge_call:
                result.bridge.append(content)
            self._count_answer(content, where)  # answers to graded checks have an output limit of their own
            return clear_pending
        if kind == "error":
            result.error = {"ename": content["ename"], "evalue": content["evalue"], "traceback": content["traceback"]}
        self._count_output(content, where)
        if bridge_call:
            return clear_pending  # what a judged call prints is not part of the notebook
        if clear_pending:
            result.outputs.clear()
        _append_output(result.outputs, output_from_msg(msg))
        return False

    def _count_output(self, content: dict[str, Any], where: str) -> None:
        size = len(content.get("text", "")) + sum(len(str(v)) for v in content.get("data", {}).values())
        size += sum(len(line) for line in content.get("traceback", []))
        self.output_bytes += size
        if self.output_bytes > self.limits.output_mb * 2**20:
            self._fail("failed", f"output limit exceeded: the notebook printed more than {self.limits.output_mb:g} MB "
                       f"(in {where})")
            raise self.failure  # type: ignore[misc]

    def _count_answer(self, content: dict[str, Any], where: str) -> None:
        self.answer_bytes += sum(len(str(v)) for v in content.get("data", {}).values())
        if self.answer_bytes > self.limits.answer_mb * 2**20:
            self._fail("failed", f"output limit exceeded: the notebook's functions returned more than "
                       f"{self.limits.answer_mb:g} MB to the graded checks (in {where})")
            raise self.failure  # type: ignore[misc]

    def run_bridge_source(self) -> None:
        """(Re)install the bridge module in the kernel; a student may have clobbered it."""
        source = Path(bridge.__file__).read_text()
        code = ("import sys as _s, types as _t\n_m = _t.ModuleType('__dlmi_bridge__')\n"
                f"exec(compile({source!r}, '<dlmi-bridge>', 'exec'), _m.__dict__)\n"
                "_old = _s.modules.get('__dlmi_bridge__')\n"
                "for _k in ('_handles', '_next_handle', 'data_loads', '_forbidden', '_armed'):\n"
                "    if type(getattr(_old, _k, None)) is type(getattr(_m, _k)):\n"
                "        setattr(_m, _k, getattr(_old, _k))  # the same objects: wrappers made earlier still see them\n"
                "_s.modules['__dlmi_bridge__'] = _m\ndel _s, _t, _m, _old, _k\n")
        result = self.execute(code, "the grader's bridge", store_history=False, bridge_call=True)
        if result.error:
            raise StudentError(result.error["ename"], result.error["evalue"], [])

    def request(self, op: str, target: dict[str, Any], args: list[Any] | None = None,
                kwargs: dict[str, Any] | None = None, *, as_handle: bool = False) -> Any:
        """Send one bridge request; return the raw wire answer (``value``) or raise :class:`StudentError`."""
        rid = secrets.token_hex(8)
        payload = json.dumps({"id": rid, "op": op, "target": target, "args": args or [], "kwargs": kwargs or {},
                              "as_handle": as_handle})
        code = f"__import__('sys').modules['__dlmi_bridge__'].serve({payload!r})"
        result = self.execute(code, "a graded check", store_history=False, bridge_call=True)
        answers = [json.loads(c["data"][bridge.MIME]) for c in result.bridge]
        answers = [a for a in answers if isinstance(a, dict) and a.get("id") == rid]
        if not answers:
            if result.error:  # the call never reached serve(): the bridge is gone
                raise StudentError(result.error["ename"], result.error["evalue"], [])
            raise StudentError("GraderError", "the kernel gave no answer to a graded check", [])
        answer = answers[-1]
        if not answer.get("ok"):
            raise StudentError(str(answer.get("ename")), str(answer.get("evalue")), list(answer.get("traceback", [])))
        return answer["value"]

    def array_file(self, npy: bytes) -> dict[str, str]:
        """Put an array for the kernel into the read-only input folder; return its wire stub."""
        self._io_count += 1
        name = f"a{self._io_count}.npy"
        path = self.io / name
        path.write_bytes(npy)
        os.chmod(path, 0o644)
        return {"file": name}



def claim_uid(folder: Path) -> tuple[int, IO[str]]:
    """A sandbox user id no other grader process on this machine uses: (uid, lock held while open)."""
    for uid in range(UID_BASE, UID_BASE + 1000):
        lock = open(folder / f"uid-{uid}.lock", "w")  # noqa: SIM115 (held open: the lock lives while it is)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        if os.geteuid() == 0:
            reap_uid(uid)  # leftovers of a grader that crashed
        return uid, lock
    raise RuntimeError(f"no free sandbox user id in {UID_BASE}..{UID_BASE + 999}")


FRESH_UID_BASE, UID_SPAN = 200_000, 100_000  # one sandbox user id per hand-in: 200000 .. 299999


def claim_fresh_uid(lock_dir: Path, used_dir: Path, first: int = FRESH_UID_BASE) -> tuple[int, IO[str]]:
    """A sandbox user id for one hand-in: never used before in this grading run (a marker in
    ``used_dir``, shared by the run's workers) and used by no other grader now (a lock in
    ``lock_dir``, which must be the machine's :func:`autograder.scratch.uid_lock_dir`: as root the
    claimed id's processes are killed). Returns (uid, lock held while open). Nothing a hand-in
    leaves behind that belongs to its user id (a keyring, a file in a shared folder) can be read by
    the next one. ``first`` is the lowest id to try."""
    used_dir.mkdir(mode=0o700, exist_ok=True)
    for uid in range(first, FRESH_UID_BASE + UID_SPAN):
        try:
            os.close(os.open(used_dir / str(uid), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            continue
        lock = open(lock_dir / f"uid-{uid}.lock", "w")  # noqa: SIM115 (held open: the lock lives while it is)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        if os.geteuid() == 0:
            reap_uid(uid)  # leftovers of a grader that crashed
            scrub_uid(uid)
        return uid, lock
    raise RuntimeError(f"no unused sandbox user id left in {FRESH_UID_BASE}..{FRESH_UID_BASE + UID_SPAN - 1}")


SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue")


def scrub_uid(uid: int, folders: tuple[str, ...] = SHARED_DIRS) -> list[str]:
    """Delete what ``uid`` owns in the machine's shared writable folders (a kernel of the ``uid``
    level writes there; the ``namespaces`` level has its own). Returns the paths removed."""
    removed = []
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for dirpath, dirnames, filenames in os.walk(folder, topdown=True):
            for name in [*filenames, *dirnames]:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if st.st_uid != uid:
                    continue
                if name in dirnames:
                    dirnames.remove(name)
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    try:
                        os.unlink(path)
                    except OSError:
                        continue
                removed.append(path)
            if dirpath.count(os.sep) - folder.count(os.sep) >= 3:
                dirnames.clear()  # deep trees of other users: not ours to walk
    return removed


def reap_uid(uid: int, wait_s: float = 30) -> None:
    """SIGKILL whatever still runs as ``uid`` and wait until it is gone (a dying fork bomb would
    otherwise eat the next kernel's process limit)."""
    start = time.monotonic()
    while time.monotonic() < start + wait_s:
        left = [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid]
        if not left:
            return
        if time.monotonic() < start + 1:  # SIGKILL was sent: give the processes a moment to exit
            time.sleep(0.02)
            continue
        subprocess.run([sys.executable, "-I", "-S", "-c", f"import os,signal; os.setresuid({uid},{uid},{uid}); "
                        "os.kill(-1, signal.SIGKILL)"], capture_output=True)
        time.sleep(0.1)


def gpu_devices() -> list[str]:
    """Device nodes a CUDA kernel needs."""
    return sorted(glob.glob("/dev/nvidia*"))


def _memory(pid: int) -> int:
    """Proportional set size of ``pid`` in bytes (shared pages split among sharers), else RSS."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def _append_output(outputs: list[NotebookNode], out: NotebookNode) -> None:
    """Append like Jupyter: consecutive text on the same stream merges."""
    if out.output_type == "stream" and outputs and outputs[-1].output_type == "stream" \
            and outputs[-1].name == out.name:
        outputs[-1].text += out.text
    else:
        outputs.append(out)


def _describe_exit(code: int) -> str:
    if code == -1:
        return "exit status unknown"
    if code > 128:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"
