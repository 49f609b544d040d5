"""Sandbox levels at each privilege: what root gets, what an unprivileged user gets, and that both
grade right and say which level they used.

`.ci/run` runs this file twice: as root (the normal ``make test``) and as an unprivileged user
(GitHub's ``runner``, a shared university server). Every test states what it expects at both
privileges; none is skipped for lack of root.

* root: ``namespaces`` and ``uid`` are allowed; ``uid`` may still fail its probe where Python lives
  in a folder other users cannot enter (this machine: under /root, mode 700), and then says so;
* not root: ``namespaces`` and ``uid`` are refused with the reason "needs root on Linux"; grading
  falls back to ``none`` (limits only) and warns which levels it refused; forcing a refused level
  stops the command before anything is graded.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autograder import sandbox

ROOT = Path(__file__).resolve().parents[1]
LAB = "lab02-convolution"
ROOT_USER = os.geteuid() == 0 and sys.platform.startswith("linux")
pytestmark = pytest.mark.slow


def _grade(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    subs = tmp_path / "subs"
    subs.mkdir()
    shutil.copy(ROOT / "solutions" / LAB / f"{LAB}.ipynb", subs / "ann.ipynb")
    run = subprocess.run([sys.executable, "-m", "autograder.cli", "grade", LAB, str(subs), "--results",
                          str(tmp_path / "res"), "--workers", "1", "--device", "cpu", *flags], cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    result = tmp_path / "res" / LAB / "ann.json"
    return run, json.loads(result.read_text()) if result.exists() else None


def test_privilege_decides_the_levels() -> None:
    """root: no level is refused for privilege, the probe picks the strongest that starts. Not root:
    both strong levels are refused as needing root, and the default is ``none``."""
    level, refused = sandbox.default_level()
    assert sandbox.probe("none") is None and sandbox.privilege_problem("none") is None
    assert level in sandbox.LEVELS and len(refused) == sandbox.LEVELS.index(level)
    if ROOT_USER:
        assert sandbox.privilege_problem("uid") is None and sandbox.privilege_problem("namespaces") is None
        assert not any("needs root" in r for r in refused), refused
    else:
        for strong in ("namespaces", "uid"):
            assert sandbox.privilege_problem(strong) == f"needs root on Linux (this grader runs as uid {os.geteuid()})"
            assert sandbox.probe(strong) == sandbox.privilege_problem(strong)
        assert level == "none"
        assert refused == [f"namespaces: {sandbox.privilege_problem('namespaces')}",
                           f"uid: {sandbox.privilege_problem('uid')}"]


def test_uid_level_grades_the_solution_or_says_why_not(tmp_path: Path) -> None:
    """root, where the sandbox user can read Python: full marks under ``uid``. root, where it cannot
    (Python under /root, mode 700): the probe names the kernel's error and a grader forced to ``uid``
    reports each hand-in as ``failed: …`` with that error and an empty score, never 0. Not root:
    ``--isolation uid`` is refused before anything is graded, naming the reason."""
    problem = sandbox.probe("uid")
    run, res = _grade(tmp_path, "--isolation", "uid")
    if not ROOT_USER:
        assert run.returncode != 0 and res is None
        assert "--isolation uid is refused: needs root on Linux" in run.stderr, run.stderr[-2000:]
        return
    assert run.returncode == 0, run.stderr[-3000:]
    assert "isolation level 'uid'" in run.stderr  # it says that the sandbox is weaker
    assert res is not None and res["isolation"] == "uid"
    if problem is None:
        assert (res["status"], res["score"]) == ("graded", 20.0)
        return
    assert "sandbox: the kernel failed:" in problem, problem
    assert res["status"].startswith("failed: the kernel died while starting"), res["status"]
    assert "kernel log: sandbox: the kernel failed:" in res["status"] and res["score"] is None
    with open(tmp_path / "res" / LAB / "grades.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["student"], r["score"], r["status"]) for r in rows] == [("ann", "", res["status"])]


def test_namespaces_level_is_refused_without_root(tmp_path: Path) -> None:
    """Not root: ``--isolation namespaces`` stops with the reason. root: nothing refuses it for
    privilege (the integrity suite grades a whole class inside it and tries to escape)."""
    if ROOT_USER:
        assert sandbox.privilege_problem("namespaces") is None
        return
    run, res = _grade(tmp_path, "--isolation", "namespaces")
    assert run.returncode != 0 and res is None
    assert "--isolation namespaces is refused: needs root on Linux" in run.stderr, run.stderr[-2000:]


def test_level_none_grades_and_warns_at_every_privilege(tmp_path: Path) -> None:
    """The weakest level grades the solution fully and says that student code runs with the
    grader's rights. root asks for it explicitly; without root it is what the grader falls back to
    by itself, naming each refused level and why."""
    run, res = _grade(tmp_path, *(["--isolation", "none"] if ROOT_USER else []))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "isolation level 'none'" in run.stderr and "runs with your rights" in run.stderr
    if not ROOT_USER:
        assert "refused namespaces: needs root on Linux" in run.stderr, run.stderr[-2000:]
        assert "refused uid: needs root on Linux" in run.stderr
    assert res is not None and res["isolation"] == "none"
    assert (res["status"], res["score"]) == ("graded", 20.0), res["status"]


def test_ci_runs_the_grader_tests_at_both_privileges() -> None:
    """GitHub: `make test` as the unprivileged `runner`, then the grader tests as root with `sudo -E`.
    `.ci/run` (root): `make test`, then the same grader tests as an unprivileged user."""
    import yaml

    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    runs = [str(step.get("run", "")).strip() for job in ci["jobs"].values() for step in job["steps"]]
    assert "make test" in runs
    assert any(r.startswith("sudo -E ") and r.endswith("make test-grader") for r in runs[runs.index("make test"):])
    dry_run = subprocess.run(["make", "-n", "test-grader"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    for path in sorted((ROOT / "tests").glob("test_grader_*.py")):
        assert f"tests/{path.name}" in dry_run, f"make test-grader leaves out {path.name}"
    code = "\n".join(line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    assert code.index("make test\n") < code.index("make test-grader") and "setpriv --reuid" in code
