"""Intake never costs the class: every hand-in found gets exactly one row, whatever it holds.

Fast (no kernel): hostile and fuzzed hand-ins through :func:`autograder.intake.collect` and the
worker's own reading steps (read, identify, rebuild), identities, the choice between several
notebooks, CSV neutralisation, merge. Slow: one grading run over a small hostile folder, read back
from its CSV, and the grader killed while its pool starts (no process may survive it)."""
from __future__ import annotations

import copy
import csv
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import psutil
import pytest

from autograder import cli, course, grade, intake, notebook, safehtml
from autograder import results as store
from autograder.kernel import SubmissionFailure
import contextlib

ROOT = Path(__file__).resolve().parents[1]
LAB = "lab02-convolution"


@pytest.fixture(scope="module")
def lab() -> course.Lab:
    return course.load_lab(LAB, ROOT)


@pytest.fixture(scope="module")
def blank() -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "labs" / LAB / f"{LAB}.ipynb", as_version=4)


def _zip(members: dict[str, str | bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _corrupt_deflate(text: str) -> bytes:
    """A zip whose headers are fine but whose deflate stream is garbage (zlib.error on reading)."""
    raw = bytearray(_zip({f"{LAB}.ipynb": text}))
    start = 30 + len(f"{LAB}.ipynb")                 # local header + name: the compressed data follows
    for i in range(start + 2, start + 200):
        raw[i] ^= 0x5A
    return bytes(raw)


def _one_bad_member(text: str) -> bytes:
    """A zip with a corrupt member first and the lab's notebook, intact, after it."""
    raw = bytearray(_zip({"aa/broken.ipynb": text, f"zz/{LAB}.ipynb": text}))
    start = 30 + len("aa/broken.ipynb")
    for i in range(start + 2, start + 200):
        raw[i] ^= 0x5A
    return bytes(raw)


def _bad_utf8_name() -> bytes:
    """A zip member flagged UTF-8 (bit 11) whose name bytes are not UTF-8."""
    raw = _zip({"\u00e9\u00e9.ipynb": "{}"})          # non-ASCII: zipfile sets the UTF-8 flag
    return raw.replace("\u00e9\u00e9".encode(), b"\xff\xfe\xff\xfe")


def _declared_huge() -> bytes:
    """A zip whose central directory declares a 3 GB notebook."""
    raw = bytearray(_zip({f"{LAB}.ipynb": "{}"}))
    cd = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 24, 3_000_000_000)
    return bytes(raw)


def _encrypted_flag(text: str) -> bytes:
    raw = bytearray(_zip({f"{LAB}.ipynb": text}))
    raw[6] |= 1                                        # local header: encrypted
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 8] |= 1                                   # central directory: encrypted
    return bytes(raw)


def _with_cell(nb: dict, **fields) -> str:
    nb = copy.deepcopy(nb)
    nb["cells"][0].update(fields)
    return json.dumps(nb)


