"""Grade one hand-in in a worker process, several at once in a :class:`Pool`.

One submission is graded by :func:`grade_job` with a :class:`Worker` (its slot, options, kernel
zygote): read and identify the notebook, rebuild it from the lab's source, execute its cells in a
fresh sandboxed kernel, and judge every test cell in the worker (see :mod:`autograder.judge`). A
problem that stops grading becomes the status ``failed: <reason>`` or ``timeout: <reason>`` —
never 0 points. The result is a record; :mod:`autograder.results` writes it. The lab's data view
comes from :mod:`autograder.data`, the GPU plan from :mod:`autograder.slots`.
"""
from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import nbformat
from nbformat import NotebookNode
from nbformat.v4 import new_output

from . import audit, course, data, notebook, slots
from .errors import SubmissionFailure
from .judge import judge_test
from .kernel import KernelSession, Limits, claim_fresh_uid, gpu_devices, readonly_paths, slot_env
from .sandbox import PRELOAD, Zygote, ZygoteClient, die_with_parent
from .scratch import base as _scratch_base
from .scratch import uid_lock_dir


@dataclass
class Options:
    """How to grade (``None`` limits take the lab's budget from its notebook metadata)."""

    device: str = "cpu"
    workers: int = 1
    level: str = "namespaces"
    results: Path | None = None          # default: <root>/results
    timeout_s: float | None = None
    cell_timeout_s: float | None = None
    memory_mb: int | None = None
    output_mb: float = 4
    gpus: list[str] = field(default_factory=list)
    gpu_memory_mb: int | None = None     # each kernel's GPU memory cap on CUDA (see autograder.slots)


@dataclass
class Job:
    """One hand-in to grade: its notebook, or the ``problem`` intake found instead."""

    lab: str
    student: str
    origin: str
    notebook: str | None
    problem: str | None = None


@dataclass
class LabPack:
    """What a worker needs of a lab (picklable): its notebooks and settings, the files released beside
    it, its cell ids, and what the grader prepared for its kernels and judge."""

    name: str
    source: dict
    blank: dict
    settings: dict
    files: dict[str, str]
    ids: set[str]
    env: dict[str, str] = field(default_factory=dict)      # kernel environment of the lab's data view
    readonly: list[str] = field(default_factory=list)      # paths bound read-only into its kernels
    heldout_seed: int | None = None                        # the course's held-out seed (judge side only)


@dataclass
class Worker:
    """A worker process's state, passed to :func:`grade_job`: its slot (GPU index), the options,
    the course root, every lab's cell ids and the kernel zygote's client."""

    slot: int
    options: Options
    root: Path
    ids: dict[str, set[str]]
    zygote: ZygoteClient


# ---------------------------------------------------------------------------- the device
def resolve_device(device: str) -> tuple[str, list[str]]:
    """``auto`` → cuda when a GPU is present, else cpu; returns the device and the GPU ids
    (``$CUDA_VISIBLE_DEVICES`` if set, else those ``nvidia-smi`` lists)."""
    gpus = [g.id for g in slots.inventory()]
    device = device.split(":")[0]
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    if device == "cuda" and not gpus:
        raise RuntimeError("--device cuda, but nvidia-smi lists no GPU")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or auto, not {device!r}")
    return device, gpus


# ---------------------------------------------------------------------------- one submission
def judge_imports(modules: list[str]) -> list[str]:
    """Import here, in the judge, what the labs preload in kernels: their tests use the same libraries
    (torchmetrics, sklearn, ...), so a submission's first test does not pay for the import. Returns
    the modules that failed to import (a kernel reports its own failure)."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 — a missing optional library is the lab's problem, not the worker's
            failed.append(name)
    return failed


def lab_limits(settings: dict, options: Options) -> Limits:
    """The lab's budget from its metadata, overridden by the command line."""
    base = Limits()
    def pick(opt: Any, key: str, default: Any) -> Any:
        return opt if opt is not None else settings.get(key, default)

    return Limits(timeout_s=float(pick(options.timeout_s, "timeout_s", base.timeout_s)),
                  cell_timeout_s=float(pick(options.cell_timeout_s, "cell_timeout_s", base.cell_timeout_s)),
                  memory_mb=int(pick(options.memory_mb, "memory_mb", base.memory_mb)),
                  output_mb=options.output_mb, answer_mb=float(settings.get("answer_mb", base.answer_mb)))


