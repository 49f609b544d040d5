"""Partial credit: deliberately wrong hand-ins score exactly the points listed for them.

``tests/credit/<lab>.yml`` is a list of realistic mistakes, each a hand-in built from the solution
with some answer cells replaced::

    - name: off-by-one-output-size        # a short slug
      why: conv_output_size forgets the +1
      answers: {conv_output_size: "def conv_output_size(...): ..."}   # answer cell grade_id -> source
      points: {test_conv_output_size: 0}  # test cell grade_id -> points; unlisted test cells: full points

All of a lab's hand-ins are graded in one class run through the real command line (sandbox,
limits, judge), and every test cell of every hand-in must give the points listed.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml

from autograder import notebook

ROOT = Path(__file__).resolve().parents[1]
CREDIT = ROOT / "tests" / "credit"
LABS = sorted(p.stem for p in CREDIT.glob("*.yml"))
CASE_KEYS = {"name", "why", "answers", "points"}


def _solution(lab: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "solutions" / lab / f"{lab}.ipynb", as_version=4)


def _cases(lab: str) -> list[dict[str, Any]]:
    """The lab's cases, checked against its notebook: clear errors for a misspelt cell or key."""
    cases = yaml.safe_load((CREDIT / f"{lab}.yml").read_text()) or []
    where = f"tests/credit/{lab}.yml"
    assert isinstance(cases, list) and cases, f"{where}: expected a list of cases"
    nb = _solution(lab)
    answers = {notebook.grade_id(c) for c in nb.cells if notebook.is_answer(c) and c.cell_type == "code"}
    tests = {notebook.grade_id(c): float(notebook.nbgrader_meta(c)["points"]) for c in nb.cells if notebook.is_test(c)}
    names = [case.get("name") for case in cases]
    assert len(set(names)) == len(names), f"{where}: case names repeat: {names}"
    for case in cases:
        label = f"{where}, case {case.get('name')!r}"
        assert set(case) == CASE_KEYS, f"{label}: keys must be {sorted(CASE_KEYS)}, got {sorted(case)}"
        assert case["answers"], f"{label}: replaces no answer cell"
        unknown = set(case["answers"]) - answers
        assert not unknown, f"{label}: {sorted(unknown)} are not answer cells of {lab} (these are: {sorted(answers)})"
        for gid, points in (case["points"] or {}).items():
            assert gid in tests, f"{label}: {gid!r} is not a test cell of {lab} (these are: {sorted(tests)})"
            assert 0 <= points <= tests[gid], f"{label}: {gid} is worth {tests[gid]}, not {points}"
    return cases


def _expected(lab: str, case: dict[str, Any]) -> dict[str, float]:
    """Points of every test cell of the lab for this hand-in."""
    nb = _solution(lab)
    full = {notebook.grade_id(c): float(notebook.nbgrader_meta(c)["points"]) for c in nb.cells if notebook.is_test(c)}
    return {**full, **{gid: float(p) for gid, p in (case["points"] or {}).items()}}


def build(lab: str, folder: Path) -> list[dict[str, Any]]:
    """Write one hand-in per case into ``folder`` (``<name>.ipynb``); return the cases."""
    source = _solution(lab)
    cases = _cases(lab)
    for case in cases:
        nb = copy.deepcopy(source)
        for cell in nb.cells:
            if notebook.grade_id(cell) in case["answers"]:
                cell.source = case["answers"][notebook.grade_id(cell)]
        nbformat.write(nb, folder / f"{case['name']}.ipynb")
    return cases


@pytest.mark.parametrize("lab", LABS)
def test_credit_file_names_real_cells(lab: str) -> None:
    """Fast: every case names answer and test cells that exist, with possible points."""
    assert [c["name"] for c in _cases(lab)]


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory):
    """``graded(lab)``: the results of the lab's hand-ins, graded once per lab in one class run."""
    done: dict[str, dict[str, dict]] = {}

    def grade(lab: str) -> dict[str, dict]:
        if lab not in done:
            base = tmp_path_factory.mktemp(f"credit-{lab}")
            (base / "subs").mkdir()
            build(lab, base / "subs")
            run = subprocess.run([sys.executable, "-m", "autograder.cli", "grade", lab, str(base / "subs"),
                                  "--results", str(base / "results"), "--device", "cpu"], cwd=ROOT,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                                 timeout=900)
            assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
            done[lab] = {p.stem: json.loads(p.read_text()) for p in (base / "results" / lab).glob("*.json")}
        return done[lab]

    return grade


def _ids() -> list[tuple[str, str]]:
    return [(lab, case["name"]) for lab in LABS for case in yaml.safe_load((CREDIT / f"{lab}.yml").read_text())]


@pytest.mark.slow
@pytest.mark.parametrize(("lab", "name"), _ids())
def test_wrong_hand_in_scores_the_listed_points(graded, lab: str, name: str) -> None:
    results = graded(lab)
    assert name in results, f"no result for {name}; got {sorted(results)}"
    res = results[name]
    assert res["status"] == "graded", res["status"]
    case = next(c for c in _cases(lab) if c["name"] == name)
    got = {t["grade_id"]: t["points"] for t in res["tests"]}
    want = _expected(lab, case)
    wrong = {gid: (got.get(gid), want[gid]) for gid in want if got.get(gid) != want[gid]}
    messages = {t["grade_id"]: t["message"][:300] for t in res["tests"] if t["grade_id"] in wrong}
    assert not wrong, f"{lab} / {name} ({case['why']}): test cell: (got, listed) {wrong}; messages: {messages}"
    assert res["score"] == sum(want.values())
