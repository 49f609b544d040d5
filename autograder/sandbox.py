"""Start student kernels isolated from the grader, the course files and each other — fast.

A **zygote** (one per grading run, started fresh, never forked from the grader, so it has
never seen a solution or a hidden test) imports the heavy libraries once (torch, dlmi,
ipykernel) and forks one child per submission for whichever worker asks. The child:

1. (level ``namespaces``) enters new mount, network, PID, IPC and UTS namespaces;
2. as PID 1 of the new PID namespace, builds a minimal root file system on a tmpfs —
   read-only binds of the system, the Python installation, the virtual environment, the
   ``dlmi`` sources and the data cache; a small ``/dev``; a private ``/tmp``; the submission's
   scratch folder read-write and the grader's input folder read-only — and chroots into it;
   nothing else (``solutions/``, the gradebook, results, other submissions, ``/root``) exists
   inside, and the only network interface is a loopback that is down;
3. forks the kernel, which drops to an unprivileged user id (one per grading slot), sets
   resource limits and ``no_new_privs`` and runs ipykernel in-process (its imports are already
   done). The kernel talks to the grader over Unix sockets in the scratch folder.

Levels: ``namespaces`` (all of the above; needs root on Linux), ``uid`` (another user id and
limits, no namespaces; needs root), ``none`` (limits only).
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

LEVELS = ("namespaces", "uid", "none")
PRELOAD = ("numpy", "torch", "IPython", "ipykernel.kernelapp")
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC, _CLONE_NEWPID, _CLONE_NEWNET = \
    0x00020000, 0x04000000, 0x08000000, 0x20000000, 0x40000000
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_DEVICES = ("null", "zero", "full", "random", "urandom")


@dataclass
class Spec:
    """One kernel: what it runs, where, as whom and within which limits."""

    argv: list[str]                                   # ipykernel arguments (sys.argv of the kernel)
    env: dict[str, str]
    cwd: str
    workdir: str                                      # grader-only folder: kernel.log and exit status
    level: str = "namespaces"
    uid: int = 61000
    ro: list[str] = field(default_factory=list)       # host paths bound read-only at the same path
    rw: list[str] = field(default_factory=list)       # host paths bound read-write (scratch)
    devices: list[str] = field(default_factory=list)  # extra device nodes (GPUs)
    root: str = ""                                    # empty host dir that becomes the new root
    tmp_mb: int = 256                                 # size of the private /tmp and /dev/shm
    memory_mb: int | None = 8192                      # RLIMIT_AS; None on GPUs (CUDA maps huge ranges)
    nproc: int = 256                                  # RLIMIT_NPROC (processes + threads of this uid)
    fsize_mb: int = 512                               # largest file the kernel may write
    nofile: int = 1024                                # open files


def privilege_problem(level: str) -> str | None:
    """Why this process may not use ``level`` at all (None if its privileges allow it): the ``uid``
    and ``namespaces`` levels switch user ids and mount file systems, which only root can do."""
    if level == "none":
        return None
    if not sys.platform.startswith("linux"):
        return f"needs root on Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"needs root on Linux (this grader runs as uid {os.geteuid()})"
    return None


def probe(level: str) -> str | None:
    """Start an empty sandbox at ``level`` the way a kernel would be started; None if it works,
    else what went wrong (e.g. a container that forbids mounts, or no root: see
    :func:`privilege_problem`)."""
    if level == "none":
        return None
    if problem := privilege_problem(level):
        return problem
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", level], capture_output=True,
                         text=True, timeout=120)
    return None if out.returncode == 0 else (out.stdout + out.stderr).strip()[-500:] or f"exit {out.returncode}"


def default_level() -> tuple[str, list[str]]:
    """The strongest level this machine allows, and why stronger ones were refused."""
    refused: list[str] = []
    for level in LEVELS:
        problem = probe(level)
        if problem is None:
            return level, refused
        refused.append(f"{level}: {problem}")
    return "none", refused


def _probe_main(level: str) -> None:
    """``--probe LEVEL``: run :func:`_spawned` for a sandbox whose 'kernel' only enters its folder."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="dlmi-probe-") as tmp:
        os.chmod(tmp, 0o711)
        home, root = os.path.join(tmp, "home"), os.path.join(tmp, "root")
        os.makedirs(home)
        os.makedirs(root)
        os.chown(home, 61999, 61999)
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH")}
        ro = {sys.prefix, sys.base_prefix, *(p for p in sys.path if p and os.path.isdir(p))}
        spec = Spec(argv=["--probe"], env=env, cwd=home, workdir=tmp, level=level, uid=61999, ro=sorted(ro),
                    rw=[home], root=root)
        pid = os.fork()
        if pid == 0:
            _spawned(spec)
        os.waitpid(pid, 0)
        code = exit_status(Path(tmp))
        log = Path(tmp, "kernel.log")
        if code != 0:
            print(log.read_text() if log.exists() else "", f"exit {code}", file=sys.stderr)
        sys.exit(0 if code == 0 else 1)