def _report(outcome_passed: bool, points: float, max_points: float, message: str, printed: str) -> NotebookNode:
    mark = "✔ passed" if outcome_passed else "✘ failed"
    text = (printed if printed.endswith("\n") or not printed else printed + "\n") + \
        f"{mark} — {points:g} / {max_points:g} points" + ("" if outcome_passed else f"\n{message}") + "\n"
    return new_output("stream", name="stdout", text=text)


def _maxima(pack: LabPack) -> dict[str, float]:
    """The lab's autograded and hand-graded maxima."""
    cells = nbformat.from_dict(pack.source).cells
    return {"max_score": sum(float(notebook.nbgrader_meta(c).get("points", 0)) for c in cells if notebook.is_test(c)),
            "manual_max": sum(float(notebook.nbgrader_meta(c).get("points", 0)) for c in cells
                              if notebook.is_manual(c))}


def grade_job(job: Job, pack: LabPack, worker: Worker) -> dict[str, Any]:
    """Grade one hand-in with ``worker``; return its result record."""
    started = time.monotonic()
    result: dict[str, Any] = {"student": job.student, "lab": job.lab, "origin": job.origin,
                              "device": worker.options.device, "isolation": worker.options.level, "notes": [],
                              "tests": [], "score": None, **_maxima(pack)}
    graded: NotebookNode | None = None
    try:
        if job.problem or not job.notebook:
            raise SubmissionFailure("failed", job.problem or "no notebook")
        path = Path(job.notebook)
        result["notebook"] = path.name
        student = notebook.read_notebook(path)
        notebook.identify(student, job.lab, {**worker.ids, job.lab: pack.ids}, path.name)
        graded, result["notes"] = notebook.rebuild(student, nbformat.from_dict(pack.source),
                                                   nbformat.from_dict(pack.blank))
        _run_in_kernel(job, pack, worker, path, graded, result)
        result["status"] = "graded"
        result["score"] = sum(t["points"] for t in result["tests"])
        findings = audit.scan(audit.notebook_cells(graded, notebook.is_test))
        if findings:  # kept for the instructor, not final: `dlmi-grader review LAB STUDENT --accept|--reject`
            hold_for_review(result, findings)
    except SubmissionFailure as failure:
        result["status"] = f"{failure.status}: {failure.reason}"
    result["runtime_s"] = round(time.monotonic() - started, 2)
    if graded is not None:
        result["_notebook"] = nbformat.writes(graded)
    return result


def _run_in_kernel(job: Job, pack: LabPack, worker: Worker, path: Path, graded: NotebookNode,
                   result: dict[str, Any]) -> None:
    """Start a fresh sandboxed kernel under a user id of its own, install the lab's audits and bans,
    then run ``graded`` (:func:`_execute`)."""
    options = worker.options
    env = {**slot_env(worker.slot, options.device, options.gpus, options.gpu_memory_mb), **pack.env}
    workdir = Path(tempfile.mkdtemp(prefix=f"run{os.getppid()}-g{worker.slot}-", dir=_scratch_base()))
    files = {f"{job.lab}.ipynb": path, **{k: Path(v) for k, v in pack.files.items()}}
    # a user id of its own, never used before in this run: nothing a hand-in leaves reaches the next
    uid, uid_lock = claim_fresh_uid(uid_lock_dir(), Path(_scratch_base()) / "uids-used")
    result["uid"] = uid
    with uid_lock, KernelSession(workdir, worker.zygote, uid=uid, limits=lab_limits(pack.settings, options),
                                 level=options.level, env=env, ro=readonly_paths(pack.readonly, worker.root),
                                 devices=gpu_devices() if options.device == "cuda" else [],
                                 files=files) as session:
        t0 = time.monotonic()
        session.start()
        result["timing"] = {"start_s": round(time.monotonic() - t0, 2)}
        session.run_bridge_source()
        if pack.settings.get("audit_data"):
            session.execute("__import__('sys').modules['__dlmi_bridge__'].install_data_audit()",
                            "the grader's set-up", store_history=False, bridge_call=True)
        bans = lab_bans(pack.settings)
        for rule in bans:  # before the first cell of the notebook, for the whole run
            if not rule.get("tests"):
                _kernel_ban(session, rule, scoped=False)
        context = {"device": env["DLMI_DEVICE"], "settings": pack.settings, "bans": bans,
                   "ban_messages": {rule["message"] for rule in bans},
                   "providers": data.providers(pack.settings, pack.env.get("DLMI_DATA"), pack.heldout_seed)}
        _execute(session, graded, result, context)