def hostile_folder(folder: Path, lab: course.Lab, blank: nbformat.NotebookNode, light: bool = False) -> dict[str, str]:
    """Write hostile hand-ins; return {entry name: the start of the problem expected, or "" to grade}.
    ``light``: only ``ok.IPYNB`` and ``one-bad-member.zip`` hold a gradable notebook (fewer kernels)."""
    solution, empty = nbformat.writes(lab.source), json.loads(nbformat.writes(blank))
    full = solution
    if light:
        solution = json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []})
    folder.mkdir(parents=True, exist_ok=True)
    expect: dict[str, str] = {}

    def put(name: str, data: str | bytes, problem: str) -> None:
        (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())
        expect[name] = problem

    put("ok.IPYNB", full, "")
    put("zipped.ZIP", _zip({f"sub/{LAB}.ipynb": solution}), "")
    put("deflate.zip", _corrupt_deflate(full), "deflate.zip holds no .ipynb notebook that could be unpacked")
    put("badname.zip", _bad_utf8_name(), "badname.zip is not a readable zip archive (a file name")
    put("huge.zip", _declared_huge(), "huge.zip unpacks to more than")
    put("locked.zip", _encrypted_flag(full), "locked.zip holds no .ipynb notebook that could be unpacked")
    put("truncated.zip", _zip({f"{LAB}.ipynb": full})[:300], "truncated.zip is not a readable zip archive")
    put("noise.zip", random.Random(1).randbytes(3000), "noise.zip is not a readable zip archive")
    put("empty.zip", _zip({}), "empty.zip holds no .ipynb notebook")
    put("one-bad-member.zip", _one_bad_member(full), "")
    put("noise.ipynb", random.Random(2).randbytes(5000), "")        # refused later, by the reader
    with open(folder / "sparse.ipynb", "wb") as fh:                      # 65 MB that take no disk: refused by size
        fh.truncate(65 << 20)
    expect["sparse.ipynb"] = ""
    put("deep.ipynb", "[" * 200_000 + "]" * 200_000, "")
    put("bignum.ipynb", '{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [], "n": 1'
        + "7" * 5000 + "}", "")
    put("intid.ipynb", _with_cell(empty, id=7), "")
    put("listmeta.ipynb", _with_cell(empty, metadata=[1, 2]), "")
    put("intsource.ipynb", _with_cell(empty, source=12), "")
    put("=HYPERLINK(\"http x\").ipynb", solution, "")
    put("@SUM(1+1).ipynb", "{}", "")
    put("-2+3.ipynb", "{}", "")
    put("\tTab.ipynb", "{}", "")
    put("report.pdf", b"%PDF-1.4", "report.pdf is neither a notebook")
    put(".hidden_student.ipynb", solution, ".hidden_student.ipynb is a hidden file")
    (folder / "link.ipynb").symlink_to(folder / "ok.IPYNB")
    expect["link.ipynb"] = "link.ipynb is a symbolic link"
    (folder / "dangling.zip").symlink_to(folder / "nowhere")
    expect["dangling.zip"] = "dangling.zip is a symbolic link"
    os.mkfifo(folder / "pipe.ipynb")
    expect["pipe.ipynb"] = "pipe.ipynb is neither a notebook"
    bad = os.fsencode(folder) + b"/caf\xe9.ipynb"            # a file name that is not UTF-8
    with open(bad, "wb") as fh:
        fh.write(solution.encode())
    expect[os.fsdecode(b"caf\xe9.ipynb")] = ""
    (folder / "deepdir").mkdir()
    (folder / "deepdir" / f"{LAB}.ipynb").write_text("[" * 100_000 + "]" * 100_000)
    expect["deepdir"] = ""
    put("deepzip.zip", _zip({f"{LAB}.ipynb": "[" * 100_000 + "]" * 100_000}), "")
    put("mixed.zip", _zip({f"x/{LAB}.ipynb": solution, "y/other.ipynb": "{}"}), "")
    (folder / "emptydir").mkdir()
    expect["emptydir"] = "emptydir/ holds no .ipynb notebook"
    (folder / "hiddenonly").mkdir()
    (folder / "hiddenonly" / f".{LAB}.ipynb").write_text(full)
    (folder / "hiddenonly" / "link.ipynb").symlink_to(folder / "ok.IPYNB")
    expect["hiddenonly"] = (f"hiddenonly/ holds no .ipynb notebook (left out '.{LAB}.ipynb' (a hidden file); "
                            "left out 'link.ipynb' (a symbolic link))")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")        # litter: skipped, and said so
    return expect


def _prepare(sub: intake.Submission, lab: course.Lab, blank) -> str:
    """What a worker does before a kernel starts; a hand-in may only fail with a reason."""
    if sub.problem:
        return f"failed: {sub.problem}"
    try:
        nb = notebook.read_notebook(sub.notebook)
        notebook.identify(nb, LAB, {LAB: notebook.lab_ids(lab.source)}, sub.notebook.name)
        rebuilt, _ = notebook.rebuild(nb, lab.source, blank)
        safehtml.sanitize_notebook(json.loads(nbformat.writes(rebuilt)))   # what save_result stores
    except SubmissionFailure as failure:
        return f"{failure.status}: {failure.reason}"
    return "ready"


