"""How many hand-ins to grade at once on a machine: GPU inventory and the per-GPU slot plan.

A small lab needs a few hundred MB of a GPU that has 80–141 GB, so on CUDA the grader runs
several kernels per GPU. :func:`plan` takes the GPUs' free memory, the lab's declared GPU memory
budget (``gpu_memory_mb`` in its ``dlmi`` notebook metadata, else :data:`DEFAULT_BUDGET_MB`), the
CPU cores and the host memory, and returns how many kernels share each GPU and the cap on each
kernel's GPU memory. The cap is applied inside the kernel before any student code runs
(``torch.cuda.set_per_process_memory_fraction``); a hand-in that needs more fails alone with
``failed: GPU memory limit …`` and cannot take memory from its neighbours.

Everything here is plain arithmetic on an inventory, so it is tested on CPU with made-up GPUs.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from collections.abc import Callable

DEFAULT_BUDGET_MB = 4096   # GPU memory of a kernel whose lab declares no gpu_memory_mb
CONTEXT_MB = 600           # per kernel outside the cap: the CUDA context, cuDNN/cuBLAS handles
RESERVE_MB = 1024          # left free on every GPU (driver, other users, fragmentation)
MIN_CAP_MB = 256           # below this a kernel cannot do useful work: plan fewer kernels
MAX_PER_GPU = 32           # beyond this the GPU's scheduler, not memory, is the limit
HOST_OVERHEAD_MB = 1024    # host memory of one grading worker (its judge) besides the kernel


@dataclass
class GPU:
    """One GPU as ``CUDA_VISIBLE_DEVICES`` names it, with its memory in MiB (None: unknown)."""

    id: str
    name: str = "GPU"
    total_mb: int | None = None
    free_mb: int | None = None


@dataclass
class Plan:
    """What the grader will run: ``workers`` kernels, slot ``i`` on ``gpus[i % len(gpus)]``."""

    workers: int
    per_gpu: int
    gpus: list[str]
    gpu_memory_mb: int | None          # cap of each kernel (None: none, the GPU's memory is unknown)
    limited_by: str                    # what set the number: memory, cpu, host memory, --workers, ...
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        cap = "no GPU memory cap (memory unknown)" if self.gpu_memory_mb is None else \
            f"each capped at {self.gpu_memory_mb} MB of GPU memory"
        return (f"{self.per_gpu} kernel(s) per GPU on {len(self.gpus)} GPU(s) = {self.workers} worker(s), {cap} "
                f"(set by {self.limited_by})")


def _query(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout


def inventory(visible: str | None = None, query: Callable[[list[str]], str] | None = None) -> list[GPU]:
    """The GPUs the grader may use, with their memory as ``nvidia-smi`` reports it.

    ``visible`` (default ``$CUDA_VISIBLE_DEVICES``) selects and orders them by index or UUID, as
    CUDA does; a name nvidia-smi does not list (a MIG instance, a container without nvidia-smi)
    is kept with unknown memory."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    wanted = None if visible is None else [g.strip() for g in visible.split(",") if g.strip()]
    if wanted is not None and (not wanted or wanted[0] == "-1"):
        return []
    if query is None:
        if shutil.which("nvidia-smi") is None:
            return [GPU(g) for g in wanted or []]
        query = _query
    listed: list[GPU] = []
    uuids: dict[str, GPU] = {}
    out = query(["nvidia-smi", "--query-gpu=index,uuid,name,memory.total,memory.free",
                 "--format=csv,noheader,nounits"])
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5 or not parts[0].isdigit():
            continue
        index, uuid, name, total, free = parts
        gpu = GPU(index, name, int(total) if total.isdigit() else None, int(free) if free.isdigit() else None)
        listed.append(gpu)
        uuids[uuid] = gpu
    if wanted is None:
        return listed
    by_index = {g.id: g for g in listed}
    picked = []
    for name in wanted:
        known = by_index.get(name) or uuids.get(name)
        picked.append(GPU(name, known.name, known.total_mb, known.free_mb) if known else GPU(name))
    return picked


def lab_budget_mb(settings: list[dict]) -> int:
    """The largest GPU memory budget the labs declare (``gpu_memory_mb``), else the default."""
    declared = [int(s["gpu_memory_mb"]) for s in settings if s.get("gpu_memory_mb")]
    return max(declared) if declared else DEFAULT_BUDGET_MB


