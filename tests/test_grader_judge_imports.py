"""A grading worker imports, in its judge process, the modules the labs preload in kernels."""
from __future__ import annotations

import sys

from autograder import grade


def test_judge_imports_the_preload_and_tolerates_a_missing_module() -> None:
    sys.modules.pop("colorsys", None)
    assert grade.judge_imports(["colorsys", "no_such_module_of_the_course"]) == ["no_such_module_of_the_course"]
    assert "colorsys" in sys.modules