def test_every_hostile_hand_in_gets_exactly_one_row(tmp_path: Path, lab: course.Lab, blank) -> None:
    subs_dir, scratch = tmp_path / "subs", tmp_path / "scratch"
    scratch.mkdir()
    expect = hostile_folder(subs_dir, lab, blank)
    heard: list[str] = []
    subs = intake.collect(subs_dir, LAB, notebook.lab_ids(lab.source), scratch,
                          intake.blank_answers(dict(blank)), log=heard.append)
    by_origin = {s.origin: s for s in subs}
    assert len(subs) == len(expect) == len(by_origin), sorted(set(by_origin) ^ {notebook.display_name(e)
                                                                                 for e in expect})
    assert len({s.student for s in subs}) == len(subs), "two hand-ins share an id"
    assert any(".DS_Store" in line for line in heard)
    for name, problem in expect.items():
        sub = by_origin[notebook.display_name(name)]
        status = _prepare(sub, lab, blank)
        text = f"{sub.problem or ''} {status}"
        assert str(tmp_path) not in text and "/tmp" not in text, text
        if problem:
            assert sub.problem and sub.problem.startswith(problem), (name, sub.problem)
        assert status == "ready" or status.startswith("failed: "), (name, status)
    outcome = {name: _prepare(by_origin[notebook.display_name(name)], lab, blank) for name in expect}
    assert outcome["ok.IPYNB"] == outcome["zipped.ZIP"] == outcome["=HYPERLINK(\"http x\").ipynb"] == "ready"
    assert outcome[os.fsdecode(b"caf\xe9.ipynb")] == "ready"
    assert outcome["mixed.zip"] == outcome["one-bad-member.zip"] == "ready"
    assert any("broken.ipynb" in n and "corrupt" in n for n in by_origin["one-bad-member.zip"].notes)
    assert "nested too deeply" in outcome["deep.ipynb"] and "nested too deeply" in outcome["deepdir"]
    assert "nested too deeply" in outcome["deepzip.zip"]
    assert "number longer than" in outcome["bignum.ipynb"]
    assert outcome["sparse.ipynb"] == "failed: sparse.ipynb is larger than 64 MB"
    assert "a cell whose id is not text" in outcome["intid.ipynb"]
    assert "metadata is not an object" in outcome["listmeta.ipynb"]
    assert "source is not text" in outcome["intsource.ipynb"]
    assert "deflate.zip" in outcome["deflate.zip"] and "corrupt" in outcome["deflate.zip"]
    assert "encrypted" in outcome["locked.zip"]


def _mutations(seed: int, base: dict) -> list[bytes]:
    """Random damage to a real notebook: byte flips, cuts, and odd values put at random places."""
    rng = random.Random(seed)
    text = json.dumps(base).encode()
    odd = [7, -1, 2 ** 80, 1.5e308, None, True, "",
           "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
           [], {}, [[[[[]]]]], {"a": {"b": {"c": []}}}, "x" * 10_000, ["list", 1], {"nbgrader": "x"}]
    out = []
    for _ in range(60):
        kind = rng.randrange(3)
        if kind == 0:
            raw = bytearray(text)
            for _ in range(rng.randrange(1, 20)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            out.append(bytes(raw))
        elif kind == 1:
            out.append(text[: rng.randrange(len(text))])
        else:
            nb = copy.deepcopy(base)
            for _ in range(rng.randrange(1, 4)):
                node, key = nb, None
                for _ in range(rng.randrange(1, 6)):
                    keys = list(node) if isinstance(node, dict) else list(range(len(node))) if \
                        isinstance(node, list) else []
                    if not keys:
                        break
                    key = rng.choice(keys)
                    if not isinstance(node[key], (dict, list)):
                        break
                    node = node[key] if rng.random() < 0.8 else node
                if key is not None and isinstance(node, (dict, list)):
                    with contextlib.suppress(IndexError, KeyError, TypeError):
                        node[key] = copy.deepcopy(rng.choice(odd))
            out.append(json.dumps(nb).encode())
    return out


@pytest.mark.parametrize("seed", range(4))
def test_fuzzed_notebooks_and_zips_fail_with_a_reason_or_grade(tmp_path: Path, lab: course.Lab, blank,
                                                               seed: int) -> None:
    base = json.loads(nbformat.writes(lab.source))
    subs_dir, scratch = tmp_path / "subs", tmp_path / "scratch"
    subs_dir.mkdir()
    scratch.mkdir()
    rng = random.Random(seed)
    for i, data in enumerate(_mutations(seed, base)):
        (subs_dir / f"nb{i:03d}.ipynb").write_bytes(data)
        if i % 3 == 0:  # the same damage inside a zip, itself damaged one time in two
            packed = bytearray(_zip({f"{LAB}.ipynb": data}, rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])))
            if rng.random() < 0.5:
                for _ in range(rng.randrange(1, 8)):
                    packed[rng.randrange(len(packed))] = rng.randrange(256)
            (subs_dir / f"zp{i:03d}.zip").write_bytes(bytes(packed))
    entries = sorted(p.name for p in subs_dir.iterdir())
    subs = intake.collect(subs_dir, LAB, notebook.lab_ids(lab.source), scratch, intake.blank_answers(dict(blank)))
    assert sorted(s.origin for s in subs) == entries
    assert len({s.student for s in subs}) == len(entries)
    for sub in subs:
        status = _prepare(sub, lab, blank)
        assert status == "ready" or status.startswith("failed: "), (sub.origin, status)
        assert str(tmp_path) not in status and "Traceback" not in status