class Zygote:
    """Host side: one preloaded process per grading run that forks sandboxed kernels for every
    worker. It listens on a Unix socket only root (the grader) can use; it is started fresh, so it
    never held a solution or a hidden test, and it exits when the grader does."""

    def __init__(self, preload: list[str], env: dict[str, str], log: Path, socket_path: Path) -> None:
        self._log = open(log, "ab")  # noqa: SIM115 (the zygote's stderr for its whole life; closed by close())
        self._logpath, self.socket_path = log, socket_path
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(socket_path), *preload],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env,
                                     cwd="/")

    def wait_ready(self) -> None:
        """Block until the preloads are imported and the socket listens."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        ready = json.loads(line) if line else {"error": f"it exited with code {self.proc.wait()}"}
        if ready.get("ready") is not True:
            raise RuntimeError(f"the kernel zygote did not start: {ready.get('error')} (see {self._logpath})")

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # end of input: the zygote exits
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()
        if self._logpath.exists() and self._logpath.stat().st_size == 0:
            self._logpath.unlink()
        self.socket_path.unlink(missing_ok=True)


class ZygoteClient:
    """A worker's connection to the zygote."""

    def __init__(self, socket_path: Path, connect_s: float = 300) -> None:
        self.socket_path, self.connect_s = socket_path, connect_s
        self._file: IO[str] | None = None

    def _connect(self) -> IO[str]:
        if self._file is None:
            until = time.monotonic() + self.connect_s
            while True:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(str(self.socket_path))
                    break
                except OSError:
                    sock.close()
                    if time.monotonic() > until:
                        raise RuntimeError(f"the kernel zygote at {self.socket_path} does not answer") from None
                    time.sleep(0.1)
            self._file = sock.makefile("rw")
        return self._file

    def spawn(self, spec: Spec) -> int:
        """Start a kernel; return the host PID of its sandbox (kill that process group to end it)."""
        conn = self._connect()
        conn.write(json.dumps(asdict(spec)) + "\n")
        conn.flush()
        line = conn.readline()
        answer = json.loads(line) if line else {"error": "the zygote closed the connection"}
        if "pid" not in answer:
            raise RuntimeError(f"the kernel zygote could not fork: {answer.get('error')}")
        return int(answer["pid"])


def exit_status(workdir: Path) -> int | None:
    """The kernel's exit code as its sandbox recorded it (None while it runs)."""
    try:
        return int((workdir / "exit").read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- inside the zygote
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    _check(_libc().mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), f"mount {src} -> {dst}")


def _bind(src: str, root: str, writable: bool = False) -> None:
    """Bind host path ``src`` at the same path under ``root`` (read-only unless ``writable``)."""
    dst = root + src
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    _mount(src, dst, None, _MS_BIND | _MS_REC)
    _mount(None, dst, None, _MS_BIND | _MS_REMOUNT | _MS_NOSUID | (0 if writable else _MS_RDONLY))


