"""The wire between the trusted judge and the untrusted student kernel.

This module has two users and no imports from the rest of the package:

* the **kernel** (untrusted): the grader executes this file's source inside the student's
  kernel as the module ``__dlmi_bridge__``; :func:`serve` answers one request (call a student
  function, read an attribute, iterate, ...) and publishes the answer as display data of type
  :data:`MIME`;
* the **judge** (trusted): decodes those answers with :func:`decode`, which only ever builds
  plain data — JSON values and numeric arrays read with ``allow_pickle=False`` — or opaque
  handles. Nothing the kernel sends is executed or unpickled by the judge.

Values that cannot travel as data (a model, a generator) stay in the kernel under a handle.
"""
from __future__ import annotations

import base64
import functools
import io
import json
import os
from typing import Any
from collections.abc import Callable

MIME = "application/x-dlmi-bridge+json"
INLINE_BYTES = 1 << 16           # arrays larger than this go judge → kernel through a file
MAX_ITEMS = 100_000              # longest list/iteration sent back
LARGE_BYTES = 8 << 20            # a variable bigger than this is fetched as a handle (index it instead)
MAX_ANSWER_BYTES = 64 << 20      # an answer larger than this is refused before it is built
_NUMERIC_KINDS = set("biufc")    # bool, int, uint, float, complex

_handles: dict[int, Any] = {}
_next_handle = [0]
data_loads: list[dict[str, Any]] = []


# ------------------------------------------------------------------------------ array payloads
def _npy_bytes(array: Any) -> bytes:
    import numpy as np
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def _npy_load(data: bytes) -> Any:
    import numpy as np
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(f"refusing array of dtype {array.dtype}")
    return array


def _tensor_to_numpy(tensor: Any) -> tuple[Any, str]:
    """A CPU numpy copy of ``tensor`` and its torch dtype name (bfloat16/half travel as float32)."""
    import torch
    dtype = str(tensor.dtype).replace("torch.", "")
    t = tensor.detach().to("cpu")
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    if t.is_complex() or t.dtype.is_floating_point or t.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16,
                                                                  torch.int32, torch.int64):
        return t.resolve_conj().resolve_neg().numpy(), dtype
    raise TypeError(f"tensor dtype {tensor.dtype} cannot be sent")


def _torch_dtype(name: str) -> Any:
    import torch
    allowed = {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
               "complex64", "complex128"}
    if name not in allowed:
        raise TypeError(f"unknown tensor dtype {name!r}")
    return getattr(torch, name)


# ------------------------------------------------------------------------------ encoding
_NOT_MINE = object()  # an encoder's answer for a value of another type