# ------------------------------------------------------------------------------------ identity
def test_ids_come_from_the_name_alone_and_never_collide() -> None:
    names = ["dan.ipynb", "dan!.ipynb", "Dan.ipynb", "dan.IPYNB", "dan.zip", "dan.ZIP", "dan", f"{LAB}-dan",
             "dan .ipynb", "dan_.ipynb", "@dan.ipynb", "=dan.ipynb", "dan~1.ipynb", "ivy.ipynb", "ivy.zip"]
    ids = [intake.student_id(n, LAB) for n in names]
    assert len(set(ids)) == len(names), dict(zip(names, ids, strict=False))
    assert ids[0] == "dan" and ids[names.index("ivy.ipynb")] == "ivy"
    assert all(i.startswith(("dan", "ivy")) for i in ids), ids
    assert len({i.lower() for i in ids}) == len(ids)                          # case-insensitive disks too
    assert all(intake.student_id(n, LAB) == i for n, i in zip(names, ids, strict=False))     # stable
    assert all(not i.startswith(("=", "+", "-", "@", ".")) for i in ids)


def test_regrading_one_hand_in_replaces_exactly_its_own_result(tmp_path: Path, lab: course.Lab) -> None:
    base = tmp_path / "results"
    pack = grade.LabPack(LAB, dict(lab.source), {}, {}, {}, set())
    for origin, student in (("ivy.ipynb", "ivy"), ("ivy.zip", "ivy~2"), ("ann.ipynb", "ann")):  # ~2: an old grader
        store.save_result(grade.failed_result(grade.Job(LAB, student, origin, None), pack, "failed: x"), base)
    new_id = intake.student_id("ivy.zip", LAB)
    assert store.drop_renamed(base, LAB, {"ivy.zip": new_id}) == ["ivy~2"]
    store.save_result(grade.failed_result(grade.Job(LAB, new_id, "ivy.zip", None), pack, "failed: y"), base)
    kept = {r["student"]: (r["origin"], r["status"]) for r in store.load_results(base, LAB)}
    assert kept == {"ann": ("ann.ipynb", "failed: x"), "ivy": ("ivy.ipynb", "failed: x"),
                    new_id: ("ivy.zip", "failed: y")}


# ------------------------------------------------------------------------ several notebooks
def test_a_blank_notebook_named_like_the_lab_loses_to_an_answered_one(tmp_path: Path, lab: course.Lab,
                                                                      blank) -> None:
    folder = tmp_path / "subs" / "eve"
    folder.mkdir(parents=True)
    nbformat.write(blank, folder / f"{LAB}.ipynb")
    nbformat.write(lab.source, folder / "my answers.ipynb")
    (tmp_path / "subs" / "fay").mkdir()
    nbformat.write(blank, tmp_path / "subs" / "fay" / f"{LAB}.ipynb")     # blank, beside a fresh notebook
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("def conv2d(): ...")]),
                   tmp_path / "subs" / "fay" / "work.ipynb")
    (tmp_path / "subs" / "gus").mkdir()
    for name in (f"{LAB}.ipynb", "v2.ipynb"):                              # two answered copies
        nbformat.write(lab.source, tmp_path / "subs" / "gus" / name)
    (tmp_path / "scratch").mkdir()
    subs = {s.origin: s for s in intake.collect(tmp_path / "subs", LAB, notebook.lab_ids(lab.source),
                                                tmp_path / "scratch", intake.blank_answers(dict(blank)))}
    eve, fay, gus = subs["eve"], subs["fay"], subs["gus"]
    assert eve.notebook.name == "my answers.ipynb" and "looks blank" in eve.choice and not eve.review
    assert sorted(eve.candidates) == [f"{LAB}.ipynb", "my answers.ipynb"]
    assert fay.notebook.name == f"{LAB}.ipynb" and fay.review and "looks blank" in fay.review
    assert gus.notebook.name == f"{LAB}.ipynb" and "named like the lab" in gus.choice
    assert gus.review and "several answered notebooks" in gus.review


