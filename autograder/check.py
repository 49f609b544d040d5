"""``dlmi-grader check``: the labs are consistent before anyone grades with them.

For every lab: ``labs/<lab>/`` equals a fresh release; no solution or hidden-test text appears
anywhere under ``labs/``; the source notebook (the reference solution) scores full marks on
every autograded test; the released blank notebook scores 0 and grades without a failure.
"""
from __future__ import annotations

import filecmp
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import course, grade, notebook
from .results import print_progress

_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION", notebook.HIDDEN_BEGIN, notebook.HIDDEN_END)


def _regions(source: str, begin: str, end: str) -> list[str]:
    lines, inside, out = source.splitlines(), False, []
    for line in lines:
        if begin in line:
            inside = True
        elif end in line:
            inside = False
        elif inside:
            out.append(line.strip())
    return out


def _secret_and_public(lab: course.Lab) -> tuple[set[str], set[str]]:
    """Stripped lines inside solution / hidden-test regions, and the other lines, of ``lab``'s source."""
    secret: set[str] = set()
    public: set[str] = set()
    for cell in lab.source.cells:
        inside = set(_regions(cell.source, "### BEGIN SOLUTION", "### END SOLUTION")) | \
            set(_regions(cell.source, notebook.HIDDEN_BEGIN, notebook.HIDDEN_END))
        secret |= inside
        public.update(line.strip() for line in cell.source.splitlines() if line.strip() not in inside)
    return secret, public


def secret_lines(lab: course.Lab, others: Sequence[course.Lab] = ()) -> set[str]:
    """Distinctive lines of ``lab``'s solutions and hidden tests: long, no comment, and not also
    in the public text of ``lab`` or of any lab in ``others`` (``except ValueError:`` is no secret)."""
    secret, public = _secret_and_public(lab)
    for other in others:
        public |= _secret_and_public(other)[1]
    return {s for s in secret - public if len(s) >= 16 and not s.startswith("#")}


def leaks(root: Path, labs: list[course.Lab]) -> list[str]:
    """Files under ``labs/`` that carry a marker or a secret line of one of ``labs``."""
    everyone = [course.load_lab(name, root) for name in course.lab_names(root)] or labs
    secrets = {lab.name: secret_lines(lab, everyone) for lab in labs}
    found = []
    for path in sorted((root / "labs").rglob("*")):
        if not path.is_file():
            continue
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        for marker in _MARKERS:
            if marker in text:
                found.append(f"{path.relative_to(root)} contains the marker {marker!r}")
        for name, lines in secrets.items():
            hits = [s for s in lines if s in text]
            if hits:
                found.append(f"{path.relative_to(root)} contains {len(hits)} line(s) of {name}'s solutions or hidden "
                             f"tests, e.g. {hits[0][:60]!r}")
    return found


def stale(lab: course.Lab, fresh: Path) -> list[str]:
    """Differences between ``labs/<lab>/`` and a fresh release in ``fresh``."""
    committed = lab.root / "labs" / lab.name
    if not committed.is_dir():
        return [f"labs/{lab.name}/ is missing: run `dlmi-grader release {lab.name}`"]
    cmp = filecmp.dircmp(fresh, committed, ignore=[".ipynb_checkpoints", "__pycache__"])
    problems: list[str] = []

    def walk(d: filecmp.dircmp, rel: str) -> None:
        for name in d.left_only:
            problems.append(f"labs/{lab.name}/{rel}{name} is missing")
        for name in d.right_only:
            problems.append(f"labs/{lab.name}/{rel}{name} is not in a fresh release")
        _, mismatch, errors = filecmp.cmpfiles(d.left, d.right, d.common_files, shallow=False)
        for name in mismatch + errors:
            problems.append(f"labs/{lab.name}/{rel}{name} differs from a fresh release")
        for sub, sd in d.subdirs.items():
            walk(sd, f"{rel}{sub}/")

    walk(cmp, "")
    if problems:
        problems.append(f"run `dlmi-grader release {lab.name}` and commit labs/{lab.name}/")
    return problems


def _grade_labs(root: Path, labs: list[course.Lab], options: grade.Options) -> tuple[list[dict], list[str]]:
    """Grade each lab's reference solution and its released blank (kept in memory, never written as
    results); also compare ``labs/`` with a fresh release and look for leaks. Returns the results and
    the problems found so far."""
    problems: list[str] = []
    with (tempfile.TemporaryDirectory(prefix="dlmi-check-") as tmp,
          grade.Pool(options, root, labs, 2 * len(labs)) as pool):
        jobs, packs = [], {}
        for lab in labs:
            fresh = course.generate(lab, Path(tmp) / "release" / lab.name)
            problems += stale(lab, fresh)
            packs[lab.name] = grade.pack_lab(lab, fresh)
            blank = lab.root / "labs" / lab.name / f"{lab.name}.ipynb"
            jobs += [grade.Job(lab.name, "solution", f"solutions/{lab.name}", str(lab.folder / f"{lab.name}.ipynb")),
                     grade.Job(lab.name, "blank", f"labs/{lab.name}",
                               str(blank if blank.exists() else fresh / f"{lab.name}.ipynb"))]
        problems += leaks(root, labs)
        return pool.run(jobs, packs, print_progress), problems


def _score_problems(res: dict) -> list[str]:
    """What is wrong with a result of ``check``: the solution short of full marks, the blank above 0."""
    kind, lab = res["student"], res["lab"]
    if res["status"] != "graded":
        return [f"{lab} {kind}: {res['status']}"]
    failed = [t for t in res["tests"] if not t["passed"]]
    if kind == "solution" and (failed or res["score"] != res["max_score"]):
        return [f"{lab} solution fails {t['grade_id']}: {t['message']}\n{t.get('detail', '')}" for t in failed]
    if kind == "blank" and res["score"] != 0:
        passed = [t["grade_id"] for t in res["tests"] if t["passed"]]
        return [f"{lab} blank notebook scores {res['score']:g}: {', '.join(passed)} pass without an answer"]
    return []


def run(root: Path, names: list[str], options: grade.Options) -> bool:
    """Run every check for ``names``; print a report; True when all pass."""
    results, problems = _grade_labs(root, [course.load_lab(n, root) for n in names], options)
    results.sort(key=lambda r: (r["lab"], r["student"]))
    for res in results:
        problems += _score_problems(res)
    for res in results:
        print(f"{res['lab']:<24} {res['student']:<9} {res['status']:<8} "
              f"{'' if res['score'] is None else format(res['score'], 'g')}/{res.get('max_score', 0):g}  "
              f"{res.get('runtime_s')} s")
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    print("check: " + ("all labs OK" if not problems else f"{len(problems)} problem(s)"))
    return not problems