def plan(gpus: list[GPU], budget_mb: int, cpus: int, workers: int | None = None, host_mb: int | None = None,
         kernel_host_mb: int = 0) -> Plan:
    """Kernels per GPU and each one's GPU memory cap.

    Without ``workers``: as many kernels per GPU as fit the GPU with the least free memory at
    ``budget_mb`` each (plus :data:`CONTEXT_MB`, with :data:`RESERVE_MB` left free), no more than
    the CPU cores allow (one core per kernel), nor the host memory (``host_mb`` over the lab's host
    budget ``kernel_host_mb`` plus a worker's own), nor :data:`MAX_PER_GPU`; at least one.
    ``workers`` overrides the count; the cap then shrinks if that many kernels would not fit.
    """
    if not gpus:
        raise ValueError("no GPU to plan for")
    n = len(gpus)
    ids = [g.id for g in gpus]
    free = [g.free_mb for g in gpus]
    known = all(f is not None for f in free)
    usable = min(free) - RESERVE_MB if known else None  # type: ignore[type-var,operator]
    limits: dict[str, int] = {"CPU cores": max(1, cpus // n), "the per-GPU maximum": MAX_PER_GPU}
    if usable is not None:
        limits["GPU memory"] = max(1, usable // (budget_mb + CONTEXT_MB))
    else:
        limits["unknown GPU memory"] = 1
    if host_mb:
        limits["host memory"] = max(1, host_mb // (kernel_host_mb + HOST_OVERHEAD_MB) // n)
    notes = []
    if workers:
        total, per_gpu, limited_by = workers, math.ceil(workers / n), "--workers"
    else:
        limited_by = min(limits, key=lambda k: limits[k])
        per_gpu = limits[limited_by]
        total = per_gpu * n
    if usable is None:
        return Plan(total, per_gpu, ids, None, limited_by,
                    ["nvidia-smi reports no free memory for these GPUs: kernels run without a GPU memory cap"])
    share = usable // per_gpu - CONTEXT_MB
    cap = min(budget_mb, share)
    if cap < budget_mb:
        notes.append(f"{per_gpu} kernels per GPU leave each {max(cap, 0)} MB of GPU memory, less than the lab's "
                     f"budget of {budget_mb} MB")
    if cap < MIN_CAP_MB:
        notes.append(f"that is below {MIN_CAP_MB} MB: expect hand-ins to fail with 'GPU memory limit'")
        cap = max(cap, 64)
    return Plan(total, per_gpu, ids, int(cap), limited_by, notes)


def host_memory_mb() -> int | None:
    """Available host memory in MiB (None if unknown)."""
    try:
        import psutil
        return int(psutil.virtual_memory().available >> 20)
    except Exception:  # noqa: BLE001 — planning goes on without it
        return None


def kernel_env(cap_mb: int | None) -> dict[str, str]:
    """The variable a kernel reads to cap its GPU memory (see :func:`apply_cap`)."""
    return {} if cap_mb is None else {"DLMI_GPU_MEMORY_MB": str(int(cap_mb))}


GPU_LIMIT_EXCEPTIONS = ("OutOfMemoryError", "torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError")


def is_gpu_memory_error(ename: str | None, evalue: str | None = "") -> bool:
    """Whether a kernel error is CUDA running out of (capped) memory."""
    return bool(ename) and (ename in GPU_LIMIT_EXCEPTIONS or (ename == "RuntimeError" and
                                                              "CUDA out of memory" in (evalue or "")))


def plan_for_labs(settings: list[dict], workers: int | None = None, gpus: list[GPU] | None = None,
                  cpus: int | None = None) -> Plan:
    """Kernels per GPU for grading these labs on CUDA and each kernel's GPU memory cap (from the
    GPUs' free memory, the labs' ``gpu_memory_mb``, CPU cores and host memory); ``workers`` overrides."""
    return plan(inventory() if gpus is None else gpus, lab_budget_mb(settings), cpus or os.cpu_count() or 1,
                workers, host_memory_mb(), max([int(s.get("memory_mb", 0)) for s in settings] or [0]))

