"""Every file the grader writes about a hand-in, and reading them back.

* ``<base>/<lab>/<student>.json`` — one result (:func:`save_result`, :func:`write_result`);
* ``<base>/autograded/<student>/<lab>/<lab>.ipynb`` — the graded notebook, made inert for
  formgrader and feedback (:mod:`autograder.safehtml`);
* ``<base>/<lab>/grades.csv`` — the class's CSV (:func:`write_csv`);
* ``gradebook.db`` — nbgrader's copy of the auto scores (:func:`record`, :func:`forget`).

``<base>`` is ``<root>/results`` unless a run is given ``--results`` (a shard).
Every file is written to a temporary name first and renamed: a crash never leaves half a file.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from . import course
from .safehtml import sanitize_notebook
import contextlib

CSV_FIELDS = ["student", "status", "score", "max_score", "manual_score", "manual_max", "runtime_s", "device",
              "origin", "notebook", "review"]
_NUMERIC = {"score", "max_score", "manual_score", "manual_max", "runtime_s"}


def results_dir(root: Path, results: Path | None) -> Path:
    """Where a run's results go: ``results`` if given, else ``<root>/results``."""
    return results or root / "results"


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a crash never leaves half a result file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_result(base: Path, res: dict[str, Any]) -> None:
    """``<base>/<lab>/<student>.json``."""
    write_json(base / res["lab"] / f"{res['student']}.json", res)


def save_result(res: dict[str, Any], base: Path) -> None:
    """``<base>/<lab>/<student>.json`` and the graded notebook under ``<base>/autograded/`` — the
    latter cleaned of anything that could run in a browser (formgrader and feedback render it)."""
    text = res.pop("_notebook", None)
    if text is not None:
        path = base / "autograded" / res["student"] / res["lab"] / f"{res['lab']}.ipynb"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            graded = json.loads(text)
            cleaned = sanitize_notebook(graded)
            if cleaned:
                res["html_removed"] = cleaned
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(graded, indent=1, ensure_ascii=False) + "\n", encoding="utf-8",
                           errors="replace")
            os.replace(tmp, path)
            res["autograded"] = str(path.relative_to(base))
        except Exception as err:  # noqa: BLE001 — the result itself is still recorded
            res.setdefault("notes", []).append(f"the graded notebook could not be stored ({type(err).__name__})")
    write_result(base, res)


def copy_result(res: dict[str, Any], shard: Path, base: Path) -> None:
    """Take a shard's result and graded notebook into ``base`` (``dlmi-grader merge``)."""
    student, lab = res["student"], res["lab"]
    graded = shard / "autograded" / student / lab
    target = base / "autograded" / student / lab
    if target.exists():
        shutil.rmtree(target)
    if graded.is_dir():
        shutil.copytree(graded, target)
    write_result(base, res)


def remove_result(base: Path, lab: str, student: str, keep_apart: Path | None = None) -> None:
    """Take ``student``'s result of ``lab`` out of ``base`` (moved under ``keep_apart`` if given)."""
    for src in (base / lab / f"{student}.json", base / "autograded" / student / lab):
        if not src.exists():
            continue
        if keep_apart is not None:
            dest = keep_apart / src.relative_to(base)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dest))
        elif src.is_dir():
            shutil.rmtree(src)
        else:
            src.unlink()
    folder = base / "autograded" / student
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def drop_renamed(base: Path, lab: str, ids_by_origin: dict[str, str]) -> list[str]:
    """Before re-grading: remove results this run's hand-ins left under another id (an id given by an
    older grader to the same hand-in). Returns the ids removed."""
    removed = []
    for res in load_results(base, lab):
        origin, student = res.get("origin"), res.get("student")
        if origin in ids_by_origin and student != ids_by_origin[origin] and isinstance(student, str):
            remove_result(base, lab, student)
            removed.append(student)
    return removed


def load_results(base: Path, lab: str) -> list[dict[str, Any]]:
    """Every result of ``lab`` under ``base`` (a file that cannot be read is reported and left out)."""
    folder = base / lab
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            res = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(res, dict) or not isinstance(res.get("student"), str) or "status" not in res:
                raise ValueError("not a result")
        except (OSError, ValueError) as err:
            print(f"WARNING: {path.name} in {folder} is not a readable result ({type(err).__name__}); left out",
                  file=sys.stderr)
            continue
        out.append(res)
    return out


