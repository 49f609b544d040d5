"""Judge test cells in the grader's own (trusted) process.

A test cell's source — visible and hidden parts — never runs in the student's kernel. The
judge executes it here with fresh trusted imports (``math``, ``np``, ``torch``, ``F`` and
whatever the test imports itself); every other name the test reads but does not define
(``conv2d``, ``model``, ``nn``, ``DataLoader``, ...) is fetched from the kernel through the
bridge: data arrives as plain values and tensors, everything else as a :class:`Remote` proxy
whose calls run in the kernel and return data (so a test builds kernel-side objects with the
notebook's own names, e.g. ``nn.Linear(2, 2)``). Thus ``np.allclose``, ``torch.allclose``,
``assert`` and the reference implementations a test uses are the grader's, whatever the
student's code did to its own interpreter. Hidden tests may also use ``grader`` (see
:class:`GraderHelpers`), which exists only here.
"""
from __future__ import annotations

import builtins
import contextlib
import importlib
import io
import symtable
import traceback
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

from . import bridge
from .errors import StudentError, SubmissionFailure
from .kernel import KernelSession

PREAMBLE = "import math\nimport numpy as np\nimport torch\nimport torch.nn.functional as F\n"
_TRUSTED_MODULES = ("torch", "numpy", "collections", "builtins")


