"""``dlmi-grader``: release labs, grade hand-ins, write feedback, check the labs, merge shards;
``validate`` checks a student's notebook before hand-in.

Each subcommand imports what it needs when it runs: ``validate`` works from a student's install,
which has no nbgrader, bleach or Sphinx (the grader's extras).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import course, data, sandbox

if TYPE_CHECKING:
    from . import grade, intake


def _root(args: argparse.Namespace) -> Path:
    return course.course_root(args.root)


def _lab_list(args: argparse.Namespace, root: Path) -> list[str]:
    names = course.lab_names(root) if args.all else args.labs
    if not names:
        raise SystemExit("name one or more labs, or pass --all")
    return names


def _options(args: argparse.Namespace, settings: list[dict] | None = None) -> grade.Options:
    from . import grade, slots
    device, gpus = grade.resolve_device(args.device)
    plan = slots.plan_for_labs(settings or [], args.workers) if device == "cuda" else None
    workers = plan.workers if plan else args.workers or os.cpu_count() or 1
    if plan:
        print(f"GPU plan: {plan.describe()}" + "".join(f"\n  {n}" for n in plan.notes), file=sys.stderr)
    if args.isolation and (problem := sandbox.privilege_problem(args.isolation)):
        raise SystemExit(f"dlmi-grader: --isolation {args.isolation} is refused: {problem}; run as root, or pick "
                         "--isolation none (limits only), or leave it out for the strongest level allowed")
    level, refused = (args.isolation, []) if args.isolation else sandbox.default_level()
    if level != "namespaces":
        print(f"WARNING: isolation level {level!r}: student code is NOT sandboxed from this machine's files"
              + ("" if level == "uid" else " and runs with your rights") + "; grade as root on Linux for full "
              "isolation." + "".join(f"\n  refused {r}" for r in refused), file=sys.stderr)
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    return grade.Options(device=device, workers=workers, level=level, gpus=gpus,
                         gpu_memory_mb=plan.gpu_memory_mb if plan else None,
                         results=Path(args.results).resolve() if getattr(args, "results", None) else None,
                         timeout_s=args.timeout, cell_timeout_s=args.cell_timeout, memory_mb=args.memory,
                         output_mb=args.output_mb)


def cmd_release(args: argparse.Namespace) -> int:
    root = _root(args)
    for name in _lab_list(args, root):
        out = course.release(course.load_lab(name, root))
        print(f"released {name} → {out.relative_to(root)}")
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    from . import grade, intake
    from . import results as store
    root = _root(args)
    lab = course.load_lab(args.lab, root)
    options = _options(args, [lab.settings])
    base = store.results_dir(root, options.results)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dlmi-intake-") as tmp:
        ids = grade.notebook.lab_ids(lab.source)
        blank = intake.blank_answers(dict(course.blank_notebook(lab)))
        subs = intake.shard(intake.collect(Path(args.submissions), lab.name, ids, Path(tmp), blank, log=_say),
                            args.shard)
        if not subs:
            print(f"no submissions to grade in {args.submissions}" + (f" (shard {args.shard})" if args.shard else ""))
            return 0
        for sub in subs:
            if sub.choice:
                _say(f"{sub.student}: {sub.choice}" + (f" — REVIEW: {sub.review}" if sub.review else ""))
        for old in store.drop_renamed(base, lab.name, {s.origin: s.student for s in subs}):
            _say(f"removed the result {old} (the same hand-in, now graded under its new id)")
        by_id = {s.student: s for s in subs}
        jobs = [grade.Job(lab.name, s.student, s.origin, str(s.notebook) if s.notebook else None, s.problem)
                for s in subs]
        with grade.Pool(options, root, [lab], len(jobs)) as pool:
            print(f"grading {len(jobs)} submission(s) of {lab.name} on {options.device} with {pool.workers} "
                  f"worker(s), isolation {options.level}", file=sys.stderr)
            pack = grade.pack_lab(lab)

            def on_result(res: dict) -> None:
                _annotate(res, by_id.get(res["student"]))
                store.save_result(res, base)
                store.print_progress(res)

            results = pool.run(jobs, {lab.name: pack}, on_result)
    path, trouble = _gradebook_and_csv(root, base, lab.name, results if base == root / "results" else None)
    counts: dict[str, int] = {}
    for res in results:
        key = res["status"].split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    elapsed = time.monotonic() - started
    print(f"{len(results)} submission(s) in {elapsed:.1f} s ({60 * len(results) / elapsed:.1f}/min): "
          + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + f"; class CSV: {path}")
    return 1 if trouble else 0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _annotate(res: dict, sub: intake.Submission | None) -> None:
    """Record in a result what intake decided: which notebook of several, what it left out, and
    why an instructor should look (``review``)."""
    status = str(res.get("status")).encode("utf-8", "replace").decode("utf-8")  # a name that is not UTF-8
    res["status"] = re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", "?", status)     # nor terminal escapes
    if sub is None:
        return
    res["intake"] = {"origin": sub.origin, "choice": sub.choice, "candidates": sub.candidates, "notes": sub.notes}
    res["notes"] = [*sub.notes, *([sub.choice] if sub.choice else []), *res.get("notes", [])]
    if sub.review:
        res["review"] = f"{res['review']}; {sub.review}" if isinstance(res.get("review"), str) else sub.review


def cmd_feedback(args: argparse.Namespace) -> int:
    from . import feedback
    root = _root(args)
    errors: list[str] = []
    pages = feedback.generate(root, args.lab, args.student or None, errors)
    for page in pages:
        print(page.relative_to(root))
    print(f"{len(pages)} feedback page(s) under feedback/")
    for error in errors:
        _say(f"no feedback page: {error}")
    return 1 if errors else 0


def cmd_check(args: argparse.Namespace) -> int:
    from . import check
    root = _root(args)
    return 0 if check.run(root, _lab_list(args, root), _options(args)) else 1


def cmd_merge(args: argparse.Namespace) -> int:
    """Make results/<lab>/ exactly the union of the shards given (each a --results folder), then one
    CSV. Results already there that no shard holds (a student removed from the class, an older run)
    are moved apart to results/removed/<time>/, their gradebook entries and feedback pages removed."""
    from . import results as store
    root = _root(args)
    base = root / "results"
    merged: list[dict] = []
    owner: dict[str, str] = {}
    for shard_dir in map(Path, args.shards):
        if not (shard_dir / args.lab).is_dir():
            _say(f"WARNING: {shard_dir} holds no results of {args.lab}")
        for res in store.load_results(shard_dir, args.lab):
            student = res["student"]
            if not re.fullmatch(r"[A-Za-z0-9_@~-][A-Za-z0-9_.@~-]*", student):
                _say(f"WARNING: a result in {shard_dir} has an unusable student id {student!r}; left out")
                continue
            if student in owner:
                raise SystemExit(f"{student} was graded in both {owner[student]} and {shard_dir}")
            owner[student] = str(shard_dir)
            merged.append(res)
    if not merged:
        raise SystemExit(f"no results of {args.lab} in {', '.join(args.shards)}")
    stale = sorted({r["student"] for r in store.load_results(base, args.lab)} - set(owner))
    if stale:
        apart = base / "removed" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for student in stale:
            store.remove_result(base, args.lab, student, keep_apart=apart)
        _say(f"{len(stale)} result(s) no shard holds moved to {apart.relative_to(root)}: {', '.join(stale)}")
    for res in merged:
        store.copy_result(res, Path(owner[res["student"]]), base)
    csv_path, trouble = _gradebook_and_csv(root, base, args.lab, merged, stale)
    print(f"merged {len(merged)} result(s) from {len(args.shards)} shard(s) → {csv_path.relative_to(root)}")
    return 1 if trouble else 0


def _gradebook_and_csv(root: Path, base: Path, lab: str, record: list[dict] | None,
                       forget: list[str] | tuple[str, ...] = ()) -> tuple[Path, str | None]:
    """Update nbgrader's gradebook (``forget`` students, ``record`` results) and write the class
    CSV; returns (CSV path, what went wrong with the gradebook or None). The gradebook is
    nbgrader's copy: its failure never costs the results or the CSV."""
    from . import feedback
    from . import results as store
    trouble = None
    try:
        if forget:
            store.forget(root, lab, list(forget))
        if record is not None:
            store.record(root, record)
        manual = feedback.manual_scores(root, lab)
    except Exception as err:  # noqa: BLE001
        trouble, manual = f"{type(err).__name__}: {err}", None
    path = store.write_csv(base, lab, manual)
    if trouble:
        _say(f"WARNING: gradebook.db was not updated ({trouble[:500]}); the results and the CSV are complete")
    return path, trouble


