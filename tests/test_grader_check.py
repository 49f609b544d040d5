"""`dlmi-grader check --all`: every solution scores full marks, every blank scores 0 and grades
without a failure, labs/ equals a fresh release and leaks nothing (the Makefile's `make check`)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autograder import course

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_check_passes_for_every_lab() -> None:
    run = subprocess.run([sys.executable, "-m", "autograder.cli", "check", "--all", "--device", "cpu"], cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "check: all labs OK" in run.stdout
    for lab in course.lab_names(ROOT):
        lines = [line for line in run.stdout.splitlines() if line.startswith(lab + " ")]
        assert len(lines) == 2, f"{lab}: expected a solution and a blank line, got {lines}"
        solution = next(line for line in lines if " solution " in line)
        blank = next(line for line in lines if " blank " in line)
        got, full = solution.split()[3].split("/")
        assert got == full, solution
        assert blank.split()[3].startswith("0/"), blank