def _execute(session: KernelSession, nb: NotebookNode, result: dict[str, Any], context: dict[str, Any]) -> None:
    """Run the rebuilt notebook: code cells in the kernel, test cells in the judge."""
    count = 0
    shared: dict[str, Any] = {}
    result.setdefault("timing", {}).update(cells_s=0.0, tests_s=0.0)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        where = f"cell {index + 1}"
        if notebook.is_test(cell):
            meta = notebook.nbgrader_meta(cell)
            max_points = float(meta.get("points", 0))
            t0 = time.monotonic()
            session.run_bridge_source()
            scoped = [rule for rule in context.get("bans", []) if meta["grade_id"] in rule.get("tests", [])]
            for rule in scoped:
                _kernel_ban(session, rule, scoped=True)
            outcome = judge_test(session, cell.source, hidden=notebook.has_hidden(cell), context=context,
                                 shared=shared)
            if scoped:
                session.run_bridge_source()
                session.execute("__import__('sys').modules['__dlmi_bridge__'].allow()", "the grader's set-up",
                                store_history=False, bridge_call=True)
            result["timing"]["tests_s"] = round(result["timing"]["tests_s"] + time.monotonic() - t0, 2)
            points = max_points if outcome.passed else 0.0
            cell.outputs = [_report(outcome.passed, points, max_points, outcome.message, outcome.printed)]
            result["tests"].append({"grade_id": meta["grade_id"], "points": points, "max_points": max_points,
                                    "passed": outcome.passed, "hidden": notebook.has_hidden(cell),
                                    "message": outcome.message, "detail": outcome.detail})
            continue
        count += 1
        t0 = time.monotonic()
        run = session.execute(cell.source, where)
        result["timing"]["cells_s"] = round(result["timing"]["cells_s"] + time.monotonic() - t0, 2)
        cell.outputs, cell.execution_count = run.outputs, count
        if run.error and session.extra_env.get("DLMI_GPU_MEMORY_MB") and \
                slots.is_gpu_memory_error(run.error["ename"], run.error["evalue"]):
            raise SubmissionFailure("failed", f"GPU memory limit: {where} needed more than this hand-in's "
                                    f"{session.extra_env['DLMI_GPU_MEMORY_MB']} MB of GPU memory (the lab's "
                                    "gpu_memory_mb; several hand-ins share a GPU)")
        if run.error and run.error["ename"] == "SystemExit":
            raise SubmissionFailure("failed", f"{where} called sys.exit() ({run.error['evalue'] or 'no code'}); "
                                    "a notebook must run to its end — remove the call")


def lab_bans(settings: dict) -> list[dict[str, Any]]:
    """The lab's bans (``metadata.dlmi.bans``): each ``{"message", "ops": [regex over torch operator
    names], "functions": [dotted paths], "modules": [module names], "tests": [grade ids]}``; without
    ``tests`` a ban holds from the kernel's first instruction for the whole run, with them only while
    those tests run."""
    bans = []
    for rule in settings.get("bans", []):
        if not isinstance(rule, dict) or not isinstance(rule.get("message"), str):
            raise ValueError(f"a ban in the lab's metadata needs a message: {rule!r}")
        bans.append({k: rule[k] for k in ("message", "ops", "functions", "modules", "tests") if k in rule})
    return bans


def _kernel_ban(session: KernelSession, rule: dict[str, Any], *, scoped: bool) -> None:
    code = (f"__import__('sys').modules['__dlmi_bridge__'].ban(__import__('json').loads({json.dumps(rule)!r}), "
            f"scoped={scoped})")
    run = session.execute(code, "the grader's set-up", store_history=False, bridge_call=True)
    if run.error:
        raise SubmissionFailure("failed", f"the grader could not install the lab's bans ({run.error['ename']}: "
                                f"{run.error['evalue'][:200]})")


def hold_for_review(result: dict[str, Any], findings: list[str]) -> None:
    """Put a graded hand-in into review: its score is kept under ``integrity`` and the published score
    stays empty until an instructor accepts (``dlmi-grader review``)."""
    summary = findings[0] + (f" (and {len(findings) - 1} more)" if len(findings) > 1 else "")
    result["integrity"] = {"state": "pending", "findings": findings, "score": result["score"]}
    result["status"] = f"review: tampering? {summary}"
    result["score"] = None
    note = "tampering? " + "; ".join(findings[:5])
    previous = result.get("review")
    result["review"] = f"{previous}; {note}" if previous else note


