"""The course's autograder: nbgrader for release, gradebook and feedback; sandboxed kernels,
out-of-kernel judging, limits, honest failure states and parallel, sharded runs on top.

Command line: ``dlmi-grader`` (see :mod:`autograder.cli`).
"""
__version__ = "0.1.0"