def cmd_csv(args: argparse.Namespace) -> int:
    from . import feedback
    from . import results as store
    root = _root(args)
    print(store.write_csv(root / "results", args.lab, feedback.manual_scores(root, args.lab)))
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    """List the hand-ins in review, or accept / reject one (its kept score becomes final, or none)."""
    from . import feedback, grade
    from . import results as store
    root = _root(args)
    base = Path(args.results).resolve() if args.results else root / "results"
    results = {r["student"]: r for r in store.load_results(base, args.lab)}
    if not args.student:
        pending = [r for r in results.values() if (r.get("integrity") or {}).get("state") == "pending"]
        for r in pending:
            print(f"{r['student']}: kept score {r['integrity']['score']:g}/{r.get('max_score', 0):g}")
            for finding in r["integrity"]["findings"]:
                print(f"    {finding}")
        print(f"{len(pending)} hand-in(s) of {args.lab} in review")
        return 0
    if args.student not in results:
        raise SystemExit(f"no result of {args.student!r} for {args.lab} in {base}")
    if args.accept == args.reject:
        raise SystemExit("say --accept or --reject")
    res = grade.decide_review(results[args.student], accept=args.accept, who=os.environ.get("USER", ""))
    store.write_result(base, res)
    if base == root / "results":
        store.record(root, [res])
    path = store.write_csv(base, args.lab, feedback.manual_scores(root, args.lab))
    print(f"{args.student}: {res['status']}" + ("" if res.get("score") is None else f", score {res['score']:g}")
          + f"; class CSV: {path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from . import validate
    return validate.main(args.notebook, args.lab, args.root)


def _grading_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int,
                   help="submissions graded at once (default: CPU cores; on CUDA several per GPU, planned from "
                   "free GPU memory, the lab's gpu_memory_mb and CPU cores)")
    p.add_argument("--device", default=os.environ.get("DLMI_DEVICE") or "auto",
                   help="cpu, cuda or auto (default: $DLMI_DEVICE, else cuda when a GPU is present)")
    p.add_argument("--timeout", type=float, help="whole-notebook limit in seconds (default: the lab's budget)")
    p.add_argument("--cell-timeout", type=float, help="per-cell limit in seconds (default: the lab's budget)")
    p.add_argument("--memory", type=int, help="memory limit per submission in MiB (default: the lab's)")
    p.add_argument("--output-mb", type=float, default=4, help="printed output allowed per notebook (default 4 MB)")
    p.add_argument("--isolation", choices=sandbox.LEVELS,
                   help="sandbox level (default: the strongest available; 'namespaces' needs root on Linux)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dlmi-grader", description=__doc__)
    ap.add_argument("--root", help="course root (default: the folder above the cwd holding solutions/)")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("release", help="make labs/<lab>/ from solutions/<lab>/ with nbgrader")
    p.add_argument("labs", nargs="*")
    p.add_argument("--all", action="store_true", help="every lab in solutions/")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("grade", help="grade a folder of hand-ins (notebooks, zips, folders or repositories)")
    p.add_argument("lab")
    p.add_argument("submissions")
    p.add_argument("--shard", help="grade only share i of n (1-based, e.g. 2/4) — for a CI matrix")
    p.add_argument("--results", help="write results here instead of <root>/results (then `merge`)")
    _grading_flags(p)
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("feedback", help="HTML feedback per student under feedback/")
    p.add_argument("lab")
    p.add_argument("--student", action="append", help="only this student (repeatable)")
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("check", help="solutions score full marks, blanks score 0, labs/ is fresh and leaks nothing")
    p.add_argument("labs", nargs="*")
    p.add_argument("--all", action="store_true")
    _grading_flags(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("merge", help="merge shard results (--results folders) into results/ and one CSV")
    p.add_argument("lab")
    p.add_argument("shards", nargs="+")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("csv", help="rewrite results/<lab>/grades.csv (picks up hand-graded scores)")
    p.add_argument("lab")
    p.set_defaults(func=cmd_csv)
    p = sub.add_parser("review", help="hand-ins held for review (tampering?): list them, or --accept/--reject one")
    p.add_argument("lab")
    p.add_argument("student", nargs="?")
    p.add_argument("--accept", action="store_true", help="the kept score becomes the hand-in's score")
    p.add_argument("--reject", action="store_true", help="status 'rejected', no score")
    p.add_argument("--results", help="results folder (default <root>/results)")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("validate", help="check your notebook before you hand it in: the lab's visible tests, run "
                       "as the grader runs them (deleted or edited test cells restored)")
    p.add_argument("notebook", help="your notebook (.ipynb)")
    p.add_argument("--lab", help="the lab it belongs to (default: found from its cells)")
    p.set_defaults(func=cmd_validate)
    return ap


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command line: keep the held-out seed out of /proc/<pid>/environ
        data.reexec_without_seed("autograder.cli", sys.argv[1:])
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError) as err:
        print(f"dlmi-grader: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
