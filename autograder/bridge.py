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
import io
import json
import os
from typing import Any, Callable

MIME = "application/x-dlmi-bridge+json"
INLINE_BYTES = 1 << 16           # arrays larger than this go judge → kernel through a file
MAX_ITEMS = 100_000              # longest list/iteration sent back
LARGE_BYTES = 8 << 20            # a variable bigger than this is fetched as a handle (index it instead)
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
def encode(value: Any, *, handle: Callable[[Any], dict], array_out: Callable[[bytes], dict] | None = None,
           _depth: int = 0) -> Any:
    """Encode ``value`` for the wire; what is not data becomes ``handle(value)``.

    ``array_out(npy_bytes)`` returns the JSON stub for an array (inline base64 by default).
    """
    def rec(v: Any) -> Any:
        return encode(v, handle=handle, array_out=array_out, _depth=_depth + 1)

    if _depth > 20:
        return handle(value)
    if value is None or type(value) in (bool, str):
        return value
    if type(value) is int:
        return value if abs(value) < 2**53 else {"$bigint": str(value)}
    if type(value) is float:
        return {"$float": repr(value)}
    stub = array_out or (lambda data: {"b64": base64.b64encode(data).decode("ascii")})
    module = type(value).__module__
    if module.startswith("torch") and type(value).__name__ in ("Tensor", "Parameter"):
        try:
            array, dtype = _tensor_to_numpy(value)
            return {"$tensor": stub(_npy_bytes(array)), "dtype": dtype, "device": str(value.device)}
        except TypeError:
            return handle(value)
    if module == "numpy" and hasattr(value, "dtype") and getattr(value.dtype, "kind", "O") in _NUMERIC_KINDS:
        return {"$ndarray": stub(_npy_bytes(value)), "scalar": type(value).__name__ != "ndarray"}
    if isinstance(value, (list, tuple)) and len(value) <= MAX_ITEMS and (type(value) in (list, tuple) or
                                                                         type(value).__name__ == "Size"):
        return {"$list" if isinstance(value, list) else "$tuple": [rec(v) for v in value]}
    if type(value) is dict and len(value) <= MAX_ITEMS:
        return {"$dict": [[rec(k), rec(v)] for k, v in value.items()]}
    return handle(value)


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
    try:
        text = repr(value)
    except Exception:  # a student's __repr__ may raise
        text = f"<{cls.__qualname__}>"
    return {"$handle": _next_handle[0], "type": f"{cls.__module__}.{cls.__qualname__}", "mro": mro,
            "callable": callable(value), "repr": text[:300]}


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
        answer["value"] = _kernel_handle(value) if request.get("as_handle") else encode(value, handle=_kernel_handle)
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


_forbidden: list[tuple[Any, str, Any]] = []


def forbid(paths: list[str], message: str) -> None:
    """Replace library functions (``"torch.nn.functional.conv2d"``) by traps that raise ``message``."""
    import importlib

    for path in paths:
        module, _, attr = path.rpartition(".")
        owner = importlib.import_module(module)
        original = getattr(owner, attr)

        def trap(*args: Any, _path: str = path, **kwargs: Any) -> Any:
            raise RuntimeError(message.format(name=_path))

        _forbidden.append((owner, attr, original))
        setattr(owner, attr, trap)


def allow() -> None:
    """Undo :func:`forbid`."""
    while _forbidden:
        owner, attr, original = _forbidden.pop()
        setattr(owner, attr, original)


def forbid_split(split: str, message: str) -> None:
    """Make every ``dlmi.load_medmnist*`` call for ``split`` raise ``message`` (undo with :func:`allow`)."""
    import functools

    import dlmi
    import dlmi.datasets

    for owner in (dlmi, dlmi.datasets):
        for attr in ("load_medmnist", "load_medmnist_tensors"):
            original = getattr(owner, attr)

            @functools.wraps(original)
            def guarded(flag: str, which: str, *args: Any, _original: Callable = original, **kwargs: Any) -> Any:
                if which == split:
                    raise RuntimeError(message)
                return _original(flag, which, *args, **kwargs)

            _forbidden.append((owner, attr, original))
            setattr(owner, attr, guarded)
