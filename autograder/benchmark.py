"""Throughput of the course grader against plain ``nbgrader autograde`` on the same machine.

For each lab, K copies of the reference solution are graded twice:

* **ours** — ``dlmi-grader grade`` (sandboxed kernels forked from a preloaded zygote, judge in
  the grader, limits on, one worker per core or GPU);
* **plain** — a throw-away nbgrader course with the same source notebook, ``nbgrader
  autograde`` (one kernel after the other, tests in the student's kernel, no isolation). Its
  notebooks get one extra first cell that gives the hidden tests the same ``grader`` helpers
  inside the kernel (from :mod:`autograder.bridge` and :mod:`autograder.data`), so both run the
  same checks (``grader.forbid`` is a no-op there: inside one kernel it would also trap the
  test's own reference implementation). Its per-cell timeout is raised to 600 s so that
  training cells can finish. A ratio needs full marks from ours on every copy and every test
  cell run to the end by plain nbgrader (which scores 0 for a test whose code printed a
  warning to stderr, so its own marks can be lower).

Both wall times include start-up. Prints submissions/minute, the ratio and the machine's load
average (other work on the machine slows both, the parallel grader more); ``--json`` saves them.
Usage: ``python autograder/benchmark.py [--labs LAB ...] [-k K] [--workers N] [--device cpu]``.

**GPU mode** (``--per-gpu 1 2 4 8``, ``make bench-gpu``): ours only, K copies graded once for each
number of kernels per GPU (``--workers`` = that × the GPUs), printing hand-ins per minute, the
GPU plan the grader chose by itself for comparison, and whether every copy got full marks (a
kernel over its GPU memory cap fails alone, and shows up here as fewer full marks).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from autograder import course, data, slots  # noqa: E402
from autograder import results as store  # noqa: E402

SHIM = '''# benchmark only: the grader's helpers and the judge's imports inside the kernel, for plain nbgrader
import contextlib as _contextlib
from autograder import bridge as _bridge, data as _data
from autograder.judge import PREAMBLE as _PREAMBLE
exec(_PREAMBLE)
_bridge.install_data_audit()


class _InKernelGrader:
    def __init__(self, settings, device):
        self.device = device
        self.__dict__.update(_data.providers(settings, DATA_MODE))

    def kernel(self, path):
        return _bridge._resolve({"import": path}, get_ipython().user_ns)

    def run(self, code):
        exec(code, get_ipython().user_ns)

    def forbid(self, *paths, message=""):
        # a no-op here: in one kernel the trap would also catch the test's own reference (F.conv2d)
        return _contextlib.nullcontext()

    @_contextlib.contextmanager
    def forbid_split(self, split, message):
        _bridge.forbid_split(split, message)
        try:
            yield
        finally:
            _bridge.allow()

    def data_loads(self):
        return list(_bridge.data_loads)


grader = _InKernelGrader(SETTINGS, DEVICE)
'''


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_ours(lab: course.Lab, k: int, tmp: Path, workers: int | None, device: str) -> dict:
    subs = tmp / "ours-subs"
    subs.mkdir()
    for i in range(k):
        shutil.copy(lab.folder / f"{lab.name}.ipynb", subs / f"s{i:02d}.ipynb")
    cmd = [sys.executable, "-m", "autograder.cli", "--root", str(lab.root), "grade", lab.name, str(subs),
           "--results", str(tmp / "ours"), "--device", device] + (["--workers", str(workers)] if workers else [])
    start = time.monotonic()
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    wall = time.monotonic() - start
    if out.returncode:
        raise RuntimeError(f"dlmi-grader failed:\n{out.stderr[-3000:]}")
    results = store.load_results(tmp / "ours", lab.name)
    full = sum(1 for r in results if r["status"] == "graded" and r["score"] == r["max_score"])
    return {"wall_s": wall, "full_marks": full, "per_submission_s": statistics.median(r["runtime_s"] for r in results)}


def run_plain(lab: course.Lab, k: int, tmp: Path, device: str) -> dict:
    plain = tmp / "plain"
    (plain / "source" / lab.name).mkdir(parents=True)
    for name, path in lab.files().items():
        shutil.copy(path, plain / "source" / lab.name / name)
    nb = nbformat.read(lab.folder / f"{lab.name}.ipynb", as_version=4)
    env, _ = data.prepare_data(lab.settings)
    shim = SHIM.replace("SETTINGS", repr(lab.settings)).replace("DATA_MODE", repr(env.get("DLMI_DATA"))) \
        .replace("DEVICE", repr(device))
    nb.cells.insert(0, nbformat.v4.new_code_cell(shim))
    nbformat.write(nb, plain / "source" / lab.name / f"{lab.name}.ipynb")
    (plain / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.CourseDirectory.root = {str(plain)!r}\nc.ExecutePreprocessor.timeout = 600\n")
    run_env = {**_env(), "DLMI_DEVICE": device, **env}
    subprocess.run(["nbgrader", "generate_assignment", lab.name, "--create", "--force"], cwd=plain, env=run_env,
                   capture_output=True, check=True)
    for i in range(k):
        target = plain / "submitted" / f"s{i:02d}" / lab.name
        target.mkdir(parents=True)
        shutil.copy(plain / "source" / lab.name / f"{lab.name}.ipynb", target / f"{lab.name}.ipynb")
    start = time.monotonic()
    out = subprocess.run(["nbgrader", "autograde", lab.name], cwd=plain, env=run_env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if out.returncode:
        raise RuntimeError(f"nbgrader autograde failed:\n{out.stderr[-3000:]}")
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{plain / 'gradebook.db'}") as gb:
        subs = gb.assignment_submissions(lab.name)
        full = sum(1 for s in subs if s.score == s.max_score - sum(
            c.max_score for c in gb.find_notebook(lab.name, lab.name).grade_cells if c.cell_type == "markdown"))
    # the same work: every test cell ran to the end (nbgrader also fails a test that wrote to stderr)
    done = sum(not any(o.get("output_type") == "error" for c in nbformat.read(p, as_version=4).cells
                       if c.cell_type == "code" for o in c.get("outputs", []))
               for p in (plain / "autograded").glob(f"*/{lab.name}/{lab.name}.ipynb"))
    return {"wall_s": wall, "full_marks": full, "completed": done}


def gpu_sweep(lab: course.Lab, k: int, per_gpu: list[int], gpus: int, device: str,
              run: Callable[..., dict] = run_ours) -> list[dict]:
    """Grade ``k`` copies once per entry of ``per_gpu`` (kernels per GPU); one row each."""
    rows = []
    for n in per_gpu:
        with tempfile.TemporaryDirectory(prefix="dlmi-bench-") as tmp:
            ours = run(lab, k, Path(tmp), n * max(gpus, 1), device)
        rows.append({"lab": lab.name, "k": k, "device": device, "per_gpu": n, "workers": n * max(gpus, 1),
                     "gpus": gpus, "wall_s": ours["wall_s"], "per_min": 60 * k / ours["wall_s"],
                     "full_marks": ours["full_marks"], "per_submission_s": ours["per_submission_s"],
                     "load_average": os.getloadavg()[0], "cores": os.cpu_count()})
    return rows


def sweep_table(rows: list[dict]) -> str:
    lines = ["| lab | K | device | GPUs | kernels/GPU | workers | wall s | hand-ins/min | full marks | "
             "median s/hand-in | load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['lab']} | {r['k']} | {r['device']} | {r['gpus']} | {r['per_gpu']} | {r['workers']} | "
              f"{r['wall_s']:.1f} | {r['per_min']:.1f} | {r['full_marks']}/{r['k']} | {r['per_submission_s']:.1f} | "
              f"{r['load_average']:.1f} |" for r in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labs", nargs="+", default=["lab02-convolution", "lab03-cnn-classifier"])
    ap.add_argument("-k", type=int, default=6, help="copies of each solution (default 6)")
    ap.add_argument("--workers", type=int, help="our workers (default: cores; on CUDA the grader's GPU plan)")
    ap.add_argument("--device", default=os.environ.get("DLMI_DEVICE") or "cpu")
    ap.add_argument("--per-gpu", type=int, nargs="+", metavar="N",
                    help="GPU mode: hand-ins per minute of ours alone for N kernels per GPU (e.g. 1 2 4 8); "
                    "on --device cpu, N workers")
    ap.add_argument("--json", help="also write the numbers to this file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    course.nbgrader_ready()
    if args.per_gpu:
        gpus = len(slots.inventory()) if args.device == "cuda" else 0
        if args.device == "cuda":
            plan = slots.plan_for_labs([course.load_lab(n, ROOT).settings for n in args.labs])
            print(f"the grader's own plan here: {plan.describe()}", flush=True)
        rows = []
        for name in args.labs:
            rows += gpu_sweep(course.load_lab(name, ROOT), args.k, args.per_gpu, gpus, args.device)
            print(sweep_table(rows[-len(args.per_gpu):]), flush=True)
        print("\n" + sweep_table(rows))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return
    rows = []
    for name in args.labs:
        lab = course.load_lab(name, ROOT)
        with tempfile.TemporaryDirectory(prefix="dlmi-bench-") as tmp:
            ours = run_ours(lab, args.k, Path(tmp), args.workers, args.device)
            plain = run_plain(lab, args.k, Path(tmp), args.device)
        if ours["full_marks"] != args.k or plain["completed"] != args.k:
            raise SystemExit(f"{name}: dlmi-grader gave full marks to {ours['full_marks']} and plain nbgrader ran "
                             f"every test of {plain['completed']} of {args.k} copies of the solution, so the two "
                             "did not do the same work: no ratio")
        row = {"lab": name, "k": args.k, "device": args.device, "ours": ours, "plain": plain,
               "ours_per_min": 60 * args.k / ours["wall_s"], "plain_per_min": 60 * args.k / plain["wall_s"],
               "load_average": os.getloadavg()[0], "cores": os.cpu_count()}
        row["ratio"] = row["ours_per_min"] / row["plain_per_min"]
        rows.append(row)
        print(f"{name}: ours {ours['wall_s']:.1f} s ({row['ours_per_min']:.1f}/min, {ours['full_marks']}/{args.k} "
              f"full marks, median {ours['per_submission_s']:.1f} s per hand-in) | plain nbgrader "
              f"{plain['wall_s']:.1f} s ({row['plain_per_min']:.1f}/min, {plain['full_marks']}/{args.k} full marks"
              f"{'' if plain['full_marks'] == args.k else ': it fails a test that printed a warning to stderr'}) | "
              f"ratio {row['ratio']:.2f}x (load average {row['load_average']:.1f} on {row['cores']} cores: other "
              "work on the machine lowers both, ours more)", flush=True)
    print("\n| lab | K | device | ours s | ours /min | plain s | plain /min | ratio | load |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['lab']} | {r['k']} | {r['device']} | {r['ours']['wall_s']:.1f} | {r['ours_per_min']:.1f} | "
              f"{r['plain']['wall_s']:.1f} | {r['plain_per_min']:.1f} | {r['ratio']:.2f}x | {r['load_average']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