def decide_review(res: dict[str, Any], accept: bool, who: str = "") -> dict[str, Any]:
    """An instructor's decision on a hand-in in review: accepted → graded with its kept score;
    rejected → ``rejected: ...`` with an empty score."""
    integrity = res.get("integrity")
    if not isinstance(integrity, dict) or integrity.get("state") not in ("pending", "accepted", "rejected"):
        raise ValueError(f"{res.get('student')} is not in review (status {res.get('status')!r})")
    integrity["state"] = "accepted" if accept else "rejected"
    integrity["decided"] = time.strftime("%Y-%m-%dT%H:%M:%S%z") + (f" by {who}" if who else "")
    if accept:
        res["status"], res["score"] = "graded", integrity["score"]
    else:
        res["status"] = "rejected: " + (integrity.get("findings") or ["by the instructor"])[0]
        res["score"] = None
    res["review"] = (f"tampering? {integrity['state']} by the instructor: "
                     + "; ".join(integrity.get("findings", [])[:5]))
    return res


def failed_result(job: Job, pack: LabPack, status: str, options: Options | None = None) -> dict[str, Any]:
    """The result of a hand-in that could not be graded: the status, an empty score, the lab's maxima."""
    return {"student": job.student, "lab": job.lab, "origin": job.origin, "score": None, "tests": [], "notes": [],
            "status": status, "runtime_s": 0.0, "device": options.device if options else "",
            "isolation": options.level if options else "", **_maxima(pack)}


def pack_lab(lab: course.Lab, release: Path | None = None) -> LabPack:
    """Everything workers need of ``lab`` (blank notebook from ``release`` or a fresh one), its data
    view made ready (:func:`autograder.data.prepare_data`) and the course's held-out seed."""
    if release is None:
        blank = course.blank_notebook(lab)
    else:
        blank = nbformat.read(release / f"{lab.name}.ipynb", as_version=4)
    settings = lab.settings
    seed = data.heldout_seed(lab.root)
    env, readonly = data.prepare_data(settings, lab.root)
    return LabPack(lab.name, dict(lab.source), dict(blank), settings, {k: str(v) for k, v in lab.files().items()},
                   notebook.lab_ids(lab.source), env=env, readonly=readonly, heldout_seed=seed)


# ---------------------------------------------------------------------------- the pool of workers
_this_worker: Worker | None = None  # one per worker process, set by its initializer (multiprocessing's only way)


def _start_worker(slot_queue: Any, options: Options, root: str, preload: list[str], ids: dict[str, set[str]],
                  zygote_socket: str) -> None:
    """A worker process: its slot (GPU), the judge's imports and the shared kernel zygote's client."""
    global _this_worker
    die_with_parent()  # a grader killed mid-run leaves no worker behind (kernels follow the zygote)
    slot = slot_queue.get()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch  # noqa: F401 — the judge's references
    judge_imports(preload)
    _this_worker = Worker(slot, options, Path(root), ids, ZygoteClient(Path(zygote_socket)))


def _grade_here(job: Job, pack: LabPack) -> dict[str, Any]:
    """Grade ``job`` with this worker process's :class:`Worker`."""
    if _this_worker is None:
        raise RuntimeError("not a grading worker process (its initializer did not run)")
    return grade_job(job, pack, _this_worker)


def _warm() -> int:
    """A first task for each worker, so that the pool starts its processes now."""
    return os.getpid()


