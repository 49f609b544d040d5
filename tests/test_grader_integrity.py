"""Integrity suite: hostile, broken and odd hand-ins of lab02, graded in one parallel run.

Each case is a submission built from the reference solution; the whole class is graded by the
real command line (sandbox, limits, judge), and every case must come out as stated.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from autograder import sandbox

ROOT = Path(__file__).resolve().parents[1]
LAB = "lab02-convolution"
SOURCE = ROOT / "solutions" / LAB / f"{LAB}.ipynb"
FULL = 20.0  # autograded points of lab02
CONV2D_TESTS = ("test_conv2d", "test_conv2d_options", "test_conv2d_hidden", "test_conv2d_hidden_stride",
                "test_conv2d_hidden_padding", "test_conv2d_hidden_dilation", "test_conv2d_hidden_dtype")  # 8 points

pytestmark = pytest.mark.slow

WRONG_CONV = '''
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
    h = conv_output_size(x.shape[2], weight.shape[2], pair(stride)[0], pair(padding)[0], pair(dilation)[0])
    w = conv_output_size(x.shape[3], weight.shape[3], pair(stride)[1], pair(padding)[1], pair(dilation)[1])
    return x.new_zeros(x.shape[0], weight.shape[0], h, w)
'''
TAMPER = '''
import builtins, numpy as np, torch
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
torch.Tensor.__eq__ = lambda self, other: True
np.allclose = lambda *a, **k: True
np.array_equal = lambda *a, **k: True
np.testing.assert_allclose = lambda *a, **k: None
builtins.all = lambda *a, **k: True
builtins.AssertionError = type("AssertionError", (Exception,), {})
'''


def _source() -> nbformat.NotebookNode:
    return nbformat.read(SOURCE, as_version=4)


def _gid(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def _answer(nb, gid: str, code: str) -> None:
    for cell in nb.cells:
        if _gid(cell) == gid:
            cell.source = code
            return
    raise KeyError(gid)


def _insert_after(nb, gid: str, code: str) -> None:
    i = next(i for i, c in enumerate(nb.cells) if _gid(c) == gid)
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell(code))


def _tests(nb) -> list:
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"
            and not c.metadata["nbgrader"].get("solution")]


def build_cases(folder: Path) -> dict[str, dict]:
    """Write every hand-in into ``folder``; return what each must score."""
    src = _source()
    cases: dict[str, dict] = {}

    def put(name: str, nb, **expect) -> None:
        nbformat.write(nb, folder / f"{name}.ipynb")
        cases[name] = expect

    put("honest", copy.deepcopy(src), score=FULL)

    nb = copy.deepcopy(src)  # warnings and stderr, also from inside a graded function
    _insert_after(nb, "setup", "import sys, warnings\nprint('a harmless warning', file=sys.stderr)\n"
                  "warnings.warn('deprecated thing')")
    conv = next(c for c in nb.cells if _gid(c) == "conv_output_size")
    conv.source = conv.source.replace('    "Number', '    import sys; print("stderr from a graded function", '
                                      'file=sys.stderr)\n    "Number', 1)
    put("stderr_warnings", nb, score=FULL)

    nb = copy.deepcopy(src)  # a wrong conv2d plus every assertion helper patched
    _answer(nb, "conv2d", WRONG_CONV)
    _insert_after(nb, "setup", TAMPER)
    # patching library functions is tampering: held for review, the score (without the patches' help) kept
    put("monkeypatch", nb, status="review: tampering?", kept=FULL - 8)

    nb = copy.deepcopy(src)  # hooks that print every cell the kernel runs, trying to leak hidden tests
    _insert_after(nb, "setup", "ip = get_ipython()\n"
                  "ip.events.register('pre_run_cell', lambda info: print('CELL>>', info.raw_cell))\n"
                  "ip.events.register('post_run_cell', lambda r: print('IN>>', ip.user_ns.get('In', [])[-1:]))")
    put("hook_leak", nb, status="review: tampering?", kept=FULL, no_output=["BEGIN HIDDEN", "grader.forbid",
                                                                         "cases = {"], output_has="CELL>>")

    nb = copy.deepcopy(src)  # reads and writes it must not be able to do
    probe = f'''
import glob, os, socket
found = [p for p in [{str(ROOT / "solutions")!r}, {str(ROOT / "gradebook.db")!r}, {str(ROOT / "Makefile")!r},
                     {str(SOURCE)!r}, "/root/.bashrc", "SUBMISSIONS"] if os.path.exists(p)]
found += [p for p in glob.glob("/tmp/dlmi-grader*/*") if not os.getcwd().startswith(p + "/")]
found += [p for p in glob.glob("/tmp/**/*.ipynb", recursive=True) if not p.startswith(os.getcwd())]
for path in [{str(ROOT / "gradebook.db")!r}, {str(ROOT / "results" / "owned.txt")!r}, "/usr/owned.txt"]:
    try:
        open(path, "a").write("x")
        found.append("wrote " + path)
    except OSError:
        pass
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    found.append("network")
except OSError:
    pass
print("ESCAPES:", found, "uid", os.getuid())
'''
    _insert_after(nb, "setup", probe.replace("SUBMISSIONS", str(folder)))
    put("escape", nb, score=FULL, output_has="ESCAPES: [] uid")

    for name, code, status in [
        ("os_exit", "import os\nos._exit(3)", "failed: the kernel died"),
        ("segfault", "import ctypes\nctypes.string_at(0)", "failed: the kernel died"),
        ("sys_exit", "import sys\nsys.exit(0)", "failed: cell"),
        ("infinite_loop", "while True:\n    pass", "timeout"),
        ("swallow_interrupt", "import time\nwhile True:\n    try:\n        time.sleep(0.1)\n"
                              "    except KeyboardInterrupt:\n        pass", "timeout"),
        # on a crowded machine a bomb may reach the cell's time limit before the memory or process limit
        ("memory_bomb", "chunks = []\nwhile True:\n    chunks.append(b'x' * 50_000_000)",
         ("failed: memory limit", "timeout")),
        ("fork_bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
         ("failed: process limit", "timeout")),
        ("print_flood", "for _ in range(1000):\n    print('x' * 100_000)", "failed: output limit"),
    ]:
        nb = copy.deepcopy(src)
        _insert_after(nb, "zero_pad", code)
        put(name, nb, status=status)

    nb = copy.deepcopy(src)  # all tests deleted
    nb.cells = [c for c in nb.cells if c not in _tests(nb)]
    put("tests_deleted", nb, score=FULL)

    nb = copy.deepcopy(src)  # tests replaced by `pass` and worth 100 points each
    for cell in _tests(nb):
        cell.source, cell.metadata["nbgrader"]["points"] = "pass", 100
    put("tests_edited", nb, score=FULL)

    nb = copy.deepcopy(src)  # tests moved to the top, before anything is defined
    tests = _tests(nb)
    nb.cells = tests + [c for c in nb.cells if c not in tests]
    put("tests_reordered", nb, score=FULL)

    nb = copy.deepcopy(src)  # every grade_id renamed (answers keep their order)
    for cell in nb.cells:
        if _gid(cell):
            cell.metadata["nbgrader"]["grade_id"] = "renamed_" + _gid(cell)
    put("ids_renamed", nb, score=FULL)

    nb = copy.deepcopy(src)  # the torch function instead of one's own
    _answer(nb, "conv2d", "def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):\n"
                          "    return F.conv2d(x, weight, bias, stride, padding, dilation)")
    # banned for the whole run (lab metadata): the visible test fails too, with the ban's message
    put("uses_torch_conv", nb, score=FULL - 8, failed=set(CONV2D_TESTS), message_has="from scratch")

    blank = ROOT / "labs" / LAB / f"{LAB}.ipynb"
    nb = nbformat.read(blank, as_version=4)  # only part 1 answered
    _answer(nb, "conv_output_size", next(c.source for c in src.cells if _gid(c) == "conv_output_size"))
    put("partial", nb, score=3.0)

    (folder / "charlie").mkdir()  # a folder with a renamed notebook and a stray one
    nbformat.write(src, folder / "charlie" / f"{LAB} (1).ipynb")
    nbformat.write(nbformat.v4.new_notebook(), folder / "charlie" / "scratch.ipynb")
    cases["charlie"] = {"score": FULL}

    with zipfile.ZipFile(folder / "dave.zip", "w") as zf:  # a zip with the notebook in a sub-folder
        zf.writestr(f"handin/{LAB}.ipynb", nbformat.writes(src))
        zf.writestr("../evil.ipynb", "{}")
    cases["dave"] = {"score": FULL}

    repo = folder / f"{LAB}-erin"  # a GitHub Classroom repository
    (repo / ".git").mkdir(parents=True)
    (repo / "README.md").write_text("lab 2")
    nbformat.write(src, repo / f"{LAB}.ipynb")
    cases["erin"] = {"score": FULL}

    (folder / "invalid_json.ipynb").write_text('{"cells": [')
    cases["invalid_json"] = {"status": "failed: invalid_json.ipynb is not a notebook: invalid JSON"}
    (folder / "empty.ipynb").write_text("")
    cases["empty"] = {"status": "failed: empty.ipynb is empty"}
    (folder / "nbformat3.ipynb").write_text(json.dumps({"nbformat": 3, "nbformat_minor": 0, "metadata": {},
                                                        "worksheets": [{"cells": []}]}))
    cases["nbformat3"] = {"status": "failed: nbformat3.ipynb is an nbformat 3 notebook"}
    other = ROOT / "solutions" / "lab03-cnn-classifier" / "lab03-cnn-classifier.ipynb"
    if other.exists():
        nbformat.write(nbformat.read(other, as_version=4), folder / "other_lab.ipynb")
        cases["other_lab"] = {"status": "failed: other_lab.ipynb is the notebook of lab03-cnn-classifier"}
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")]), folder / "fresh.ipynb")
    cases["fresh"] = {"status": "failed: fresh.ipynb holds none of lab02-convolution's cells"}
    (folder / "report.pdf").write_bytes(b"%PDF-1.4")
    cases["report.pdf"] = {"status": "failed: report.pdf is neither a notebook"}
    return cases


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict], dict[str, dict], Path]:
    base = tmp_path_factory.mktemp("integrity")
    subs, results = base / "subs", base / "results"
    subs.mkdir()
    cases = build_cases(subs)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "autograder.cli", "grade", LAB, str(subs), "--results", str(results),
                          "--timeout", "60", "--cell-timeout", "10", "--memory", "2500", "--device", "cpu"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = {p.stem: json.loads(p.read_text()) for p in (results / LAB).glob("*.json")}
    return cases, out, results


def _case_ids() -> list[str]:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        return sorted(build_cases(Path(tmp)))


@functools.cache
def _default_level() -> str:
    """The level the grader picks here by itself: namespaces as root, none without root."""
    return sandbox.default_level()[0]


@pytest.mark.parametrize("name", _case_ids())
def test_case_graded_as_expected(graded: tuple[dict[str, dict], dict[str, dict], Path], name: str) -> None:
    cases, results, base = graded
    # a folder's, a zip's or a repository's hand-in is named with a short hash after its name
    student = next((s for s in results if s == name or s.startswith(f"{name}~")), name)
    assert student in results, f"no result for {name}; got {sorted(results)}"
    res, expect = results[student], cases[name]
    # root: every hand-in runs in the namespace sandbox, and the escape probe finds nothing. Without
    # root (or where a container refuses namespaces) the grader falls back to a weaker level and warns:
    # the same probe then reaches the course's files — stated here rather than skipped, so the
    # difference stays visible.
    level = _default_level()
    assert level == "none" or os.geteuid() == 0, level  # without root nothing stronger is allowed
    assert res.get("isolation") == level or "status" in expect, (res.get("isolation"), level)
    if name == "escape" and level != "namespaces":
        expect = {**expect, "output_has": f"ESCAPES: [{str(ROOT / 'solutions')!r}"}
    if "status" in expect:
        assert res["status"].startswith(expect["status"]), res["status"]  # a str or a tuple of prefixes
        assert res["score"] is None, "a failed submission must have no score, not 0"
        if "kept" not in expect:
            return
        assert res["integrity"]["score"] == expect["kept"], res["integrity"]  # held for review, score kept
    else:
        assert res["status"] == "graded", res["status"]
        assert res["score"] == expect["score"], [(t["grade_id"], t["message"]) for t in res["tests"]
                                                 if not t["passed"]]
    assert res["max_score"] == FULL
    if "failed" in expect:
        assert {t["grade_id"] for t in res["tests"] if not t["passed"]} == expect["failed"]
    if "message_has" in expect:
        assert any(expect["message_has"] in t["message"] for t in res["tests"] if not t["passed"])
    graded_nb = nbformat.read(base / res["autograded"], as_version=4)
    printed = "".join(o.get("text", "") + json.dumps(o.get("data", {})) + "".join(o.get("traceback", []))
                      for c in graded_nb.cells if c.cell_type == "code" for o in c.outputs)
    for text in expect.get("no_output", []):
        assert text not in printed, f"{text!r} reached the outputs of the graded notebook"
    if "output_has" in expect:
        assert expect["output_has"] in printed, "the probe's report is missing"


def test_class_csv_has_every_student_and_no_zero_for_failures(graded: tuple) -> None:
    cases, results, base = graded
    import csv
    with open(base / LAB / "grades.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["student"] for r in rows) == sorted(results)
    for row in rows:
        assert (row["score"] == "") == (row["status"] != "graded"), row


# ------------------------------------------------------------------------------ lab03 (CNN)
LAB3 = "lab03-cnn-classifier"


def build_cnn_cases(folder: Path) -> dict[str, dict]:
    """Short-training hand-ins of lab03 with one mistake each (EPOCHS is the student's to choose)."""
    src = nbformat.read(ROOT / "solutions" / LAB3 / f"{LAB3}.ipynb", as_version=4)

    def variant(name: str, answer: tuple[str, str, str] | None = None, train: tuple[str, str] | None = None) -> None:
        nb = copy.deepcopy(src)
        for cell in nb.cells:
            if cell.get("id") == "train":
                assert "EPOCHS, MIN_STEPS, LR, BATCH = 10, 600, 5e-3, 64" in cell.source
                cell.source = cell.source.replace("EPOCHS, MIN_STEPS, LR, BATCH = 10, 600, 5e-3, 64",
                                              "EPOCHS, MIN_STEPS, LR, BATCH = 1, 0, 5e-3, 64")
                if train:
                    cell.source = cell.source.replace(*train)
            if answer and _gid(cell) == answer[0]:
                assert answer[1] in cell.source
                cell.source = cell.source.replace(answer[1], answer[2])
        nbformat.write(nb, folder / f"{name}.ipynb")

    variant("test_split_for_selection", train=("model, history = fit(",
                                               'x_test, y_test = dlmi.load_medmnist_tensors(FLAG, "test")\n'
                                               "model, history = fit("))
    variant("best_state_not_copied", answer=("fit", "copy.deepcopy(model.state_dict())", "model.state_dict()"))
    return {"test_split_for_selection": {"failed": "test_model_hidden_acc", "message": "loads the test split",
                                         "passed": {"test_fit_hidden_history", "test_fit_hidden_best",
                                                    "test_train_one_epoch_hidden_loss",
                                                    "test_train_one_epoch_hidden_steps"}},
            "best_state_not_copied": {"failed": "test_fit_hidden_best", "message": "best validation AUC",
                                      "passed": {"test_evaluate_hidden_multiclass", "test_evaluate_hidden_binary",
                                                 "test_evaluate_hidden_eval_mode", "test_build_model_hidden"}}}


@pytest.fixture(scope="module")
def graded_cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict], dict[str, dict]]:
    base = tmp_path_factory.mktemp("integrity-cnn")
    subs = base / "subs"
    subs.mkdir()
    cases = build_cnn_cases(subs)
    run = subprocess.run([sys.executable, "-m", "autograder.cli", "grade", LAB3, str(subs), "--results",
                          str(base / "results"), "--device", "cpu"], cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return cases, {p.stem: json.loads(p.read_text()) for p in (base / "results" / LAB3).glob("*.json")}


@pytest.mark.parametrize("name", ["test_split_for_selection", "best_state_not_copied"])
def test_cnn_mistakes_cost_exactly_their_tests(graded_cnn: tuple, name: str) -> None:
    cases, results = graded_cnn
    res, expect = results[name], cases[name]
    assert res["status"] == "graded", res["status"]
    outcome = {t["grade_id"]: t for t in res["tests"]}
    assert not outcome[expect["failed"]]["passed"]
    assert expect["message"] in outcome[expect["failed"]]["message"]
    assert all(outcome[g]["passed"] for g in expect["passed"]), \
        {g: outcome[g]["message"] for g in expect["passed"] if not outcome[g]["passed"]}