def csv_cell(value: Any) -> str:
    """A CSV cell a spreadsheet shows as text: one starting with ``= + - @``, a tab or a carriage
    return gets a leading ``'`` (OWASP's rule against formula injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None or value == "":
        return ""
    if isinstance(value, (int, float)):
        return f"{value:g}"
    return csv_cell(value)


def write_csv(base: Path, lab: str, manual: dict[str, float | None] | None = None) -> Path:
    """``<base>/<lab>/grades.csv`` for the class: a failure has an empty score and its status. Every
    text cell is neutralised (:func:`csv_cell`); numbers stay numbers; ``max_score`` is always filled."""
    path = base / lab / "grades.csv"
    rows = load_results(base, lab)
    maxima = [m for r in rows if isinstance(m := r.get("max_score"), (int, float))]
    manual_maxima = [m for r in rows if isinstance(m := r.get("manual_max"), (int, float))]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8", errors="replace") as fh:
        writer = csv.DictWriter(fh, CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            row = {"student": r["student"], "status": r["status"], "score": r.get("score"),
                   "max_score": r.get("max_score", max(maxima, default=None)),
                   "manual_score": manual.get(r["student"]) if manual else None,
                   "manual_max": r.get("manual_max", max(manual_maxima, default=None)),
                   "runtime_s": r.get("runtime_s"), "device": r.get("device", ""),
                   "origin": r.get("origin", ""), "notebook": r.get("notebook", ""),
                   "review": "; ".join(r["review"]) if isinstance(r.get("review"), list) else r.get("review")}
            writer.writerow({k: _number(v) if k in _NUMERIC else csv_cell(v) for k, v in row.items()})
    os.replace(tmp, path)
    return path


def _gradebook_url(root: Path) -> str:
    return str(course.nbgrader_config(root).CourseDirectory.db_url)


def record(root: Path, results: list[dict[str, Any]]) -> None:
    """Write auto scores of ``results`` into the gradebook (failures leave scores empty)."""
    from nbgrader.api import Gradebook

    for lab in sorted({res["lab"] for res in results}):
        course.ensure_gradebook(course.load_lab(lab, root))
    with Gradebook(_gradebook_url(root)) as gb, warnings.catch_warnings():
        # nbgrader 0.9.6's add_submission trips an autoflush warning of SQLAlchemy 2 that changes nothing
        warnings.filterwarnings("ignore", message=".*not in session.*")
        for res in results:
            lab, student = res["lab"], res["student"]
            gb.update_or_create_student(student)
            gb.update_or_create_submission(lab, student)
            scores = {t["grade_id"]: t["points"] for t in res.get("tests", [])}
            graded = res.get("status") == "graded"
            for cell in gb.find_notebook(lab, lab).grade_cells:
                if cell.cell_type != "code" or (graded and cell.name not in scores):
                    continue
                grade = gb.find_grade(cell.name, lab, lab, student)
                grade.auto_score = scores.get(cell.name) if graded else None
            gb.db.commit()


def forget(root: Path, lab: str, students: list[str]) -> None:
    """Remove ``students``' submissions of ``lab`` from the gradebook and their feedback pages
    (their results were taken out of the class)."""
    from nbgrader.api import Gradebook, MissingEntry

    for student in students:
        shutil.rmtree(root / "feedback" / student / lab, ignore_errors=True)
    if not (root / "gradebook.db").exists():
        return
    with Gradebook(_gradebook_url(root)) as gb:
        for student in students:
            with contextlib.suppress(MissingEntry):
                gb.remove_submission(lab, student)


def progress_line(res: dict[str, Any]) -> str:
    """One line per landed result: lab, student, score, status, time and why to review it."""
    score = "" if res.get("score") is None else f"{res['score']:g}/{res.get('max_score', 0):g}  "
    review = f"  REVIEW: {res['review']}" if res.get("review") else ""
    return f"{res['lab']}  {res['student']:<24} {score}{res['status']}  ({res.get('runtime_s')} s){review}"


def print_progress(res: dict[str, Any]) -> None:
    """:func:`progress_line` on stderr."""
    print(progress_line(res), file=sys.stderr, flush=True)
