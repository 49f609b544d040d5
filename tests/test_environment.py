"""pyproject.toml (lower bounds), constraints.txt (exact pins) and environment.yml must agree.

* every requirement of dlmi and of each extra has exactly one pin in constraints.txt, the pin
  satisfies every range pyproject.toml gives it, and constraints.txt pins nothing else;
* environment.yml (conda/Binder) lists the same pins;
* the base requirements are lower bounds only (an exact pin or a cap on torch would replace the
  torch a student already has, e.g. Colab's);
* every package the student-facing code imports (``src/dlmi``, the labs) is a base requirement,
  the chapters' code cells import only those and what their Colab notebook installs first,
  everything the grader imports is a base or ``[grader]`` one, and
  the tests import nothing undeclared.

Each check is a function returning its problems, run on the real files (expecting none) and on a
broken variant (expecting the problem), so each can fail.
"""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
SELF = "dlmi"
IMPORT = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][A-Za-z0-9_]*)", re.M)
CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```", re.M | re.S)
LOCAL_MODULES = {"dlmi", "autograder"}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement_groups(proj: dict) -> dict[str, list[Requirement]]:
    """``base`` and each extra, without the extras that only name other extras of dlmi."""
    groups = {"base": proj["dependencies"], **proj.get("optional-dependencies", {})}
    return {name: [r for r in map(Requirement, reqs) if canonicalize_name(r.name) != SELF]
            for name, reqs in groups.items()}


def pin_lines(lines: list[str]) -> list[tuple[str, str]]:
    """``(name, version)`` of every ``name==version`` line (comments, options skipped)."""
    out = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        [spec] = list(req.specifier) if len(req.specifier) == 1 else [None]
        if spec is None or spec.operator != "==":
            raise ValueError(f"{line!r} is not an exact pin (name==version)")
        out.append((canonicalize_name(req.name), spec.version))
    return out


def constraint_problems(groups: dict[str, list[Requirement]], pins: list[tuple[str, str]]) -> list[str]:
    problems = []
    counts: dict[str, int] = {}
    for name, _ in pins:
        counts[name] = counts.get(name, 0) + 1
    problems += [f"{n} is pinned {c} times in constraints.txt" for n, c in counts.items() if c > 1]
    pinned = dict(pins)
    required = set()
    for group, reqs in groups.items():
        for req in reqs:
            name = canonicalize_name(req.name)
            required.add(name)
            if name not in pinned:
                problems.append(f"{req} ({group}) has no pin in constraints.txt")
            elif not req.specifier.contains(Version(pinned[name]), prereleases=True):
                problems.append(f"constraints.txt pins {name}=={pinned[name]}, outside {req} ({group})")
    problems += [f"constraints.txt pins {n}, which no requirement of pyproject.toml names"
                 for n in pinned if n not in required]
    return problems


def base_bound_problems(base: list[Requirement]) -> list[str]:
    """Base requirements may only set lower bounds (``>=``)."""
    return [f"base requirement {r} must be a lower bound only (>=): exact pins and caps go in constraints.txt"
            for r in base if not r.specifier or any(s.operator != ">=" for s in r.specifier)]


def environment_pins(env: dict) -> list[tuple[str, str]]:
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return pin_lines(pip_section)


def constraints() -> list[tuple[str, str]]:
    return pin_lines(CONSTRAINTS.read_text().splitlines())


# ------------------------------------------------------------------ who imports what

def _imports(code: str, python: bool) -> list[str]:
    """Top-level names of the modules ``code`` imports (Python source by its syntax tree; notebook
    cells line by line, since they may hold magics)."""
    if not python:
        return IMPORT.findall(code)
    out = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            out += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module.split(".")[0])
    return out


def imported_modules(paths: list[Path]) -> dict[str, set[str]]:
    """Top-level third-party module -> files importing it (.py, MyST code cells, notebook code)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        if path.suffix == ".py":
            code = path.read_text()
        elif path.suffix == ".md":
            code = "\n".join(CODE_CELL.findall(path.read_text()))
        else:
            nb = json.loads(path.read_text())
            code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        for module in _imports(code, path.suffix == ".py"):
            if module not in sys.stdlib_module_names and module not in LOCAL_MODULES and module != "__future__":
                found.setdefault(module, set()).add(str(path.relative_to(ROOT)))
    return found


def import_problems(modules: dict[str, set[str]], allowed: set[str], what: str) -> list[str]:
    """Every module must come from a distribution among ``allowed`` (canonical names)."""
    dists = importlib.metadata.packages_distributions()
    problems = []
    for module, files in sorted(modules.items()):
        names = {canonicalize_name(d) for d in dists.get(module, [])}
        if not names & allowed:
            problems.append(f"{module} (imported by {', '.join(sorted(files)[:3])}) comes from "
                            f"{sorted(names) or 'no installed distribution'}, not from {what}")
    return problems


def student_files() -> list[Path]:
    return sorted((ROOT / "src" / "dlmi").rglob("*.py")) + sorted((ROOT / "solutions").glob("*/*.ipynb"))


def chapter_only() -> dict[str, str]:
    """Modules the Colab notebooks' first cell installs besides dlmi (book/_ext/notebooks.py)."""
    spec = importlib.util.spec_from_file_location("notebooks", ROOT / "book" / "_ext" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CHAPTER_ONLY


def names(reqs: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


# ------------------------------------------------------------------ tests: the real files

def test_constraints_pin_every_requirement_once_within_its_range():
    assert constraint_problems(requirement_groups(project()), constraints()) == []


def test_environment_yml_lists_the_constraints():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in [d for d in env["dependencies"] if isinstance(d, str)]
    assert sorted(environment_pins(env)) == sorted(constraints()), \
        "environment.yml and constraints.txt disagree: copy the pins of constraints.txt into environment.yml"


def test_base_requirements_are_lower_bounds():
    groups = requirement_groups(project())
    assert base_bound_problems(groups["base"]) == []
    assert {"torch", "torchvision"} <= names(groups["base"])


def test_all_extra_names_every_extra():
    proj = project()
    extras = set(proj["optional-dependencies"]) - {"all"}
    [all_req] = map(Requirement, proj["optional-dependencies"]["all"])
    assert canonicalize_name(all_req.name) == SELF and all_req.extras == extras


def test_student_code_imports_only_base_requirements():
    base = names(requirement_groups(project())["base"])
    assert import_problems(imported_modules(student_files()), base, "the base requirements") == []


def test_chapters_import_only_base_requirements_or_what_their_notebook_installs():
    allowed = names(requirement_groups(project())["base"]) | {canonicalize_name(p) for p in chapter_only().values()}
    modules = imported_modules(sorted((ROOT / "book").glob("*.md")))
    assert import_problems(modules, allowed, "the base requirements or the notebook's first cell") == []


def test_grader_imports_only_base_and_grader_requirements():
    groups = requirement_groups(project())
    modules = imported_modules(sorted((ROOT / "autograder").glob("*.py")))
    assert import_problems(modules, names(groups["base"]) | names(groups["grader"]),
                           "the base or [grader] requirements") == []


def test_tests_import_only_declared_requirements():
    groups = requirement_groups(project())
    modules = imported_modules(sorted((ROOT / "tests").rglob("*.py")))
    modules = {m: f for m, f in modules.items() if not (ROOT / "tests" / f"{m}.py").exists()}
    assert import_problems(modules, set().union(*map(names, groups.values())), "any requirement") == []


def test_make_ci_and_binder_install_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^CONSTRAINTS := constraints\.txt$", makefile, re.M)
    assert re.search(r"^\$\(VENV\)/\.installed: pyproject\.toml \$\(CONSTRAINTS\)$", makefile, re.M), \
        "the venv stamp must depend on constraints.txt"
    assert re.search(r'pip install .*-e "\.\[all\]" -c \$\(CONSTRAINTS\)', makefile)
    assert 'pip install -e ".[all]" -c constraints.txt' in (ROOT / "postBuild").read_text()


# ------------------------------------------------------------------ tests: each check can fail

def test_constraint_check_can_fail():
    groups = {"base": [Requirement("torch>=2.8")], "dev": [Requirement("pytest>=8")]}
    good = [("torch", "2.14.1"), ("pytest", "9.2.0")]
    assert constraint_problems(groups, good) == []
    assert constraint_problems(groups, good[:1]) == ["pytest>=8 (dev) has no pin in constraints.txt"]
    assert "outside" in constraint_problems(groups, [("torch", "2.7.0"), good[1]])[0]
    assert "pinned 2 times" in constraint_problems(groups, good + [("torch", "2.14.1")])[0]
    assert "no requirement" in constraint_problems(groups, good + [("numpy", "2.4.6")])[0]
    with pytest.raises(ValueError, match="not an exact pin"):
        pin_lines(["torch>=2.8"])


def test_base_bound_check_can_fail():
    assert base_bound_problems([Requirement("torch>=2.8")]) == []
    for bad in ("torch==2.14.1", "torch>=2.8,<2.15", "torch", "torch~=2.8"):
        assert base_bound_problems([Requirement(bad)]), bad


def test_import_check_can_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    chapter = tmp_path / "ch.md"
    chapter.write_text("from yaml import x\n\n```{code-cell} ipython3\n"
                       "import numpy as np\nfrom PIL import Image\n```\n")
    modules = imported_modules([chapter])
    assert modules == {"numpy": {"ch.md"}, "PIL": {"ch.md"}}, "prose lines are not code"
    assert import_problems(modules, {"numpy", "pillow"}, "base") == []
    [problem] = import_problems(modules, {"numpy"}, "base")
    assert problem.startswith("PIL (imported by ch.md) comes from ['pillow']")