def _build_root(spec: Spec) -> None:
    """Make the minimal root file system under ``spec.root`` and chroot into it."""
    root = spec.root
    _mount("tmpfs", root, "tmpfs", _MS_NOSUID, "size=16m,mode=755")
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            os.symlink(os.readlink(top), root + top)
        elif os.path.isdir(top):
            _bind(top, root)
    os.makedirs(root + "/dev", exist_ok=True)
    _mount("tmpfs", root + "/dev", "tmpfs", _MS_NOSUID, "size=64k,mode=755")
    for dev in [f"/dev/{d}" for d in _DEVICES] + spec.devices:
        if os.path.isdir(dev):  # e.g. /dev/nvidia-caps
            os.makedirs(root + dev, exist_ok=True)
            _mount(dev, root + dev, None, _MS_BIND | _MS_REC)
        elif os.path.exists(dev):
            open(root + dev, "a").close()
            _mount(dev, root + dev, None, _MS_BIND)
    os.symlink("/proc/self/fd", root + "/dev/fd")
    for mnt in ("/dev/shm", "/tmp"):
        os.makedirs(root + mnt, exist_ok=True)
        _mount("tmpfs", root + mnt, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={spec.tmp_mb}m,mode=1777")
    os.makedirs(root + "/proc", exist_ok=True)
    try:
        _mount("proc", root + "/proc", "proc", _MS_NOSUID | _MS_NODEV)
    except OSError as err:  # containers that mask parts of their /proc forbid a fresh one
        print(f"sandbox: no fresh /proc here ({err}); binding the host's read-only", file=sys.stderr, flush=True)
        _bind("/proc", root)
    for path in ["/usr", "/etc", "/sys", *spec.ro]:
        if os.path.exists(path):
            _bind(path, root)
    for path in spec.rw:
        _bind(path, root, writable=True)
    os.chroot(root)


def _drop(spec: Spec) -> None:
    """Become ``spec.uid`` with no supplementary groups and no way back to privileges."""
    if os.geteuid() == 0 and spec.level != "none":
        os.setgroups([])
        os.setresgid(spec.uid, spec.uid, spec.uid)
        os.setresuid(spec.uid, spec.uid, spec.uid)
    _check(_libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def _limit(spec: Spec) -> None:
    mb = 1 << 20
    limits = {resource.RLIMIT_FSIZE: spec.fsize_mb * mb, resource.RLIMIT_NOFILE: spec.nofile, resource.RLIMIT_CORE: 0}
    if spec.level != "none":  # counted per user: only meaningful for the sandbox's own user id
        limits[resource.RLIMIT_NPROC] = spec.nproc
    if spec.memory_mb:
        limits[resource.RLIMIT_AS] = spec.memory_mb * mb
    for kind, value in limits.items():
        hard = resource.getrlimit(kind)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (value, value))


# system calls that make state outliving the kernel or shared between user ids: the kernel keyrings
# (add_key, request_key, keyctl) and System V / POSIX message-queue IPC (shmget, semget, msgget, mq_open)
_DENIED_SYSCALLS = {"x86_64": (0xC000003E, (248, 249, 250, 29, 64, 68, 240)),
                    "aarch64": (0xC00000B7, (217, 218, 219, 194, 190, 186, 180))}
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2


def deny_shared_state() -> bool:
    """Install a seccomp filter on this process (and all it starts) that answers ``EPERM`` to the
    system calls that could leave state for the next hand-in or read another's: keyrings (not
    namespaced; a key linked into a user keyring outlives the kernel) and System V / POSIX message
    queue IPC. System calls of another ABI (32-bit or x32 on x86_64) are refused too. Needs
    ``no_new_privs`` (set by :func:`_drop`). False on a machine it does not know."""
    import platform
    import struct
    arch = _DENIED_SYSCALLS.get(platform.machine())
    if arch is None or not sys.platform.startswith("linux"):
        return False
    audit_arch, numbers = arch
    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    n = len(numbers)
    prog = [(ld, 0, 0, 4), (jeq, 0, n + 3, audit_arch), (ld, 0, 0, 0),
            (jset, n + 1, 0, 0x40000000 if platform.machine() == "x86_64" else 0)]  # x32 calls: denied
    prog += [(jeq, n - i, 0, nr) for i, nr in enumerate(numbers)]
    prog += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw)

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Fprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    _check(_libc().prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "prctl(PR_SET_SECCOMP)")
    return True


