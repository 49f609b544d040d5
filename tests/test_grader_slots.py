"""Many hand-ins per GPU: the slot plan from made-up GPU inventories (no GPU needed), the per-kernel
GPU memory cap, and a hand-in over its cap reported as ``failed: GPU memory limit …``."""
from __future__ import annotations

import argparse
import sys
import types

import nbformat
import pytest

from autograder import cli, grade, sandbox, slots
from autograder.kernel import ExecResult, SubmissionFailure, slot_env

SMI = """0, GPU-aaaa, NVIDIA H200, 143771, 143000
1, GPU-bbbb, NVIDIA H200, 143771, 20000
"""


def fake_query(text: str):
    calls = []

    def query(cmd: list[str]) -> str:
        calls.append(cmd)
        return text
    query.calls = calls  # type: ignore[attr-defined]
    return query


def h200(n: int = 1, free: int = 143000) -> list[slots.GPU]:
    return [slots.GPU(str(i), "NVIDIA H200", 143771, free) for i in range(n)]


# ------------------------------------------------------------------------------ inventory
def test_inventory_reads_nvidia_smi_and_follows_cuda_visible_devices() -> None:
    everything = slots.inventory(visible="0,1", query=fake_query(SMI))
    assert [(g.id, g.total_mb, g.free_mb) for g in everything] == [("0", 143771, 143000), ("1", 143771, 20000)]
    # CUDA_VISIBLE_DEVICES picks and orders by index or UUID, and keeps the name it was given
    assert [(g.id, g.free_mb) for g in slots.inventory(visible="GPU-bbbb", query=fake_query(SMI))] == \
        [("GPU-bbbb", 20000)]
    assert [g.id for g in slots.inventory(visible="1,0", query=fake_query(SMI))] == ["1", "0"]
    # a MIG instance or an unknown name: kept, memory unknown
    assert [(g.id, g.free_mb) for g in slots.inventory(visible="MIG-x", query=fake_query(SMI))] == [("MIG-x", None)]
    assert slots.inventory(visible="", query=fake_query(SMI)) == []
    assert slots.inventory(visible="-1", query=fake_query(SMI)) == []


def test_inventory_without_a_visible_list_takes_every_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [g.id for g in slots.inventory(query=fake_query(SMI))] == ["0", "1"]
    assert slots.inventory(query=fake_query("")) == []


# ------------------------------------------------------------------------------ plan
def test_small_lab_on_an_h200_is_limited_by_cores_not_memory() -> None:
    plan = slots.plan(h200(), budget_mb=800, cpus=16)
    assert (plan.workers, plan.per_gpu, plan.gpu_memory_mb, plan.limited_by) == (16, 16, 800, "CPU cores")
    assert plan.notes == []
    assert "16 kernel(s) per GPU" in plan.describe() and "800 MB" in plan.describe()


def test_big_budget_is_limited_by_the_gpus_free_memory() -> None:
    # 16 GB free: (16384 - 1024) // (4096 + 600) = 3 kernels of 4 GB each
    plan = slots.plan([slots.GPU("0", "T4", 16384, 16384)], budget_mb=4096, cpus=32)
    assert (plan.per_gpu, plan.gpu_memory_mb, plan.limited_by) == (3, 4096, "GPU memory")
    assert plan.per_gpu * (plan.gpu_memory_mb + slots.CONTEXT_MB) <= 16384 - slots.RESERVE_MB


def test_the_fullest_gpu_sets_the_count_for_all() -> None:
    gpus = slots.inventory(visible="0,1", query=fake_query(SMI))  # GPU 1 has 20 GB free
    plan = slots.plan(gpus, budget_mb=4096, cpus=64)
    assert plan.per_gpu == (20000 - 1024) // 4696 == 4 and plan.workers == 8
    # slot i runs on GPU i % 2: four kernels each, every one capped
    envs = [slot_env(i, "cuda", plan.gpus, plan.gpu_memory_mb) for i in range(plan.workers)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs].count("0") == 4
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs].count("1") == 4
    assert {e["DLMI_GPU_MEMORY_MB"] for e in envs} == {"4096"} and {e["DLMI_DEVICE"] for e in envs} == {"cuda"}


