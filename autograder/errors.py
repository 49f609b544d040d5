"""The grader's exception types, shared by the kernel, notebook, judge and grading modules."""
from __future__ import annotations


class SubmissionFailure(Exception):
    """Grading of one submission cannot go on; ``status`` is ``failed`` or ``timeout``."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status, self.reason = status, reason


class StudentError(Exception):
    """The student's code raised while answering a judge request."""

    def __init__(self, ename: str, evalue: str, traceback: list[str]) -> None:
        super().__init__(f"{ename}: {evalue}")
        self.ename, self.evalue, self.traceback = ename, evalue, traceback