def _inline_array(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


class _Encoding:
    """One answer being encoded: how to make a handle and an array stub, and the bytes left to spend."""

    def __init__(self, handle: Callable[[Any], dict], array_out: Callable[[bytes], dict] | None,
                 budget: list[int] | None) -> None:
        self.handle, self.stub, self.budget = handle, array_out or _inline_array, budget

    def spend(self, n: int) -> None:
        if self.budget is not None:
            self.budget[0] -= n
            if self.budget[0] < 0:
                raise OverflowError("the value is too large to send to the grader: return less")

    def value(self, value: Any, depth: int) -> Any:
        if depth > 20:
            return self.handle(value)
        for encoder in _ENCODERS:
            out = encoder(self, value, depth)
            if out is not _NOT_MINE:
                return out
        return self.handle(value)


def _encode_scalar(enc: _Encoding, value: Any, depth: int) -> Any:
    if value is None or type(value) in (bool, str):
        enc.spend(len(value) if type(value) is str else 8)
        return value
    if type(value) is int:
        enc.spend(8 if abs(value) < 2**53 else 1 + value.bit_length() // 3)
        return value if abs(value) < 2**53 else {"$bigint": str(value)}
    if type(value) is float:
        enc.spend(24)
        return {"$float": repr(value)}
    return _NOT_MINE


def _encode_tensor(enc: _Encoding, value: Any, depth: int) -> Any:
    if not (type(value).__module__.startswith("torch") and type(value).__name__ in ("Tensor", "Parameter")):
        return _NOT_MINE
    try:
        enc.spend(int(value.numel()) * max(4, value.element_size()) * 4 // 3)  # its base64, before any copy
        array, dtype = _tensor_to_numpy(value)
        return {"$tensor": enc.stub(_npy_bytes(array)), "dtype": dtype, "device": str(value.device)}
    except TypeError:
        return enc.handle(value)


def _encode_ndarray(enc: _Encoding, value: Any, depth: int) -> Any:
    if not (type(value).__module__ == "numpy" and hasattr(value, "dtype")
            and getattr(value.dtype, "kind", "O") in _NUMERIC_KINDS):
        return _NOT_MINE
    enc.spend(int(getattr(value, "nbytes", 0)) * 4 // 3)
    return {"$ndarray": enc.stub(_npy_bytes(value)), "scalar": type(value).__name__ != "ndarray"}


def _encode_sequence(enc: _Encoding, value: Any, depth: int) -> Any:
    if not (isinstance(value, (list, tuple)) and len(value) <= MAX_ITEMS
            and (type(value) in (list, tuple) or type(value).__name__ == "Size")):
        return _NOT_MINE
    enc.spend(2 * len(value))
    return {"$list" if isinstance(value, list) else "$tuple": [enc.value(v, depth + 1) for v in value]}


def _encode_dict(enc: _Encoding, value: Any, depth: int) -> Any:
    if not (type(value) is dict and len(value) <= MAX_ITEMS):
        return _NOT_MINE
    enc.spend(4 * len(value))
    return {"$dict": [[enc.value(k, depth + 1), enc.value(v, depth + 1)] for k, v in value.items()]}


_ENCODERS = (_encode_scalar, _encode_tensor, _encode_ndarray, _encode_sequence, _encode_dict)


def encode(value: Any, *, handle: Callable[[Any], dict], array_out: Callable[[bytes], dict] | None = None,
           _depth: int = 0, budget: list[int] | None = None) -> Any:
    """Encode ``value`` for the wire; what is not data becomes ``handle(value)``.

    ``array_out(npy_bytes)`` returns the JSON stub for an array (inline base64 by default).
    ``budget`` (one int in a list) is the number of bytes the whole answer may still take: an answer
    that would be larger raises :class:`OverflowError` before its arrays are copied. Each kind of
    value has its encoder (``_encode_scalar``, ``_encode_tensor``, ...), tried in turn.
    """
    return _Encoding(handle, array_out, budget).value(value, _depth)


def decode(obj: Any, *, handle: Callable[[dict], Any], array_in: Callable[[dict], bytes] | None = None) -> Any:
    """Rebuild a value from the wire; ``handle(stub)`` makes the object for a handle stub.

    Used by the judge on the kernel's answers: only data is built, nothing is executed.
    """
    def rec(o: Any) -> Any:
        return decode(o, handle=handle, array_in=array_in)

    read = array_in or (lambda stub: base64.b64decode(stub["b64"], validate=True))
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj
    if not isinstance(obj, dict) or len(obj) == 0:
        raise TypeError(f"malformed wire value of type {type(obj).__name__}")
    if "$float" in obj:
        return float(obj["$float"])
    if "$bigint" in obj:
        return int(obj["$bigint"])
    if "$list" in obj:
        return [rec(v) for v in obj["$list"]]
    if "$tuple" in obj:
        return tuple(rec(v) for v in obj["$tuple"])
    if "$dict" in obj:
        return {_hashable(rec(k)): rec(v) for k, v in obj["$dict"]}
    if "$ndarray" in obj:
        array = _npy_load(read(obj["$ndarray"]))
        return array[()] if obj.get("scalar") else array
    if "$tensor" in obj:
        import torch
        array = _npy_load(read(obj["$tensor"]))
        return torch.from_numpy(array.copy()).to(_torch_dtype(str(obj["dtype"])))
    if "$handle" in obj:
        return handle(obj)
    raise TypeError(f"malformed wire value with keys {sorted(obj)[:5]}")


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(key)
    return key


# ------------------------------------------------------------------------------ kernel side
def _kernel_handle(value: Any) -> dict:
    _next_handle[0] += 1
    _handles[_next_handle[0]] = value
    cls = type(value)
    mro = [f"{c.__module__}.{c.__qualname__}" for c in getattr(cls, "__mro__", (cls,))]
    text = _short_repr(value)
    return {"$handle": _next_handle[0], "type": f"{cls.__module__}.{cls.__qualname__}", "mro": mro,
            "callable": callable(value), "repr": text[:300]}


def _short_repr(value: Any) -> str:
    """At most ~300 characters describing ``value``, never building the full repr of a big container."""
    import reprlib
    try:
        if isinstance(value, (list, tuple, dict, set, frozenset, str, bytes, bytearray)) and len(value) > 1000:
            return f"<{type(value).__qualname__} of {len(value)} items>"
        short = reprlib.Repr()
        short.maxstring = short.maxother = 300
        return short.repr(value)[:300]
    except Exception:  # a student's __repr__ may raise
        return f"<{type(value).__qualname__}>"


def _kernel_arg(stub: dict) -> bytes:
    if "file" in stub:
        path = os.path.join(os.environ["DLMI_BRIDGE_IO"], os.path.basename(stub["file"]))
        with open(path, "rb") as fh:
            return fh.read()
    return base64.b64decode(stub["b64"])


def _resolve(target: dict, user_ns: dict) -> Any:
    if "name" in target:
        name = target["name"]
        if name not in user_ns:
            raise NameError(f"name {name!r} is not defined in your notebook")
        return user_ns[name]
    if "handle" in target:
        return _handles[target["handle"]]
    if "import" in target:
        import importlib
        import types
        module, _, attr = target["import"].partition(":")
        # "__main__" is the notebook's own namespace (where grader.run() defines things)
        obj = types.SimpleNamespace(**user_ns) if module == "__main__" else importlib.import_module(module)
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
        return obj
    raise ValueError(f"bad target {target!r}")


def _kernel_decode(obj: Any) -> Any:
    return decode(obj, handle=lambda stub: _handles[stub["$handle"]], array_in=_kernel_arg)


def serve(request_json: str) -> None:
    """Answer one judge request inside the kernel and publish the answer as :data:`MIME`."""
    from IPython import get_ipython
    from IPython.display import publish_display_data
    request = json.loads(request_json)
    answer: dict[str, Any] = {"id": request["id"]}
    try:
        target = _resolve(request["target"], get_ipython().user_ns)
        op = request["op"]
        args = [_kernel_decode(a) for a in request.get("args", [])]
        kwargs = {k: _kernel_decode(v) for k, v in request.get("kwargs", {}).items()}
        if op == "get":
            value = target
            if getattr(value, "nbytes", 0) > LARGE_BYTES and hasattr(value, "shape"):
                request["as_handle"] = True
        elif op == "call":
            value = target(*args, **kwargs)
        elif op == "getattr":
            value = getattr(target, args[0])
        elif op == "setattr":
            setattr(target, args[0], args[1])
            value = None
        elif op == "getitem":
            value = target[args[0]]
        elif op == "len":
            value = len(target)
        elif op == "iter":
            value = []
            for item in target:
                if len(value) == MAX_ITEMS:
                    raise OverflowError(f"more than {MAX_ITEMS} items")
                value.append(item)
        elif op == "release":
            for h in args:
                _handles.pop(h, None)
            value = None
        else:
            raise ValueError(f"unknown op {op!r}")
        answer["value"] = _kernel_handle(value) if request.get("as_handle") else \
            encode(value, handle=_kernel_handle, budget=[MAX_ANSWER_BYTES])
        answer["ok"] = True
    except BaseException as err:  # noqa: BLE001 — report everything, including SystemExit
        import traceback
        answer.update(ok=False, ename=type(err).__name__, evalue=str(err)[:2000],
                      traceback=traceback.format_exception(type(err), err, err.__traceback__)[-12:])
    publish_display_data({MIME: json.dumps(answer)})


def install_data_audit() -> None:
    """Record every ``dlmi.load_medmnist*`` call (flag, split, cell) in :data:`data_loads`."""
    import functools

    import dlmi
    from IPython import get_ipython

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def audited(flag: str, split: str, *args: Any, **kwargs: Any) -> Any:
            data_loads.append({"function": fn.__name__, "flag": str(flag), "split": str(split),
                               "cell": get_ipython().execution_count})
            return fn(flag, split, *args, **kwargs)
        return audited

    for name in ("load_medmnist", "load_medmnist_tensors"):
        setattr(dlmi, name, wrap(getattr(dlmi, name)))


_forbidden: list[Callable[[], None]] = []   # how to undo each ban of the current check (see allow())
_armed: list[Any] = []                      # the lab's bans for the whole run: kept alive, never undone

_OP_NAMESPACES = ("aten", "mkldnn", "quantized", "_quantized", "torchvision", "prims")
_DISPATCH_KEYS = ("CompositeImplicitAutograd", "CompositeExplicitAutograd", "CompositeExplicitAutogradNonFunctional",
                  "Autograd", "AutogradCPU", "AutogradCUDA", "AutogradOther", "CPU", "CUDA", "MkldnnCPU",
                  "QuantizedCPU", "QuantizedCUDA", "SparseCPU", "SparseCUDA", "MPS", "XPU", "Meta",
                  "BackendSelect", "FuncTorchBatched")


def _ban_ops(patterns: list[str], message: str, keep: list[Any]) -> int:
    """Replace, at torch's dispatcher, every kernel of every operator whose name matches one of
    ``patterns`` (``aten::convolution``, ``torchvision::nms``, ...) by one that raises ``message``.

    Every way to reach such an operator (``F.conv2d`` bound before, ``nn.Conv2d``,
    ``torch.ops.aten.*``, ``torch._C._nn.*``, other threads) ends at the dispatcher, hence in the
    trap. The registrations live as long as the ``torch.library.Library`` objects put in ``keep``."""
    import re
    import warnings

    import torch

    rx = re.compile("|".join(f"(?:{p})" for p in patterns))

    def trap(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(message)

    libraries: dict[str, Any] = {}
    count = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel" is the point
        for name in torch._C._dispatch_get_all_op_names():
            namespace, _, op = name.partition("::")
            if namespace not in _OP_NAMESPACES or not rx.search(op):
                continue
            for key in _DISPATCH_KEYS:
                try:
                    if not torch._C._dispatch_has_kernel_for_dispatch_key(name, key):
                        continue
                    if namespace not in libraries:
                        libraries[namespace] = torch.library.Library(namespace, "IMPL")
                    libraries[namespace].impl(op, trap, key)
                    count += 1
                except Exception:  # noqa: BLE001 — a key this build does not know
                    continue
    keep.extend(libraries.values())
    return count


def _trap_code(freevars: tuple[str, ...], message: str) -> Any:
    """A code object that raises ``message``, with the free variables a function's closure needs."""
    source = "def _outer():\n" + "".join(f"    {v} = None\n" for v in freevars) + \
        "    def _trap(*args, **kwargs):\n" + (f"        ({', '.join(freevars)},)\n" if freevars else "") + \
        f"        raise RuntimeError({message!r})\n    return _trap\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, "<dlmi-ban>", "exec"), namespace)
    return namespace["_outer"]().__code__


def _destroy_all(libs: list[Any]) -> None:
    """Undo a ban of operators: destroy the libraries that registered its kernels."""
    for lib in libs:
        lib._destroy()


def _ban_function(path: str, message: str, undo: list[Callable[[], None]] | None) -> None:
    """Make the function at ``path`` raise ``message``. A Python function gets a new code object, so
    every reference to it taken earlier is trapped too; a torch builtin is banned at the dispatcher."""
    import importlib
    import types

    module, _, attr = path.rpartition(".")
    owner: Any = importlib.import_module(module)
    original = getattr(owner, attr)
    if isinstance(original, types.FunctionType):
        code = original.__code__
        original.__code__ = _trap_code(code.co_freevars, message)
        if undo is not None:
            undo.append(functools.partial(setattr, original, "__code__", code))
        return
    if isinstance(original, types.BuiltinFunctionType) and module.split(".")[0] == "torch":
        keep: list[Any] = []
        if _ban_ops([f"^_?{original.__name__}(\\.|$)"], message, keep):
            if undo is not None:
                undo.append(functools.partial(_destroy_all, keep))
            else:
                _armed.extend(keep)
    setattr(owner, attr, _raiser(message))
    if undo is not None:
        undo.append(functools.partial(setattr, owner, attr, original))


def _raiser(message: str) -> Callable[..., Any]:
    def trap(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(message)
    return trap


class _Blocked:
    """A ``sys.meta_path`` finder that refuses to import the banned modules."""

    def __init__(self, prefixes: list[str], message: str) -> None:
        self.prefixes, self.message = tuple(prefixes), message

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if any(name == p or name.startswith(p + ".") for p in self.prefixes):
            raise ImportError(self.message)
        return None


def _block_modules(prefixes: list[str], message: str, undo: list[Callable[[], None]] | None) -> None:
    """Make ``prefixes`` (``scipy.signal``, ...) unimportable; the functions of those already
    imported raise ``message`` (for the whole run they are also dropped from ``sys.modules``)."""
    import sys
    import types

    finder = _Blocked(prefixes, message)
    sys.meta_path.insert(0, finder)
    if undo is not None:
        undo.append(lambda: sys.meta_path.remove(finder) if finder in sys.meta_path else None)
    for name in [n for n in list(sys.modules) if any(n == p or n.startswith(p + ".") for p in prefixes)]:
        module = sys.modules[name]
        for attr, value in list(vars(module).items()):
            if isinstance(value, types.FunctionType) and value.__module__ == name:
                code = value.__code__
                value.__code__ = _trap_code(code.co_freevars, message)
                if undo is not None:
                    undo.append(functools.partial(setattr, value, "__code__", code))
            elif isinstance(value, types.BuiltinFunctionType) and undo is None:
                setattr(module, attr, _raiser(message))
        if undo is None:
            del sys.modules[name]
            parent, _, child = name.rpartition(".")
            if parent in sys.modules and getattr(sys.modules[parent], child, None) is module:
                delattr(sys.modules[parent], child)


def ban(rule: dict[str, Any], *, scoped: bool) -> None:
    """Install one of the lab's bans: ``{"ops": [regex], "functions": [path], "modules": [name], "message"}``.
    ``scoped`` bans are undone by :func:`allow`; the others hold for the rest of the kernel's life."""
    message = str(rule["message"])
    undo = _forbidden if scoped else None
    if rule.get("ops"):
        keep: list[Any] = []
        _ban_ops(list(rule["ops"]), message, keep)
        if scoped:
            _forbidden.append(functools.partial(_destroy_all, keep))
        else:
            _armed.extend(keep)
    for path in rule.get("functions", []):
        try:
            _ban_function(path, message, undo)
        except (ImportError, AttributeError):
            continue  # a library this kernel does not have cannot be called either
    if rule.get("modules"):
        _block_modules(list(rule["modules"]), message, undo)


def forbid(paths: list[str], message: str, *, mark: bool = False) -> None:
    """Make library functions (``"torch.nn.functional.conv2d"``) raise ``message`` until :func:`allow`
    (with ``mark``, until ``allow(to_mark=True)``, which leaves the bans made before in place)."""
    if mark:
        _forbidden.append(None)  # type: ignore[arg-type]
    for path in paths:
        _ban_function(path, message.format(name=path), _forbidden)


def allow(to_mark: bool = False) -> None:
    """Undo the scoped bans (:func:`forbid`, :func:`forbid_split`, scoped :func:`ban`): all of them,
    or with ``to_mark`` those made since the last mark."""
    while _forbidden:
        undo = _forbidden.pop()
        if undo is None:
            if to_mark:
                return
            continue
        undo()


def forbid_split(split: str, message: str, *, mark: bool = False) -> None:
    """Make every ``dlmi.load_medmnist*`` call for ``split`` raise ``message`` (undo with :func:`allow`)."""
    import functools

    import dlmi
    import dlmi.datasets

    if mark:
        _forbidden.append(None)  # type: ignore[arg-type]
    for owner in (dlmi, dlmi.datasets):
        for attr in ("load_medmnist", "load_medmnist_tensors"):
            original = getattr(owner, attr)

            @functools.wraps(original)
            def guarded(flag: str, which: str, *args: Any, _original: Callable = original, **kwargs: Any) -> Any:
                if which == split:
                    raise RuntimeError(message)
                return _original(flag, which, *args, **kwargs)

            _forbidden.append(functools.partial(setattr, owner, attr, original))
            setattr(owner, attr, guarded)
