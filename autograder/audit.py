"""Static audit of a hand-in's code cells, on the grader's side: tampering with the grader or the
interpreter puts the hand-in into **review** (its score is kept for the instructor, not published).

The bans and traps the grader installs inside the student's kernel hold against ordinary code
(every alias of a banned operator ends in the trap at torch's dispatcher), but code that reaches
into the interpreter — the bridge module, ``sys.modules``, ``gc``, ``ctypes``, torch's dispatcher
internals, frames, code objects, ``builtins`` — could undo them from inside. Such code has no place
in a lab, so this audit reads every code cell of the rebuilt notebook (the student's cells; test
cells are restored from the source) and reports what it finds. A finding does not change a mark:
the instructor decides with ``dlmi-grader review LAB STUDENT --accept|--reject``.
"""
from __future__ import annotations

import ast
from typing import Any
from collections.abc import Iterable

# imports that no lab needs and that reach into the interpreter or the grader
IMPORTS = {
    "ctypes": "loads ctypes (raw memory and C calls)", "_ctypes": "loads ctypes (raw memory and C calls)",
    "cffi": "loads cffi (raw memory and C calls)", "gc": "loads gc (reaches every object of the interpreter)",
    "importlib": "loads importlib (re-imports or swaps modules)",
    "builtins": "loads builtins (the interpreter's own names)",
    "__builtin__": "loads builtins", "marshal": "loads marshal (code objects)", "dis": "loads dis (code objects)",
    "torch._C": "reaches torch._C (torch's internals: the dispatcher and its bans)",
    "torch.library": "loads torch.library (re-registers torch's operators)",
    "torch.utils._python_dispatch": "loads torch's dispatch-mode internals",
    "torch._ops": "reaches torch's operator registry", "torch.overrides": "loads torch.overrides",
    "__dlmi_bridge__": "loads the grader's bridge module", "autograder": "loads the grader's package",
    "_thread": "loads _thread", "pty": "loads pty",
}
# attribute names that reach into the interpreter, the grader's traps or other code's frames
ATTRIBUTES = {
    "_C": "reaches torch._C (torch's internals)", "library": "reaches torch.library",
    "__code__": "rewrites or reads a code object", "__globals__": "reaches a function's globals",
    "__builtins__": "reaches the interpreter's builtins", "__closure__": "reaches a closure",
    "__subclasses__": "walks the class tree (a classic sandbox escape)", "__bases__": "changes a class's bases",
    "__mro__": "walks a class's MRO", "f_back": "walks the call stack", "f_globals": "reads another frame's globals",
    "f_locals": "reads another frame's locals", "f_builtins": "reads another frame's builtins",
    "gi_frame": "reaches a generator's frame", "tb_frame": "reaches a traceback's frame",
    "cr_frame": "reaches a coroutine's frame", "_getframe": "walks the call stack",
    "meta_path": "changes the import system",
    "path_hooks": "changes the import system", "settrace": "installs a tracer", "setprofile": "installs a profiler",
    "addaudithook": "installs an audit hook", "modules": "reaches sys.modules (the grader's bridge lives there)",
    "_destroy": "undoes an operator registration", "_python_dispatch": "reaches torch's dispatch modes",
    "_dispatch_get_all_op_names": "reaches torch's dispatcher",
}
CALLS = {"exec": "runs code built at run time (exec)", "eval": "runs code built at run time (eval)",
         "compile": "compiles code at run time", "__import__": "imports by a computed name (__import__)",
         "breakpoint": "starts a debugger", "globals": "reads the notebook's globals() table"}
STRINGS = ("__dlmi_bridge__", "dlmi_bridge", "dlmi-bridge", "dlmi-ban", "_dispatch_", "torch._C")
IPYTHON_OK = {"run_line_magic", "run_cell_magic", "system", "getoutput"}
# assignments to attributes of imported modules that are configuration, not tampering
SETTINGS_OK = ("torch.backends.", "matplotlib.", "warnings.", "pd.options.", "pandas.options.", "np.random.")


