"""environment.yml (conda/Binder) and pyproject.toml must pin the same packages."""
from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pins(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        name, sep, version = line.partition("==")
        if sep:
            out[name.strip().lower()] = version.strip()
    return out


def test_environment_yml_matches_pyproject():
    project = pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda
    assert pins(pip_section) == project, "environment.yml and pyproject.toml disagree"
    assert all("==" in d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