def test_host_memory_and_the_per_gpu_maximum_also_limit() -> None:
    plan = slots.plan(h200(), budget_mb=500, cpus=256, host_mb=32 * 1024, kernel_host_mb=3072)
    assert (plan.per_gpu, plan.limited_by) == (8, "host memory")  # 32 GiB // (3 + 1 GiB)
    plan = slots.plan(h200(), budget_mb=100, cpus=256)
    assert (plan.per_gpu, plan.limited_by) == (slots.MAX_PER_GPU, "the per-GPU maximum")


def test_workers_override_and_shrink_the_cap_when_they_do_not_fit() -> None:
    plan = slots.plan(h200(free=20000), budget_mb=4096, cpus=16, workers=2)
    assert (plan.workers, plan.per_gpu, plan.gpu_memory_mb, plan.limited_by) == (2, 2, 4096, "--workers")
    plan = slots.plan(h200(free=20000), budget_mb=4096, cpus=16, workers=8)
    assert plan.per_gpu == 8 and plan.gpu_memory_mb == (20000 - 1024) // 8 - slots.CONTEXT_MB
    assert plan.gpu_memory_mb < 4096 and "less than the lab's budget of 4096 MB" in plan.notes[0]
    plan = slots.plan(h200(free=4000), budget_mb=4096, cpus=16, workers=16)
    assert plan.gpu_memory_mb == 64 and "GPU memory limit" in plan.notes[-1]
    # several GPUs: the workers are spread, the busiest GPU gets ceil(workers / GPUs)
    assert slots.plan(h200(3), budget_mb=1000, cpus=16, workers=7).per_gpu == 3


def test_unknown_memory_means_one_kernel_per_gpu_and_no_cap() -> None:
    plan = slots.plan([slots.GPU("0"), slots.GPU("1")], budget_mb=1000, cpus=16)
    assert (plan.workers, plan.per_gpu, plan.gpu_memory_mb) == (2, 1, None)
    assert "DLMI_GPU_MEMORY_MB" not in slot_env(0, "cuda", plan.gpus, plan.gpu_memory_mb)
    with pytest.raises(ValueError):
        slots.plan([], budget_mb=1000, cpus=4)


def test_the_labs_declared_budget_is_used() -> None:
    assert slots.lab_budget_mb([{}, {"memory_mb": 4096}]) == slots.DEFAULT_BUDGET_MB
    assert slots.lab_budget_mb([{"gpu_memory_mb": 700}, {"gpu_memory_mb": 1500}, {}]) == 1500
    plan = slots.plan_for_labs([{"gpu_memory_mb": 700}], gpus=h200(), cpus=4)
    assert (plan.per_gpu, plan.gpu_memory_mb) == (4, 700)


def _args(**kw) -> argparse.Namespace:
    base = dict(device="cuda", workers=None, isolation="none", results=None, timeout=None, cell_timeout=None,
                memory=None, output_mb=4)
    return argparse.Namespace(**{**base, **kw})