class Pool:
    """The kernel zygote and the worker processes, started at once so that their imports overlap
    the caller's preparation."""

    def __init__(self, options: Options, root: Path, labs: list[course.Lab], jobs: int) -> None:
        ctx = mp.get_context("spawn")
        self.options = options
        self._executable = _die_with_grader_launcher()  # before the first child: the resource tracker too
        slot_queue = ctx.Queue()
        self.workers = max(1, min(options.workers, jobs))
        for i in range(self.workers):
            slot_queue.put(i)
        preload = list(dict.fromkeys(m for lab in labs for m in lab.settings.get("preload", [])))
        base = Path(_scratch_base())
        if options.level == "uid":  # kernels run as other users on this file system: let them pass through
            os.chmod(base, 0o711)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base), "LANG": "C.UTF-8",
               **{k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "DLMI_")) or k == "PYTHONPATH"}}
        sock = base / f"zygote-{os.getpid()}.sock"
        self.zygote = Zygote([*PRELOAD, *preload], env, base / f"zygote-{os.getpid()}.log", sock)
        ids = {name: notebook.lab_ids(course.load_lab(name, root).source) for name in course.lab_names(root)}
        initargs = (slot_queue, options, str(root), preload, ids, str(sock))
        self._slots, self._grade = slot_queue, _grade_here
        self._make_executor = lambda: ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_start_worker,
                                                          initargs=initargs)
        self.executor = self._make_executor()
        self._warm = [self.executor.submit(_warm) for _ in range(self.workers)]

    def run(self, jobs: list[Job], packs: dict[str, LabPack],
            on_result: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
        """Grade ``jobs``; ``on_result`` sees each result as it lands. A hand-in intake refused needs no
        worker: its result is made here. A job whose worker fails is that hand-in's failure, never the run's."""
        results = []

        def land(res: dict[str, Any]) -> None:
            try:
                on_result(res)
            except Exception as err:  # noqa: BLE001 — saving one result must not lose the others
                print(f"could not record the result of {res.get('student')}: {type(err).__name__}: {err}",
                      file=sys.stderr, flush=True)
            results.append(res)

        for job in jobs:
            if job.problem or not job.notebook:
                land(failed_result(job, packs[job.lab], f"failed: {job.problem or 'no notebook'}", self.options))
        todo = [job for job in jobs if job.notebook and not job.problem]
        if not todo:
            return results
        self.zygote.wait_ready()
        self._grade_all(todo, packs, land)
        return results

    def _grade_all(self, todo: list[Job], packs: dict[str, LabPack], land: Callable[[dict[str, Any]], None]) -> None:
        """At most one job per worker in flight. A worker that dies (the pool breaks) costs no other
        hand-in: the jobs that were running are retried one at a time in a fresh pool, so the one that
        kills its worker again is identified and fails alone; the others are graded."""
        waiting, suspects = deque(todo), deque[Job]()
        running: dict[Any, tuple[Job, bool]] = {}
        graded = died_alone = 0
        while waiting or suspects or running:
            if died_alone >= 3 and not graded:  # every worker dies, whatever it grades: the grader is broken
                for job in [*suspects, *waiting]:
                    land(failed_result(job, packs[job.lab], "failed: grader error (its worker processes die at "
                                       "start; see the log)", self.options))
                return
            alone = bool(suspects)
            while (alone and suspects and not running) or (not alone and waiting and len(running) < self.workers):
                job = suspects.popleft() if alone else waiting.popleft()
                try:
                    running[self.executor.submit(self._grade, job, packs[job.lab])] = (job, alone)
                except BrokenProcessPool:  # a worker died while idle
                    (suspects if alone else waiting).appendleft(job)
                    break
            if not running:
                self._restart()
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                job, was_alone = running.pop(future)
                try:
                    res = future.result()
                except BrokenProcessPool:
                    broken = True
                    if was_alone:
                        died_alone += 1
                        land(failed_result(job, packs[job.lab], "failed: the grader's process died while grading "
                                           "this hand-in (it was retried alone); ask your instructor", self.options))
                    else:
                        suspects.append(job)
                    continue
                except Exception as err:  # noqa: BLE001 — a grader bug: this hand-in's failure, never a score
                    res = failed_result(job, packs[job.lab], f"failed: grader error ({type(err).__name__}) while "
                                        f"grading {notebook.display_name(job.origin)}", self.options)
                graded += 1
                land(res)
            if broken:
                for future, (job, _) in running.items():  # the rest of the broken pool: retried alone
                    if future.done() and not future.cancelled() and future.exception() is None:
                        land(future.result())
                    else:
                        suspects.append(job)
                running.clear()
                self._restart()

    def _restart(self) -> None:
        """A fresh pool after a worker died: the broken one is shut down, every slot handed out again."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        try:
            while True:
                self._slots.get_nowait()
        except queue.Empty:
            pass
        for i in range(self.workers):
            self._slots.put(i)
        self.executor = self._make_executor()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.executor.shutdown(cancel_futures=True)
            self.zygote.close()
        finally:
            if self._executable:
                mp.get_context("spawn").set_executable(sys.executable)


def _die_with_grader_launcher() -> str | None:
    """Make every process the pool spawns (workers and multiprocessing's resource tracker) die with
    the grader from its first instruction: a tiny launcher sets the parent-death signal (SIGKILL),
    checks that the grader is still its parent, then becomes this Python. Without it a grader killed
    while workers import (seconds) would leave them running. Linux only (elsewhere: None)."""
    if not sys.platform.startswith("linux"):
        return None
    import shlex
    path = Path(_scratch_base()) / "python-dies-with-grader"
    code = ("import ctypes, os, sys\n"
            "ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)\n"  # PR_SET_PDEATHSIG, SIGKILL
            f"os.getppid() == {os.getpid()} or os._exit(137)\n"
            "os.execv(sys.argv[1], sys.argv[1:])\n")
    path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -I -S -c {shlex.quote(code)} "
                    f"{shlex.quote(sys.executable)} \"$@\"\n")
    path.chmod(0o700)
    mp.get_context("spawn").set_executable(str(path))
    return str(path)