def _python(source: str) -> str:
    """The cell as Python (IPython magics become calls)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
        return TransformerManager().transform_cell(source)
    except Exception:  # noqa: BLE001 — the audit reads what it can
        return source


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _flagged_import(name: str) -> str | None:
    for prefix, why in IMPORTS.items():
        if name == prefix or name.startswith(prefix + "."):
            return why
    return None


# the usual names of modules, bound by a lab's set-up cell
DEFAULT_MODULES = {"torch": "torch", "np": "numpy", "F": "torch.nn.functional", "nn": "torch.nn", "sys": "sys",
                   "optim": "torch.optim", "dlmi": "dlmi"}


def _parse(source: str) -> ast.AST | None:
    try:
        return ast.parse(_python(source))
    except SyntaxError:
        return None  # the kernel reports it when the cell runs


def module_names(trees: Iterable[ast.AST | None]) -> dict[str, str]:
    """Local name → module it stands for, over all cells (a cell may use what an earlier one imported)."""
    modules = dict(DEFAULT_MODULES)
    for tree in trees:
        if tree is not None:
            _collect(tree, modules)
    return modules


def scan_source(source: str, modules: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """``(line, what)`` for every finding in one cell."""
    tree = _parse(source)
    if tree is None:
        return []
    modules = dict(modules or DEFAULT_MODULES)
    _collect(tree, modules)
    return _scan(tree, modules)


def _collect(tree: ast.AST, modules: dict[str, str]) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                modules[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                    alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"


def _is_shell(node: ast.AST, shells: set[str]) -> bool:
    """``get_ipython()`` or a name bound to it."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "get_ipython":
        return True
    return isinstance(node, ast.Name) and node.id in shells


def _scan(tree: ast.AST, modules: dict[str, str]) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    shells = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and _is_shell(node.value, set())
              for t in node.targets if isinstance(t, ast.Name)}

    def add(node: ast.AST, what: str) -> None:
        found.append((getattr(node, "lineno", 0), what))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                why = _flagged_import(alias.name)
                if why:
                    add(node, why)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            for alias in node.names:
                why = _flagged_import(base) or _flagged_import(f"{base}.{alias.name}")
                if why:
                    add(node, why)
                elif alias.name in ATTRIBUTES and base.split(".")[0] in ("torch", "sys", "inspect"):
                    add(node, ATTRIBUTES[alias.name])
        elif isinstance(node, ast.Attribute):
            if node.attr in ATTRIBUTES:
                if node.attr == "modules" and not (isinstance(node.value, ast.Name) and
                                                   modules.get(node.value.id) == "sys"):
                    continue  # model.modules() is a torch method
                if node.attr == "library" and _dotted(node.value) not in ("torch",) and not (
                        isinstance(node.value, ast.Name) and modules.get(node.value.id) == "torch"):
                    continue
                add(node, ATTRIBUTES[node.attr])
            if _is_shell(node.value, shells) and node.attr not in IPYTHON_OK:
                add(node, f"reaches the kernel's shell (get_ipython().{node.attr})")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in CALLS:
                add(node, CALLS[node.func.id])
            elif node.func.id in ("setattr", "delattr") and node.args and isinstance(node.args[0], ast.Name) \
                    and node.args[0].id in modules:
                add(node, f"patches the library {modules[node.args[0].id]} ({node.func.id})")
            elif node.func.id == "getattr" and len(node.args) >= 2 and isinstance(node.args[0], ast.Name) \
                    and node.args[0].id in modules and not isinstance(node.args[1], ast.Constant):
                add(node, f"reads a computed name of the library {modules[node.args[0].id]} (getattr)")
        elif isinstance(node, ast.Name) and node.id == "get_ipython" and isinstance(node.ctx, ast.Load):
            pass  # judged where it is used (above)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            hit = next((s for s in STRINGS if s in node.value), None)
            if hit:
                add(node, f"names the grader's internals ({hit!r})")
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                dotted = _dotted(target) if isinstance(target, ast.Attribute) else None
                if not dotted:
                    continue
                head = dotted.split(".")[0]
                if head in modules and not (modules[head] + dotted[len(head):]).startswith(SETTINGS_OK) \
                        and not dotted.startswith(SETTINGS_OK):
                    add(node, f"replaces {modules[head]}{dotted[len(head):]} (a library's own name)")
    return sorted(set(found))


def scan(cells: Iterable[tuple[str, str]]) -> list[str]:
    """Findings over ``(where, source)`` pairs: ``"cell 5, line 2: loads ctypes (...)"``."""
    cells = list(cells)
    trees = [_parse(source) for _, source in cells]
    modules = module_names(trees)
    out = []
    for (where, _), tree in zip(cells, trees, strict=False):
        for line, what in (_scan(tree, modules) if tree is not None else []):
            out.append(f"{where}, line {line}: {what}")
    return out


def notebook_cells(nb: Any, is_test: Any) -> list[tuple[str, str]]:
    """The code cells of a rebuilt notebook that come from the student (not the restored test cells)."""
    return [(f"cell {i + 1}", c.source) for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and not is_test(c)]