def die_with_parent(parent: int | None = None) -> None:
    """SIGKILL this process when its parent dies. Changing user ids clears the setting, so call it
    again after :func:`_drop`; ``parent`` guards against a parent that died before this call."""
    _check(_libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if parent is not None and os.getppid() != parent:
        os._exit(137)


def _run_kernel(spec: Spec) -> None:
    """The kernel process: unprivileged, limited, running ipykernel with the preloaded modules."""
    parent = os.getppid()
    _limit(spec)
    _drop(spec)
    die_with_parent(parent)
    deny_shared_state()
    if spec.argv == ["--probe"]:  # can this user, in this sandbox, import what a kernel needs?
        os.chdir(spec.cwd)
        os.execve(sys.executable, [sys.executable, "-c", "import ipykernel.kernelapp, numpy"], spec.env)
    os.environ.clear()
    os.environ.update(spec.env)
    os.chdir(spec.cwd)
    if "torch" in sys.modules and spec.env.get("OMP_NUM_THREADS", "").isdigit():
        sys.modules["torch"].set_num_threads(int(spec.env["OMP_NUM_THREADS"]))
    cap_gpu_memory(spec.env.get("DLMI_GPU_MEMORY_MB", ""))
    sys.argv = ["ipykernel_launcher", *spec.argv]
    from ipykernel import kernelapp
    kernelapp.launch_new_instance()


def cap_gpu_memory(mb: str) -> float | None:
    """Cap this process's CUDA memory at ``mb`` MiB before any student code runs (several kernels share
    a GPU); return the fraction of the GPU set, or None where there is no cap or no GPU. The CUDA
    context starts here, inside the sandbox, with only the slot's GPU visible. Like everything set
    inside the kernel, a hostile hand-in could lift it: it keeps honest mistakes from harming
    neighbours, it is not a security boundary."""
    if not mb.isdigit() or "torch" not in sys.modules:
        return None
    cuda = sys.modules["torch"].cuda
    if not cuda.is_available():
        return None  # the hand-in's own `.to("cuda")` will say why
    fraction = min(1.0, int(mb) * 2**20 / cuda.get_device_properties(0).total_memory)
    cuda.set_per_process_memory_fraction(fraction, 0)
    return fraction


def _reap(child: int) -> int:
    """Reap every child (orphans too, as PID 1 must) until ``child`` exits; return its exit code."""
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 1
        if pid == child:
            return os.waitstatus_to_exitcode(status)


def _sandbox(spec: Spec) -> int:
    """PID 1 of the sandbox: build the root, fork the kernel, reap; return the kernel's exit code."""
    parent = os.getppid()
    die_with_parent(parent)
    if spec.level == "namespaces":
        _build_root(spec)
    os.chdir(spec.cwd)
    child = os.fork()
    if child == 0:
        try:
            _run_kernel(spec)
            os._exit(0)
        except BaseException as err:  # never fall back into the caller's code
            print(f"sandbox: the kernel failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            os._exit(127)
    _drop(spec)
    die_with_parent(parent)
    code = _reap(child)
    return code if code >= 0 else 128 - code  # killed by signal N → 128 + N, as a shell reports it


def _spawned(spec: Spec) -> None:
    """The zygote's child: namespaces, then the sandbox as its child; record the exit code."""
    code = 126
    try:
        os.setsid()
        die_with_parent()
        log = os.open(os.path.join(spec.workdir, "kernel.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 65536)
        if spec.level == "namespaces":
            _check(_libc().unshare(_CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWUTS),
                   "unshare")
            _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
        child = os.fork()
        if child == 0:
            try:
                os._exit(_sandbox(spec))
            except BaseException as err:
                print(f"sandbox: set-up failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
                os._exit(125)
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        code = code if code >= 0 else 128 - code
    except BaseException as err:
        print(f"sandbox: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    finally:
        try:
            with open(os.path.join(spec.workdir, "exit"), "w") as fh:
                fh.write(str(code))
        finally:
            os._exit(code)


def _preload(preload: list[str]) -> None:
    """Import the libraries every kernel will use (a lab's optional one may be missing)."""
    import importlib
    for name in preload:
        try:
            importlib.import_module(name)
        except ImportError as err:  # a lab's optional library: its notebook will say so itself
            if name == "ipykernel.kernelapp":
                raise
            print(f"zygote: cannot preload {name}: {err}", file=sys.stderr, flush=True)


def _listen(socket_path: str) -> socket.socket:
    """The zygote's Unix socket, which only the grader's own user may connect to."""
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    server.bind(socket_path)
    os.umask(old_umask)
    server.listen(64)
    return server


def _answer(selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
    """Read one spec from a worker's connection, fork its sandboxed kernel and answer with its pid
    (or the error); a closed connection is unregistered."""
    stream = key.data
    line = stream.readline()
    if not line:
        selector.unregister(key.fileobj)
        stream.close()
        key.fileobj.close()  # type: ignore[union-attr]
        return
    try:
        spec = Spec(**json.loads(line))
        pid = os.fork()
        if pid == 0:
            _spawned(spec)
        stream.write(json.dumps({"pid": pid}) + "\n")
    except Exception as err:  # answer and go on: one bad spec must not stop the others
        stream.write(json.dumps({"error": f"{type(err).__name__}: {err}"}) + "\n")
    stream.flush()


def _reap_finished() -> None:
    """Collect the sandboxes that have finished (without waiting)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def zygote_main(socket_path: str, preload: list[str]) -> None:
    """Import ``preload`` once, then fork a sandboxed kernel for each spec a worker sends."""
    die_with_parent()
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # this folder is not a place to import from
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter goes to the log, not into the protocol
    try:
        _preload(preload)
        server = _listen(socket_path)
    except BaseException as err:
        out.write(json.dumps({"ready": False, "error": f"{type(err).__name__}: {err}"}) + "\n")
        raise
    out.write(json.dumps({"ready": True}) + "\n")
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ, "accept")
    selector.register(sys.stdin, selectors.EVENT_READ, "parent")
    while True:
        for key, _ in selector.select(timeout=1.0):
            if key.data == "parent":
                if not sys.stdin.readline():
                    return  # the grader closed our input: done
            elif key.data == "accept":
                conn, _ = server.accept()
                selector.register(conn, selectors.EVENT_READ, conn.makefile("rw"))
            else:
                _answer(selector, key)
        _reap_finished()

if __name__ == "__main__":
    if sys.argv[1] == "--probe":
        _probe_main(sys.argv[2])
    else:
        zygote_main(sys.argv[1], sys.argv[2:])
