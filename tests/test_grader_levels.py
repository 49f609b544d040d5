"""The weaker sandbox levels (for machines or containers that refuse namespaces) still grade right."""
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
pytestmark = pytest.mark.slow


def test_probe_accepts_what_this_machine_allows() -> None:
    level, refused = sandbox.default_level()
    assert level in sandbox.LEVELS
    assert sandbox.probe("none") is None
    assert len(refused) == sandbox.LEVELS.index(level)
    if os.geteuid() != 0:
        assert level == "none" and "needs root" in refused[0]


def _grade(tmp_path: Path, level: str) -> tuple[subprocess.CompletedProcess, dict]:
    subs = tmp_path / "subs"
    subs.mkdir()
    shutil.copy(ROOT / "solutions" / LAB / f"{LAB}.ipynb", subs / "ann.ipynb")
    run = subprocess.run([sys.executable, "-m", "autograder.cli", "grade", LAB, str(subs), "--results",
                          str(tmp_path / "res"), "--isolation", level, "--workers", "1", "--device", "cpu"], cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"isolation level {level!r}" in run.stderr  # it says that the sandbox is weaker
    return run, json.loads((tmp_path / "res" / LAB / "ann.json").read_text())


@pytest.mark.parametrize("level", ["uid", "none"])
def test_weaker_levels_grade_the_solution_or_say_why_not(tmp_path: Path, level: str) -> None:
    """Where the level works, the solution gets full marks under it. Where it cannot work
    (``uid`` when Python lives under /root, mode 700, which another user cannot read), the
    probe names the reason, and a grader forced to that level reports each hand-in as
    ``failed: …`` with the kernel's own error and an empty score, never 0."""
    problem = sandbox.probe(level)
    _, res = _grade(tmp_path, level)
    assert res["isolation"] == level
    if problem is None:
        assert (res["status"], res["score"]) == ("graded", 20.0)
    else:
        assert level != "none"
        assert "sandbox: the kernel failed:" in problem, problem
        assert res["status"].startswith("failed: the kernel died while starting"), res["status"]
        assert "kernel log: sandbox: the kernel failed:" in res["status"] and res["score"] is None
        with open(tmp_path / "res" / LAB / "grades.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [(r["student"], r["score"], r["status"]) for r in rows] == [("ann", "", res["status"])]