def test_cli_plans_several_kernels_per_gpu_and_workers_still_override(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(slots, "inventory", lambda *a, **k: h200(2))
    monkeypatch.setattr(slots, "host_memory_mb", lambda: 1 << 20)
    monkeypatch.setattr(grade.os, "cpu_count", lambda: 16)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    options = cli._options(_args(), [{"gpu_memory_mb": 900, "memory_mb": 3072}])
    assert (options.device, options.gpus, options.workers, options.gpu_memory_mb) == ("cuda", ["0", "1"], 16, 900)
    assert "GPU plan: 8 kernel(s) per GPU on 2 GPU(s) = 16 worker(s)" in capsys.readouterr().err
    options = cli._options(_args(workers=3), [{"gpu_memory_mb": 900}])
    assert (options.workers, options.gpu_memory_mb) == (3, 900)
    options = cli._options(_args(device="cpu", workers=None), [{"gpu_memory_mb": 900}])
    assert options.gpu_memory_mb is None and options.gpus == ["0", "1"] and options.device == "cpu"


# ------------------------------------------------------------------------------ the cap in the kernel
def test_kernel_caps_its_gpu_memory_before_student_code(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    cuda = types.SimpleNamespace(is_available=lambda: True,
                                 get_device_properties=lambda i: types.SimpleNamespace(total_memory=80 * 2**30),
                                 set_per_process_memory_fraction=lambda f, d: calls.append((f, d)))
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert sandbox.cap_gpu_memory("8192") == pytest.approx(0.1) and calls == [(pytest.approx(0.1), 0)]
    assert sandbox.cap_gpu_memory("") is None and len(calls) == 1          # no cap asked for
    cuda.is_available = lambda: False
    assert sandbox.cap_gpu_memory("8192") is None and len(calls) == 1      # no GPU: nothing to cap


class _FakeSession:
    """Just enough of KernelSession for grade._execute: every code cell raises ``error``."""

    def __init__(self, error: dict | None, env: dict[str, str]) -> None:
        self.error, self.extra_env = error, env

    def execute(self, code: str, where: str, **_: object) -> ExecResult:
        return ExecResult(outputs=[], error=self.error)


OOM = {"ename": "OutOfMemoryError", "evalue": "CUDA out of memory. Tried to allocate 2.00 GiB", "traceback": []}


def test_a_hand_in_over_its_gpu_cap_fails_with_gpu_memory_limit() -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = torch.empty(2**29, device='cuda')")])
    with pytest.raises(SubmissionFailure) as caught:
        grade._execute(_FakeSession(OOM, {"DLMI_GPU_MEMORY_MB": "900"}), nb, {"tests": []}, {})
    assert str(caught.value).startswith("failed: GPU memory limit: cell 1 needed more than this hand-in's 900 MB")
    # without a cap (CPU, or an uncapped GPU) an out-of-memory error is the student's error, graded as such
    grade._execute(_FakeSession(OOM, {}), nb, {"tests": []}, {})
    assert slots.is_gpu_memory_error("RuntimeError", "CUDA out of memory. Tried to allocate 20 MiB")
    assert not slots.is_gpu_memory_error("MemoryError", "") and not slots.is_gpu_memory_error(None)


# ------------------------------------------------------------------------------ make bench-gpu
def test_bench_gpu_mode_sweeps_kernels_per_gpu() -> None:
    """The sweep's arithmetic and table with a stand-in for the grader run (the real one needs a GPU;
    on CPU ``--per-gpu N`` means N workers)."""
    from autograder import benchmark

    args = benchmark.parse_args(["--device", "cuda", "--labs", "lab03-cnn-classifier", "-k", "8",
                                 "--per-gpu", "1", "2", "4"])
    assert (args.device, args.labs, args.k, args.per_gpu) == ("cuda", ["lab03-cnn-classifier"], 8, [1, 2, 4])
    assert benchmark.parse_args([]).per_gpu is None  # the plain comparison with nbgrader stays the default
    seen = []

    def fake_run(lab, k, tmp, workers, device):
        seen.append((workers, device, tmp.is_dir()))
        return {"wall_s": 120.0 / workers, "full_marks": k, "per_submission_s": 5.0}

    lab = types.SimpleNamespace(name="lab03-cnn-classifier")
    rows = benchmark.gpu_sweep(lab, 8, [1, 2, 4], gpus=2, device="cuda", run=fake_run)
    assert seen == [(2, "cuda", True), (4, "cuda", True), (8, "cuda", True)]
    assert [(r["per_gpu"], r["workers"], r["per_min"]) for r in rows] == [(1, 2, 8.0), (2, 4, 16.0), (4, 8, 32.0)]
    table = benchmark.sweep_table(rows)
    assert "| kernels/GPU |" in table and "| lab03-cnn-classifier | 8 | cuda | 2 | 4 | 8 | 15.0 | 32.0 | 8/8 |" in table
    cpu = benchmark.gpu_sweep(lab, 4, [1, 2], gpus=0, device="cpu", run=fake_run)
    assert [r["workers"] for r in cpu] == [1, 2]