# ---------------------------------------------------------------------------------------- CSV
def test_csv_cells_cannot_start_a_formula(tmp_path: Path, lab: course.Lab) -> None:
    pack = grade.LabPack(LAB, dict(lab.source), {}, {}, {}, set())
    hostile = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(1+1)", "\tTab", "\rCR", "plain"]
    for i, text in enumerate(hostile):
        res = grade.failed_result(grade.Job(LAB, f"s{i}", text, None), pack, f"failed: {text}")
        res["notebook"], res["review"], res["runtime_s"] = text, text, -1.5 if i == 0 else 2
        store.save_result(res, tmp_path)
    path = store.write_csv(tmp_path, LAB)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(hostile)
    for row in rows:
        for key in ("origin", "notebook", "review"):
            assert not row[key].startswith(("=", "+", "-", "@", "\t", "\r")), (key, row[key])
        assert row["origin"].lstrip("'") in hostile and row["max_score"] == "20" and row["manual_max"] == "3"
    assert rows[0]["runtime_s"] == "-1.5"                  # a number stays a number
    assert {r["origin"] for r in rows} >= {"'=HYPERLINK(\"http://x\",\"y\")", "'@SUM(1+1)", "plain"}


# -------------------------------------------------------------------------------------- merge
def test_merge_is_exactly_the_union_of_the_shards(tmp_path: Path, lab: course.Lab) -> None:
    root = tmp_path / "course"
    (root / "solutions").mkdir(parents=True)
    import shutil
    shutil.copytree(ROOT / "solutions" / LAB, root / "solutions" / LAB)
    pack = grade.LabPack(LAB, dict(lab.source), {}, {}, {}, set())

    def shard(name: str, students: list[str]) -> Path:
        for student in students:
            store.save_result(grade.failed_result(grade.Job(LAB, student, f"{student}.ipynb", None), pack,
                                                  "failed: x"), root / name)
        return root / name

    a, b = shard("s1", ["ann", "bob"]), shard("s2", ["cy", "dan"])
    assert cli.main(["--root", str(root), "merge", LAB, str(a), str(b)]) == 0
    c = shard("s3", ["ann", "cy", "dan"])                                # bob left the class
    assert cli.main(["--root", str(root), "merge", LAB, str(c)]) == 0
    with open(root / "results" / LAB / "grades.csv", newline="") as fh:
        assert sorted(r["student"] for r in csv.DictReader(fh)) == ["ann", "cy", "dan"]
    assert sorted(p.stem for p in (root / "results" / LAB).glob("*.json")) == ["ann", "cy", "dan"]
    kept_apart = list((root / "results" / "removed").rglob("bob.json"))
    assert len(kept_apart) == 1
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        assert sorted(s.student.id for s in gb.assignment_submissions(LAB)) == ["ann", "cy", "dan"]


# ------------------------------------------------------------------------ a worker that dies
def _stand_in_grader(job: grade.Job, pack: grade.LabPack) -> dict:
    if job.student.startswith("crash"):
        os._exit(3)                                   # as if the hand-in had killed its worker
    time.sleep(0.2)
    return {"student": job.student, "lab": job.lab, "origin": job.origin, "status": "graded", "score": 1.0}


def test_a_worker_that_dies_costs_no_other_hand_in(lab: course.Lab) -> None:
    import multiprocessing as mp
    import queue
    from concurrent.futures import ProcessPoolExecutor

    pool = grade.Pool.__new__(grade.Pool)  # the pool's scheduling, with a stand-in for grading
    pool.workers, pool.options, pool._slots, pool._grade = 2, grade.Options(), queue.Queue(), _stand_in_grader
    pool._make_executor = lambda: ProcessPoolExecutor(2, mp_context=mp.get_context("fork"))
    pool.executor = pool._make_executor()
    pool.zygote = type("Z", (), {"wait_ready": lambda self: None})()
    pack = grade.LabPack(LAB, dict(lab.source), {}, {}, {}, set())
    names = ["a", "crash1", "b", "c", "d", "e", "f"]
    jobs = [grade.Job(LAB, n, f"{n}.ipynb", f"/x/{n}.ipynb") for n in names]
    try:
        results = {r["student"]: r for r in pool.run(jobs, {LAB: pack}, lambda r: None)}
    finally:
        pool.executor.shutdown(cancel_futures=True)
    assert sorted(results) == sorted(names)
    assert all(results[n]["status"] == "graded" for n in names if n != "crash1"), results
    assert results["crash1"]["status"].startswith("failed: the grader's process died") and \
        results["crash1"]["score"] is None and results["crash1"]["max_score"] == 20


