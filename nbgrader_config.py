"""nbgrader's configuration for this course — the same settings `dlmi-grader` uses, so that
`nbgrader formgrader` (hand-grading the written answers) and other nbgrader commands run from
the repository root see solutions/, labs/, results/autograded/, feedback/ and gradebook.db."""
from pathlib import Path

from autograder.course import nbgrader_config

c = get_config()  # noqa: F821 — provided by nbgrader when it loads this file
c.merge(nbgrader_config(Path(__file__).resolve().parent))