class Remote:
    """A student object that stays in the kernel; using it sends bridge requests."""

    __slots__ = ("_session", "_stub")

    def __init__(self, session: KernelSession, stub: dict[str, Any]) -> None:
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_stub", stub)

    def _ask(self, op: str, *args: Any, as_handle: bool = False, **kwargs: Any) -> Any:
        return ask(self._session, op, {"handle": self._stub["$handle"]}, list(args), kwargs, as_handle=as_handle)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ask("call", *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._ask("setattr", name, value)

    def __getitem__(self, key: Any) -> Any:
        return self._ask("getitem", key)

    def __len__(self) -> int:
        return int(self._ask("len"))

    def __iter__(self) -> Any:
        return iter(self._ask("iter"))

    def __repr__(self) -> str:
        return f"<student object {self._stub.get('repr', '')[:80]}>"

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        """A stand-in class whose bases are the trusted library classes of the kernel object's MRO,
        so ``isinstance(model, nn.Module)`` answers like it would in the kernel."""
        for qualified in self._stub.get("mro", []):
            base = _trusted_class(qualified)
            if base is not None and base is not object:
                try:
                    return type(self._stub["type"].rsplit(".", 1)[-1], (base,), {})
                except TypeError:  # final classes (bool, function) cannot be subclassed
                    return base
        return Remote


def _trusted_class(qualified: str) -> type | None:
    """Import ``module.Class`` in the judge, only from library modules."""
    module, _, name = qualified.rpartition(".")
    if module.split(".")[0] not in _TRUSTED_MODULES:
        return None
    while module:
        try:
            obj: Any = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
            return obj if isinstance(obj, type) else None
        except (ImportError, AttributeError):
            module, _, head = module.rpartition(".")
            name = f"{head}.{name}"
    return None


def _student_error(err: StudentError) -> StudentError:
    """Re-type a kernel exception so that ``except ValueError`` in a test catches a student's ValueError."""
    base = getattr(builtins, err.ename, None)
    if isinstance(base, type) and issubclass(base, Exception) and base is not Exception:
        cls = type(err.ename, (StudentError, base), {"__str__": lambda self: f"{self.ename}: {self.evalue}"})
        return cls(err.ename, err.evalue, err.traceback)
    return err


def ask(session: KernelSession, op: str, target: dict[str, Any], args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None, *, as_handle: bool = False) -> Any:
    """One bridge request with judge-side values encoded and the answer decoded into data or proxies."""
    def handle(value: Any) -> dict[str, Any]:
        if isinstance(value, Remote):
            return {"$handle": value._stub["$handle"]}
        raise TypeError(f"cannot send {type(value).__name__} to the kernel")

    def array_out(npy: bytes) -> dict[str, str]:
        return session.array_file(npy) if len(npy) > bridge.INLINE_BYTES else {"b64": _b64(npy)}

    enc = lambda v: bridge.encode(v, handle=handle, array_out=array_out)  # noqa: E731
    try:
        raw = session.request(op, target, [enc(a) for a in args or []], {k: enc(v) for k, v in (kwargs or {}).items()},
                              as_handle=as_handle)
    except StudentError as err:
        raise _student_error(err) from None
    return bridge.decode(raw, handle=lambda stub: Remote(session, stub))


def _b64(data: bytes) -> str:
    import base64
    return base64.b64encode(data).decode("ascii")


def free_names(source: str) -> set[str]:
    """Names a test reads but never binds (at any level) — the student's names."""
    top = symtable.symtable(source, "<test>", "exec")
    bound: set[str] = set()
    read: set[str] = set()

    def walk(table: symtable.SymbolTable) -> None:
        for sym in table.get_symbols():
            name = sym.get_name()
            if table is top:
                if sym.is_assigned() or sym.is_imported() or sym.is_namespace():
                    bound.add(name)
                if sym.is_referenced():
                    read.add(name)
            elif sym.is_global() and sym.is_referenced():
                read.add(name)
            elif sym.is_declared_global() and sym.is_assigned():
                bound.add(name)
        for child in table.get_children():
            walk(child)

    walk(top)
    return read - bound - set(dir(builtins))


@dataclass
class Outcome:
    """The judgement of one test cell."""

    passed: bool
    message: str          # safe to show the student (no hidden source, no judge traceback)
    detail: str = ""      # for instructors: the judge's traceback
    printed: str = ""     # what a visible test printed


class GraderHelpers:
    """The ``grader`` object hidden tests may use (it exists only in the judge)."""

    def __init__(self, session: KernelSession, context: dict[str, Any]) -> None:
        self._session, self.context = session, context
        self.device: str = context.get("device", "cpu")

    def kernel(self, path: str) -> Any:
        """A library object inside the kernel, e.g. ``grader.kernel("dlmi.train:predict")``."""
        return ask(self._session, "get", {"import": path}, as_handle=True)

    def run(self, code: str) -> None:
        """Execute trusted code in the kernel (e.g. to set a trap); raise if it fails."""
        result = self._session.execute(code, "a graded check", store_history=False, bridge_call=True)
        if result.error:
            raise _student_error(StudentError(result.error["ename"], result.error["evalue"], []))

    @contextlib.contextmanager
    def forbid(self, *paths: str, message: str = "{name} is not allowed here: write it yourself"):
        """While the block runs, calling any of ``paths`` inside the kernel raises ``message`` (every
        reference to them, taken before or after: see :func:`autograder.bridge.forbid`)."""
        self.context.setdefault("ban_messages", set()).update(message.format(name=p) for p in paths)
        self.run(f"__import__('sys').modules['__dlmi_bridge__'].forbid({list(paths)!r}, {message!r}, mark=True)")
        try:
            yield
        finally:
            self.run("__import__('sys').modules['__dlmi_bridge__'].allow(to_mark=True)")

    @contextlib.contextmanager
    def forbid_split(self, split: str, message: str):
        """While the block runs, loading ``split`` with ``dlmi.load_medmnist*`` in the kernel raises ``message``."""
        self.context.setdefault("ban_messages", set()).add(message)
        self.run(f"__import__('sys').modules['__dlmi_bridge__'].forbid_split({split!r}, {message!r}, mark=True)")
        try:
            yield
        finally:
            self.run("__import__('sys').modules['__dlmi_bridge__'].allow(to_mark=True)")

    @contextlib.contextmanager
    def substitute(self, name: str, source: str):
        """While the block runs, the kernel's global ``name`` is the one ``source`` defines (a
        reference helper), so a function that calls it is graded on its own code alone; the
        student's own ``name`` comes back afterwards."""
        saved = f"__dlmi_saved_{name}"
        self.run(f"{saved} = ({name!r} in globals(), globals().get({name!r}))")
        try:
            self.run(source)
            yield
        finally:
            self.run(f"if {saved}[0]:\n    globals()[{name!r}] = {saved}[1]\n"
                     f"else:\n    globals().pop({name!r}, None)\ndel {saved}")

    def data_loads(self) -> list[dict[str, Any]]:
        """Every ``dlmi.load_medmnist*`` call the notebook made (flag, split, cell)."""
        return ask(self._session, "get", {"import": "__dlmi_bridge__:data_loads"})

    def __getattr__(self, name: str) -> Any:
        provider: Callable[..., Any] | None = self.context.get("providers", {}).get(name)
        if provider is None:
            raise AttributeError(f"grader has no helper {name!r}")
        return provider


def bound_names(source: str) -> set[str]:
    """Names a test binds at its top level (assignments, imports, functions, classes)."""
    top = symtable.symtable(source, "<test>", "exec")
    return {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported() or s.is_namespace()}


def judge_test(session: KernelSession, source: str, *, hidden: bool, context: dict[str, Any],
               shared: dict[str, Any] | None = None) -> Outcome:
    """Run one test cell's full source in the judge against the kernel's current state.

    ``shared`` carries what earlier test cells of the notebook defined (as they would in one
    kernel); what this test defines is added to it. Student names are fetched afresh every time.
    """
    namespace: dict[str, Any] = {"__name__": "__test__", **(shared or {})}
    exec(compile(PREAMBLE, "<preamble>", "exec"), namespace)
    namespace["grader"] = GraderHelpers(session, context)
    try:
        return _judge(session, source, hidden, namespace)
    finally:
        if shared is not None:
            with contextlib.suppress(SyntaxError):
                shared.update({k: namespace[k] for k in bound_names(source) if k in namespace})


def _judge(session: KernelSession, source: str, hidden: bool, namespace: dict[str, Any]) -> Outcome:
    out = io.StringIO()
    try:
        code = compile(source, "<test>", "exec")
        for name in sorted(free_names(source) - set(namespace)):
            try:
                namespace[name] = ask(session, "get", {"name": name})
            except StudentError as err:
                if err.ename != "NameError":
                    raise
        with contextlib.redirect_stdout(out):
            exec(code, namespace)
        return Outcome(True, "passed", printed="" if hidden else out.getvalue())
    except SubmissionFailure:
        raise
    except StudentError as err:
        if hidden:
            message = _hidden_error(err, namespace)
        else:
            message = f"your code raised {err.ename}: {err.evalue}\n" + _student_traceback(err.traceback)
        return Outcome(False, message, _judge_traceback(), "" if hidden else out.getvalue())
    except AssertionError as err:
        text = str(err).strip()
        if hidden:
            message = f"a hidden check failed: {text}" if text else "a hidden check failed"
        else:
            message = f"AssertionError: {text}" if text else "AssertionError"
            message += _visible_location(source)
        return Outcome(False, message, _judge_traceback(), "" if hidden else out.getvalue())
    except Exception as err:  # noqa: BLE001 — any other failure of the test is a failed test
        if hidden:  # the message may quote what the student's code returned (and that may quote hidden inputs)
            name = type(err).__name__
            message = f"a hidden check failed with {name}: {_HINTS.get(name, _HINTS['Exception'])}"
        else:
            message = f"{type(err).__name__}: {err}" + _visible_location(source)
        return Outcome(False, message, _judge_traceback(), "" if hidden else out.getvalue())


_HINTS = {
    "TypeError": "check the types your function accepts and returns (tensor or number, list or tuple, dtype)",
    "ValueError": "your code rejected an input it should accept, or returned a value of the wrong kind",
    "RuntimeError": "often shapes or dtypes that do not match in a tensor operation",
    "IndexError": "an index out of range: check the edge cases (sizes of 1, empty inputs, the last element)",
    "KeyError": "a missing key: check the names your function expects and returns",
    "AttributeError": "an attribute that does not exist: check the type of what your function returns",
    "NameError": "a name your code uses is not defined (run every cell of the notebook in order)",
    "ZeroDivisionError": "a division by zero: check the edge cases",
    "NotImplementedError": "the function is not written yet",
    "OverflowError": "a value too large: return less (the grader refuses very large answers)",
    "RecursionError": "too deep a recursion",
    "MemoryError": "out of memory",
    "AssertionError": "an assertion in your own code failed",
    "Exception": "see the visible tests and the lab's text for what is expected",
}


def _hidden_error(err: StudentError, namespace: dict[str, Any]) -> str:
    """What a student sees when their code raised inside a hidden test: the exception's type and a
    generic hint, never its message (it could carry the hidden inputs) — except a ban's own message,
    which the grader wrote and recognises word for word."""
    helpers = namespace.get("grader")
    known = helpers.context.get("ban_messages", set()) if isinstance(helpers, GraderHelpers) else set()
    if err.evalue in known:
        return f"your code raised {err.ename}: {err.evalue}"
    builtin = getattr(builtins, err.ename, None)
    if isinstance(builtin, type) and issubclass(builtin, BaseException):
        return f"your code raised {err.ename} in a hidden check: {_HINTS.get(err.ename, _HINTS['Exception'])}"
    return f"your code raised an exception of its own type in a hidden check: {_HINTS['Exception']}"


def _judge_traceback() -> str:
    return traceback.format_exc(limit=-6)


def _visible_location(source: str) -> str:
    """`` (line N: <code>)`` for the innermost frame of a visible test."""
    frames = [f for f in traceback.extract_tb(__import__("sys").exc_info()[2]) if f.filename == "<test>"]
    if not frames:
        return ""
    lines = source.splitlines()
    n = frames[-1].lineno or 0
    return f"\n  at test line {n}: {lines[n - 1].strip()}" if 0 < n <= len(lines) else ""


def _student_traceback(lines: list[str]) -> str:
    """The kernel traceback without the bridge's own frames."""
    text = "".join(lines)
    kept = [block for block in text.split("  File ") if "<dlmi-bridge>" not in block]
    return "  File ".join(kept).strip()[-1500:]