# ------------------------------------------------------------------- a real run, and a killed one
def _grader(root: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autograder.cli", "--root", str(root), *args], cwd=root,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_a_hostile_folder_is_graded_to_the_end(tmp_path: Path, lab: course.Lab, blank) -> None:
    subs = tmp_path / "subs"
    expect = hostile_folder(subs, lab, blank, light=True)
    run = _grader(ROOT, "grade", LAB, str(subs), "--results", str(tmp_path / "res"), "--device", "cpu",
                  "--workers", "2", "--timeout", "120")
    out, err = run.communicate(timeout=900)
    assert run.returncode == 0, err[-3000:]
    with open(tmp_path / "res" / LAB / "grades.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["origin"].lstrip("'") for r in rows) == sorted(notebook.display_name(e) for e in expect)
    assert all(r["max_score"] == "20" and r["manual_max"] == "3" for r in rows)
    for row in rows:
        assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for v in row.values()), row
        assert "grader error" not in row["status"] and str(tmp_path) not in row["status"], row
        assert not any(scratch in row["status"] for scratch in ("dlmi-grader-", "dlmi-intake-", "/tmp/")), row
        assert (row["score"] == "") == (row["status"] != "graded"), row
    by = {r["origin"].lstrip("'"): r for r in rows}
    for name in ("ok.IPYNB", "one-bad-member.zip"):
        assert (by[name]["status"], by[name]["score"]) == ("graded", "20"), by[name]
    assert by["=HYPERLINK(\"http x\").ipynb"]["status"].startswith("failed: =HYPERLINK")  # in the status only
    assert "holds none of" in by["zipped.ZIP"]["status"]                                 # read, found, refused
    assert "corrupt" in by["deflate.zip"]["status"] and "badname.zip" in by["badname.zip"]["status"]
    assert "nested too deeply" in by["deep.ipynb"]["status"]
    assert "a cell whose id is not text" in by["intid.ipynb"]["status"]
    assert by[".hidden_student.ipynb"]["status"].startswith("failed: .hidden_student.ipynb is a hidden file")


def _tree(pid: int) -> dict[int, float]:
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return {}
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out[p.pid] = p.create_time()
    return out


def _alive(snapshot: dict[int, float]) -> list[str]:
    left = []
    for pid, created in snapshot.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(p.cmdline())[:120])
        except psutil.Error:
            pass
    return left


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["workers spawned", "workers importing"])
def test_no_process_outlives_a_killed_grader(tmp_path: Path, lab: course.Lab, moment: str) -> None:
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ("a", "b", "c"):
        nbformat.write(lab.source, subs / f"{name}.ipynb")
    run = _grader(ROOT, "grade", LAB, str(subs), "--results", str(tmp_path / "res"), "--device", "cpu",
                  "--workers", "2", start_new_session=True)
    seen: dict[int, float] = {}
    deadline, spawned_at = time.monotonic() + 120, None
    while time.monotonic() < deadline and run.poll() is None:
        seen.update(_tree(run.pid))
        workers = [p for p in seen if p != run.pid]
        if workers and spawned_at is None:
            spawned_at = time.monotonic()
        if spawned_at is not None and (moment == "workers spawned" or time.monotonic() - spawned_at > 2.0):
            break
        time.sleep(0.02)
    assert run.poll() is None and spawned_at is not None, "the grader ended before its pool started"
    seen.update(_tree(run.pid))
    os.kill(run.pid, signal.SIGKILL)
    run.communicate(timeout=30)
    seen.pop(run.pid, None)
    until = time.monotonic() + 15
    while _alive(seen) and time.monotonic() < until:
        time.sleep(0.2)
    assert not _alive(seen), f"left running after the grader was killed: {_alive(seen)}"
