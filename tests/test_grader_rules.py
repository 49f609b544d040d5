"""Grader rules that hold by construction: hostile hand-ins of each class, and honest ones.

Classes (each with at least three hostile variants, graded by the real command line):

1. bans — an operator banned for the whole run (lab 2) is trapped by every alias (a reference
   bound before, ``torch.ops.aten``, ``nn.MaxPool2d``, another thread, scipy); code that lifts a
   ban from inside (the bridge through ``sys.modules``, ``gc``, ``exec``) is held for **review**;
2. data splits — the kernel's copy of the data holds no test images (lab 3);
3. held-out secret — the held-out set is not the public seed's, the seed never reaches a kernel;
4. no state crosses hand-ins — a fresh user id per hand-in, keyrings and SysV IPC refused;
5. hidden inputs never echo back through exception messages, exception types or attributes;
6. bridge answers — huge ones refused before ``repr``/copy, all of them counted toward an output limit;
7. the lab texts state what is banned and what is graded.

Fast unit checks come first; the grading runs are module fixtures (one run per lab and class group).
"""
from __future__ import annotations

import copy
import csv
import json
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autograder import audit, bridge, data, grade, judge, notebook  # noqa: E402
from autograder import results as store  # noqa: E402
from autograder.kernel import StudentError  # noqa: E402

LAB2, LAB3 = "lab02-convolution", "lab03-cnn-classifier"
FULL2 = 20.0
SEED = str(secrets.randbelow(10**12) + 10**11)  # this test session's course secret (12 digits)


def _nb(lab: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "solutions" / lab / f"{lab}.ipynb", as_version=4)


def _gid(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def _cell(nb, key: str):
    return next(c for c in nb.cells if _gid(c) == key or c.get("id") == key)


def _answer(nb, gid: str, code: str) -> None:
    _cell(nb, gid).source = textwrap.dedent(code).strip("\n")


LAB3_TRAINING = "EPOCHS, MIN_STEPS, LR, BATCH = 10, 600, 5e-3, 64"


def _short(train) -> str:
    """Lab 3's training cell cut to one epoch (its own line must still be there)."""
    assert LAB3_TRAINING in train.source, "lab 3's training line changed: update LAB3_TRAINING"
    return train.source.replace(LAB3_TRAINING, "EPOCHS, MIN_STEPS, LR, BATCH = 1, 0, 5e-3, 64")


def _insert_after(nb, key: str, code: str) -> None:
    i = next(i for i, c in enumerate(nb.cells) if _gid(c) == key or c.get("id") == key)
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell(textwrap.dedent(code).strip("\n")))


def _grade(lab: str, subs: Path, results: Path, *extra: str, timeout: int = 900) -> dict[str, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DLMI_HELDOUT_SEED": SEED, "DLMI_DATA": "synthetic"}
    run = subprocess.run([sys.executable, "-m", "autograder.cli", "grade", lab, str(subs), "--results", str(results),
                          "--device", "cpu", *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    return {p.stem: json.loads(p.read_text()) for p in (results / lab).glob("*.json")}


def _outputs(results: Path, res: dict, only_hidden: bool = False) -> str:
    nb = nbformat.read(results / res["autograded"], as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and (not only_hidden or notebook.has_hidden(c))]
    return "\n".join(o.get("text", "") + (json.dumps(o["data"]) if o.get("data") else "")
                     + "".join(o.get("traceback", [])) for c in cells for o in c.outputs)


# =============================================================================== fast checks
def test_static_audit_passes_every_reference_solution() -> None:
    for lab in sorted(p.name for p in (ROOT / "solutions").iterdir() if (p / f"{p.name}.ipynb").exists()):
        nb = _nb(lab)
        assert audit.scan(audit.notebook_cells(nb, notebook.is_test)) == [], lab


@pytest.mark.parametrize("source, expect", [
    ("import sys\nsys.modules['__dlmi_bridge__'].allow()", "sys.modules"),
    ("import gc\n[o for o in gc.get_objects()]", "gc"),
    ("import ctypes\nctypes.string_at(0)", "ctypes"),
    ("import importlib\nimportlib.reload(F)", "importlib"),
    ("import builtins\nbuiltins.all = lambda *a: True", "builtins"),
    ("import torch\ntorch.allclose = lambda *a, **k: True", "replaces torch.allclose"),
    ("from torch import _C\n_C._nn.im2col", "torch._C"),
    ("import torch.library as L", "torch.library"),
    ("get_ipython().events.register('pre_run_cell', print)", "get_ipython().events"),
    ("ip = get_ipython()\nip.events.register('post_run_cell', print)", "get_ipython().events"),
    ("exec('x = 1')", "exec"),
    ("f = conv2d.__code__", "code object"),
    ("s = '__dlmi' '_bridge__'", "grader's internals"),
])
def test_static_audit_flags_tampering(source: str, expect: str) -> None:
    found = audit.scan([("cell 1", "import torch\nimport torch.nn.functional as F"), ("cell 2", source)])
    assert found and any(expect in f for f in found), found


def test_static_audit_leaves_ordinary_code_alone() -> None:
    honest = """
%matplotlib inline
import sys, warnings, time
from tqdm.auto import tqdm
import torch, numpy as np
torch.backends.cudnn.benchmark = True
print("progress", file=sys.stderr)
warnings.warn("deprecated")
for _ in tqdm(range(3)):
    time.sleep(0)
layers = list(model.modules()) if 'model' in dir() else []
name = getattr(torch.nn, "ReLU")
"""
    assert audit.scan([("cell 1", honest)]) == []


BAN_PROBE = r'''
import json, sys, threading, warnings
sys.path.insert(0, ROOT)
import nbformat, numpy as np, torch, torch.nn.functional as F
from autograder import bridge
rule = nbformat.read(ROOT + "/solutions/lab02-convolution/lab02-convolution.ipynb", as_version=4).metadata.dlmi.bans[0]
alias = F.conv2d                       # a reference taken before the ban
bridge.ban(rule, scoped=False)
x, w = torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3)
attempts = {
    "alias": lambda: alias(x, w),
    "F.conv2d": lambda: F.conv2d(x, w),
    "aten.convolution": lambda: torch.ops.aten.convolution(x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1),
    "aten.mkldnn_convolution": lambda: torch.ops.aten.mkldnn_convolution(x, w, None, [0, 0], [1, 1], [1, 1], 1),
    "_C._nn.im2col": lambda: torch._C._nn.im2col(x, [3, 3], [1, 1], [0, 0], [1, 1]),
    "nn.Conv2d": lambda: torch.nn.Conv2d(2, 3, 3)(x),
    "nn.MaxPool2d": lambda: torch.nn.MaxPool2d(2)(x),
    "F.unfold": lambda: F.unfold(x, 3),
    "F.pad": lambda: F.pad(x, (1, 1, 1, 1)),
    "conv_transpose2d": lambda: F.conv_transpose2d(x, torch.randn(2, 3, 3, 3)),
    "float64": lambda: F.conv2d(x.double(), w.double()),
    "jit": lambda: torch.jit.trace(lambda a: F.conv2d(a, w), x)(x),
    "numpy.convolve": lambda: np.convolve([1.0, 2.0], [1.0]),
    "scipy.signal": lambda: __import__("scipy.signal"),
    "scipy.ndimage": lambda: __import__("scipy.ndimage").ndimage.correlate(np.ones(3), np.ones(2)),
}
escaped = []
for name, attempt in attempts.items():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attempt()
        escaped.append(name)
    except (RuntimeError, ImportError, AttributeError) as err:
        assert "written from scratch" in str(err) or isinstance(err, AttributeError), (name, err)
box = []
thread = threading.Thread(target=lambda: box.append(attempts["F.conv2d"]))
def in_thread():
    try:
        F.conv2d(x, w)
        box.append("escaped")
    except RuntimeError:
        box.append("trapped")
t = threading.Thread(target=in_thread); t.start(); t.join()
honest = torch.einsum("nchw,oc->nohw", x, torch.randn(3, 2)).shape == (1, 3, 8, 8) and \
    bool(torch.maximum(x, x).equal(x)) and x.new_zeros(1, 2, 10, 10).shape[-1] == 10
print(json.dumps({"escaped": escaped, "thread": box, "honest": honest}))
'''


def test_whole_run_ban_traps_every_alias_and_thread_but_not_plain_arithmetic() -> None:
    run = subprocess.run([sys.executable, "-c", BAN_PROBE.replace("ROOT", repr(str(ROOT)))], capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out == {"escaped": [], "thread": ["trapped"], "honest": True}


def test_scoped_ban_is_undone_to_its_mark_only() -> None:
    code = f"""
import sys; sys.path.insert(0, {str(ROOT)!r})
import torch, torchvision.ops as ops
from autograder import bridge
nms, box_iou = ops.nms, ops.box_iou                       # references taken before
b = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
bridge.ban({{"message": "OUTER", "ops": ["^nms(\\\\.|$)"], "functions": ["torchvision.ops.boxes.nms"]}}, scoped=True)
bridge.forbid(["torchvision.ops.boxes.box_iou"], "INNER {{name}}", mark=True)
def outcome(f):
    try:
        f(); return "ran"
    except RuntimeError as err:
        return str(err)
r = [outcome(lambda: nms(b, torch.ones(1), 0.5)), outcome(lambda: torch.ops.torchvision.nms(b, torch.ones(1), 0.5)),
     outcome(lambda: box_iou(b, b))]
bridge.allow(to_mark=True)
r += [outcome(lambda: box_iou(b, b)), outcome(lambda: nms(b, torch.ones(1), 0.5))]
bridge.allow()
r += [outcome(lambda: nms(b, torch.ones(1), 0.5)), outcome(lambda: torch.ops.torchvision.nms(b, torch.ones(1), 0.5))]
print(r)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == str(
        ["OUTER", "OUTER", "INNER torchvision.ops.boxes.box_iou", "ran", "OUTER", "ran", "ran"])


def test_lab7_bans_hold_only_while_their_tests_run() -> None:
    code = f"""
import sys; sys.path.insert(0, {str(ROOT)!r})
import nbformat, torch, torchvision.ops as ops
import dlmi.detection
from autograder import bridge
bans = nbformat.read({str(ROOT / "solutions/lab07-detection/lab07-detection.ipynb")!r}, as_version=4).metadata.dlmi.bans
saved = {{"nms": ops.nms, "batched_nms": ops.batched_nms, "box_iou": ops.box_iou, "focal": ops.sigmoid_focal_loss,
          "dlmi_nms": dlmi.detection.nms}}
b, s = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.5, 0.5, 2.0, 2.0]]), torch.tensor([0.9, 0.8])
calls = {{"nms": lambda: saved["nms"](b, s, 0.5), "op": lambda: torch.ops.torchvision.nms(b, s, 0.5),
         "batched_nms": lambda: saved["batched_nms"](b, s, torch.zeros(2, dtype=torch.long), 0.5),
         "dlmi_nms": lambda: saved["dlmi_nms"](b, s, 0.5), "box_iou": lambda: saved["box_iou"](b, b),
         "focal": lambda: saved["focal"](s, s)}}
def trapped():
    out = []
    for name, call in calls.items():
        try:
            call()
        except RuntimeError:
            out.append(name)
    return out
result = {{}}
for rule in bans:
    bridge.ban(rule, scoped=True)
    result[rule["tests"][0]] = trapped()
    bridge.allow()
result["after"] = trapped()
print(result)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    # (dlmi.detection.nms uses dlmi.detection.box_iou: it is trapped with it)
    assert run.stdout.strip().splitlines()[-1] == str({"test_box_iou": ["dlmi_nms", "box_iou"],
                                                       "test_nms": ["nms", "op", "batched_nms", "dlmi_nms"],
                                                       "test_focal_loss": ["focal"], "after": []})


def test_seccomp_refuses_keyrings_and_sysv_ipc() -> None:
    code = f"""
import ctypes, os, platform, sys; sys.path.insert(0, {str(ROOT)!r})
from autograder import sandbox
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert sandbox.deny_shared_state()
nr = {{"x86_64": (248, 250, 29, 68), "aarch64": (217, 219, 194, 186)}}[platform.machine()]
out = [libc.syscall(nr[0], b"user", b"k", b"v", 1, -4), libc.syscall(nr[1], 0, -4, 0, 0, 0),
       libc.syscall(nr[2], 0xD1A1, 4096, 0o1666), libc.syscall(nr[3], 0xD1A1, 0o1666)]
print(out, ctypes.get_errno(), os.getpid() == libc.syscall(39 if platform.machine() == "x86_64" else 172))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[-1, -1, -1, -1] 1 True"  # EPERM; other calls still work


def test_a_run_never_hands_out_a_user_id_twice(tmp_path: Path) -> None:
    from autograder.kernel import FRESH_UID_BASE, UID_SPAN, claim_fresh_uid
    locks, used = tmp_path / "locks", tmp_path / "used"
    locks.mkdir()
    # Private locks, so ids at the top of the range: as root a claim kills the id's processes, and
    # a grading run elsewhere on this machine (another test worker) holds the low ids' real locks.
    first = FRESH_UID_BASE + UID_SPAN - 10
    uids = []
    for _ in range(3):
        uid, lock = claim_fresh_uid(locks, used, first)
        uids.append(uid)
        lock.close()  # the hand-in is done: its lock is free, its id is still spent for this run
    other_run = claim_fresh_uid(locks, tmp_path / "used-by-another-run", first)
    other_run[1].close()
    assert len(set(uids)) == 3 and other_run[0] == uids[0]


def test_scrub_removes_only_what_the_user_id_owns(tmp_path: Path) -> None:
    """As root: files given to a sandbox id go, others stay. Without root no file can be given
    away (the uid level needs root anyway): another id's scrub removes none of ours."""
    from autograder.kernel import scrub_uid
    mine, theirs = tmp_path / "planted", tmp_path / "someone_else"
    (tmp_path / "dir").mkdir()
    for path in (mine, tmp_path / "dir" / "deep", theirs):
        path.write_text("x")
    if os.geteuid() != 0:
        assert scrub_uid(299_999, (str(tmp_path),)) == [] and mine.exists() and theirs.exists()
        assert sorted(scrub_uid(os.getuid(), (str(tmp_path),))) == sorted(map(str, (mine, theirs, tmp_path / "dir")))
        return
    for path in (mine, tmp_path / "dir"):
        os.chown(path, 299_999, 299_999)
    removed = scrub_uid(299_999, (str(tmp_path),))
    assert sorted(removed) == sorted([str(mine), str(tmp_path / "dir")]) and theirs.exists()


def test_heldout_secret_file_is_private_stable_and_not_the_public_seed(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_ENV_SEED", None)
    first = data.heldout_seed(tmp_path)
    path = tmp_path / data.SECRET_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert data.heldout_seed(tmp_path) == first != 8_461_937
    monkeypatch.setattr(data, "_ENV_SEED", "12345")
    assert data.heldout_seed(tmp_path) == 12345
    assert data.SECRET_FILE in (ROOT / ".gitignore").read_text().split()


def test_heldout_set_comes_from_the_seed() -> None:
    xa, ya = data.heldout("pathmnist", 28, "synthetic", 200, seed=101)
    xb, yb = data.heldout("pathmnist", 28, "synthetic", 200, seed=202)
    xp, _ = data.heldout("pathmnist", 28, "synthetic", 200, seed=8_461_937)  # the old public seed
    assert not torch_equal(xa, xb) and not torch_equal(xa, xp)
    assert torch_equal(xa, data.heldout("pathmnist", 28, "synthetic", 200, seed=101)[0])


def torch_equal(a, b) -> bool:
    import torch
    return a.shape == b.shape and bool(torch.equal(a, b))


def test_kernel_copy_blanks_every_split_it_may_not_load(tmp_path: Path) -> None:
    import numpy as np
    rng = np.random.default_rng(0)
    arrays = {f"{s}_{k}": rng.integers(1, 255, (n, 4, 4) if k == "images" else (n, 1), dtype=np.uint8)
              for s, n in (("train", 5), ("val", 3), ("test", 4)) for k in ("images", "labels")}
    np.savez(tmp_path / "src.npz", **arrays)
    out = data.kernel_copy(tmp_path / "src.npz", tmp_path / "view" / "src.npz", ["train", "val"])
    with np.load(out) as z:
        assert sorted(z.files) == sorted(arrays)
        for key in z.files:
            assert z[key].shape == arrays[key].shape and z[key].dtype == arrays[key].dtype
            assert (z[key] == 0).all() if key.startswith("test") else (z[key] == arrays[key]).all()


def test_prepare_data_refuses_a_lab_that_loads_the_test_split() -> None:
    with pytest.raises(ValueError, match="held-out"):
        data.prepare_data({"data": {"flag": "pathmnist", "splits": ["train", "test"]}}, ROOT)


class _Helpers(judge.GraderHelpers):
    def __init__(self, context):  # no kernel needed for the message
        self.context = context


@pytest.mark.parametrize("ename, evalue", [("ValueError", "LEAK x=[[1.5, 2.5]]"), ("LEAK_2_3_9_7", ""),
                                           ("RuntimeError", "shape LEAK(2, 3, 9, 7) mismatch")])
def test_hidden_exception_is_reported_by_type_and_hint_only(ename: str, evalue: str) -> None:
    namespace = {"grader": _Helpers({"ban_messages": {"lab 2 is written from scratch: ..."}})}
    message = judge._hidden_error(StudentError(ename, evalue, []), namespace)
    assert "LEAK" not in message and message.startswith("your code raised")
    ban = judge._hidden_error(StudentError("RuntimeError", "lab 2 is written from scratch: ...", []), namespace)
    assert ban.endswith("lab 2 is written from scratch: ...")


def test_bridge_refuses_huge_answers_before_copying_and_reprs_briefly() -> None:
    import time

    import torch
    with pytest.raises(OverflowError, match="too large"):
        bridge.encode(torch.zeros(50_000_000), handle=lambda v: {}, budget=[bridge.MAX_ANSWER_BYTES])
    with pytest.raises(OverflowError):
        bridge.encode(["x" * 1000] * 90_000, handle=lambda v: {}, budget=[bridge.MAX_ANSWER_BYTES])
    huge = [0] * 20_000_000
    t0 = time.monotonic()
    text = bridge._short_repr(huge)
    assert time.monotonic() - t0 < 0.05 and len(text) < 100
    stub = bridge._kernel_handle(huge)
    assert len(stub["repr"]) <= 300
    bridge._handles.clear()


def test_review_is_decided_by_one_command(tmp_path: Path) -> None:
    base = tmp_path / "results"
    res = {"student": "mallory", "lab": LAB2, "status": "graded", "score": 20.0, "max_score": 20.0, "tests": []}
    grade.hold_for_review(res, ["cell 3, line 1: loads ctypes (raw memory and C calls)"])
    assert res["status"].startswith("review: ") and res["score"] is None and res["integrity"]["score"] == 20.0
    other = {**copy.deepcopy(res), "student": "trudy"}
    for r in (res, other):
        (base / LAB2).mkdir(parents=True, exist_ok=True)
        (base / LAB2 / f"{r['student']}.json").write_text(json.dumps(r))
    store.write_csv(base, LAB2)

    def cli(*args: str) -> str:
        run = subprocess.run([sys.executable, "-m", "autograder.cli", "review", LAB2, *args, "--results", str(base)],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        return run.stdout

    assert "2 hand-in(s)" in cli()
    cli("mallory", "--accept")
    cli("trudy", "--reject")
    rows = {r["student"]: r for r in csv.DictReader((base / LAB2 / "grades.csv").read_text().splitlines())}
    assert rows["mallory"]["status"] == "graded" and rows["mallory"]["score"] == "20"
    assert rows["trudy"]["status"].startswith("rejected: ") and rows["trudy"]["score"] == ""
    assert "accepted" in rows["mallory"]["review"] and "rejected" in rows["trudy"]["review"]
    assert "0 hand-in(s)" in cli()


def test_lab_texts_state_their_bans_and_graded_requirements() -> None:
    lab2 = _nb(LAB2)
    text = "\n".join(c.source for c in lab2.cells if c.cell_type == "markdown")
    for module in lab2.metadata.dlmi.bans[0]["modules"][:5]:
        assert module.split(".")[-1] in text, module
    for name in ("F.conv2d", "nn.Conv2d", "torch.ops.aten", "F.unfold", "F.pad", "numpy.convolve", "float64",
                 "review"):
        assert name in text, name
    lab7 = _nb("lab07-detection")
    text7 = "\n".join(c.source for c in lab7.cells if c.cell_type == "markdown")
    for rule in lab7.metadata.dlmi.bans:
        for gid in rule["tests"]:
            assert gid in notebook.lab_ids(lab7)
        for path in rule.get("functions", []):
            short = path.rsplit(".", 1)[-1].lstrip("_")
            if short not in ("box_inter_union", "upcast", "masks_to_boxes", "batched_nms_coordinate_trick",
                             "batched_nms_vanilla"):
                assert short.split("_box_iou")[0] in text7, path
    lab3 = "\n".join(c.source for c in _nb(LAB3).cells if c.cell_type == "markdown")
    assert "blank placeholders" in lab3


# =============================================================================== lab 2: one grading run
WRONG_TYPE_POOL = '''
def max_pool2d(x, kernel_size, stride=None, padding=0):
    raise type("LEAK_" + "_".join(map(str, x.shape)), (Exception,), {})()
'''


def build_lab2(folder: Path) -> dict[str, dict]:
    src = _nb(LAB2)
    cases: dict[str, dict] = {}

    def put(name: str, nb, **expect) -> None:
        nbformat.write(nb, folder / f"{name}.ipynb")
        cases[name] = expect

    def variant(name: str, *, answer: tuple[str, str] | None = None, after: str | None = None, **expect) -> None:
        nb = copy.deepcopy(src)
        if answer:
            _answer(nb, *answer)
        if after:
            _insert_after(nb, "setup", after)
        put(name, nb, **expect)

    conv = ("test_conv2d", "test_conv2d_options", "test_conv2d_hidden", "test_conv2d_hidden_stride",
            "test_conv2d_hidden_padding", "test_conv2d_hidden_dilation", "test_conv2d_hidden_dtype")  # 2 + 6 points
    pool = {"test_max_pool2d", "test_max_pool2d_hidden", "test_max_pool2d_hidden_padding"}  # 1 + 3 points
    transpose = {"test_conv_transpose2d", "test_conv_transpose2d_hidden", "test_conv_transpose2d_hidden_padding"}  # 3
    # ---- 1. bans: every alias of a banned operator fails the affected tests, with the ban's message
    variant("ban_alias_bound_before", after="_conv = F.conv2d", answer=("conv2d", """
        def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
            return _conv(x, weight, bias, stride, padding, dilation)"""), score=FULL2 - 8, failed=set(conv),
            message_has="written from scratch")
    variant("ban_aten_op", answer=("conv2d", """
        def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
            return torch.ops.aten.convolution(x, weight, bias, list(pair(stride)), list(pair(padding)),
                                              list(pair(dilation)), False, [0, 0], 1)"""),
            score=FULL2 - 8, failed=set(conv), message_has="written from scratch")
    variant("ban_other_thread", answer=("conv2d", """
        def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
            import threading
            box = []
            t = threading.Thread(target=lambda: box.append(F.conv2d(x, weight, bias, stride, padding, dilation)))
            t.start(); t.join()
            return box[0]"""), score=FULL2 - 8, failed=set(conv))
    variant("ban_module_class", answer=("max_pool2d", """
        def max_pool2d(x, kernel_size, stride=None, padding=0):
            return torch.nn.MaxPool2d(kernel_size, stride, padding)(x)"""),
            score=FULL2 - 4, failed=pool, message_has="written from scratch")
    variant("ban_scipy", answer=("conv2d", """
        def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
            from scipy.signal import correlate
            raise AssertionError("unreachable")"""), score=FULL2 - 8, failed=set(conv),
            message_has="written from scratch")
    # ---- 1b. lifting a ban from inside: review, the score kept for the instructor (the hidden tests' own
    #      scoped bans of F.conv2d still trap it: the 6 hidden points less)
    lift = """
        def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
            return F.conv2d(x, weight, bias, stride, padding, dilation)"""
    variant("tamper_bridge_modules", after="import sys\nfor _lib in sys.modules['__dlmi_bridge__']._armed:\n"
            "    _lib._destroy()", answer=("conv2d", lift), status="review: tampering?", kept=FULL2 - 6)
    variant("tamper_gc", after="import gc\nfor _o in gc.get_objects():\n    if type(_o).__name__ == 'Library':\n"
            "        _o._destroy()", answer=("conv2d", lift), status="review: tampering?", kept=FULL2 - 6)
    variant("tamper_exec", after="exec(\"import sys as s\\nfor l in s.modules['__dl' + 'mi_bridge__']._armed: "
            "l._destroy()\")", answer=("conv2d", lift), status="review: tampering?", kept=FULL2 - 6)
    # ---- 5. hidden inputs never come back through messages
    variant("echo_message", answer=("conv2d", """
        def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
            raise ValueError(f"LEAK {list(x.shape)} {weight.flatten()[:3].tolist()} {stride} {padding}")"""),
            score=FULL2 - 8, failed=set(conv), hidden_no="LEAK")
    variant("echo_exception_type", answer=("max_pool2d", WRONG_TYPE_POOL), score=FULL2 - 4,
            failed=pool, hidden_no="LEAK")
    variant("echo_attribute", answer=("conv_transpose2d", """
        class _Sly:
            def __init__(self, x):
                self.x = x
            @property
            def shape(self):
                raise KeyError(f"LEAK {tuple(self.x.shape)} {self.x.flatten()[:4].tolist()}")

        def conv_transpose2d(x, weight, bias=None, stride=1, padding=0):
            return _Sly(x)"""), score=FULL2 - 3, failed=transpose,
            hidden_no="LEAK")
    variant("echo_print", answer=("zero_pad", """
        def zero_pad(x, padding):
            import sys
            print("LEAK", x.shape, padding); print("LEAK", x.flatten()[:3], file=sys.stderr)
            ph, pw = pair(padding)
            out = x.new_zeros(x.shape[0], x.shape[1], x.shape[2] + 2 * ph, x.shape[3] + 2 * pw)
            out[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
            return out"""), score=FULL2, hidden_no="LEAK")
    # ---- 6. bridge answers: huge ones refused quickly, all of them counted
    variant("huge_list", answer=("conv_transpose2d", """
        def conv_transpose2d(x, weight, bias=None, stride=1, padding=0):
            return [0] * 20_000_000"""), score=FULL2 - 3, failed=transpose)
    variant("huge_tensor", answer=("conv_transpose2d", """
        def conv_transpose2d(x, weight, bias=None, stride=1, padding=0):
            return torch.zeros(100_000_000)"""), score=FULL2 - 3,
            failed=transpose, message_has="too large")
    nb = copy.deepcopy(src)  # four functions answer 60 MB each: 8 calls in the tests pass the 256 MB
    for gid in ("conv_output_size", "zero_pad", "max_pool2d", "conv_transpose2d"):
        _answer(nb, gid, f"def {gid}(*args, **kwargs):\n    return 'x' * 60_000_000")
    put("answer_flood", nb, status="failed: output limit exceeded")
    # ---- 3. the held-out secret never reaches a kernel
    variant("env_probe", after=f"""
        import glob, os
        seen = []
        for p in ["/proc/self/environ", "/proc/1/environ", *glob.glob("/proc/[0-9]*/environ")]:
            try:
                if {SEED!r} in open(p, errors="replace").read():
                    seen.append(p)
            except OSError:
                pass
        seen += [k for k, v in os.environ.items() if {SEED!r} in v or "HELDOUT" in k]
        print("SEED_SEEN", seen)""", score=FULL2, output_has="SEED_SEEN []")
    # ---- honest hand-ins: warnings, stderr, tqdm, a magic, another seed — full marks, no review
    put("honest", copy.deepcopy(src), score=FULL2)
    variant("honest_noisy", after="""
        %matplotlib inline
        import sys, warnings
        from tqdm.auto import tqdm
        dlmi.seed_everything(12345)
        for _ in tqdm(range(50), desc="warming up"):
            pass
        print("a harmless message", file=sys.stderr)
        warnings.warn("a deprecated thing")""", score=FULL2)
    return cases


@pytest.fixture(scope="module")
def graded_lab2(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    base = tmp_path_factory.mktemp("rules-lab2")
    subs, results = base / "subs", base / "results"
    subs.mkdir()
    cases = build_lab2(subs)
    out = _grade(LAB2, subs, results, "--memory", "2500")  # the lab's own time limits (120 s, 60 s a cell)
    return cases, out, results


def _lab2_ids() -> list[str]:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        return sorted(build_lab2(Path(tmp)))


@pytest.mark.slow
@pytest.mark.parametrize("name", _lab2_ids())
def test_lab2_hand_in_scores_or_is_flagged_as_stated(graded_lab2: tuple, name: str) -> None:
    cases, results, base = graded_lab2
    res, expect = results[name], cases[name]
    if "status" in expect:
        assert res["status"].startswith(expect["status"]), res["status"]
        assert res["score"] is None, "a hand-in in review or failed has no published score"
        if "kept" in expect:
            assert res["integrity"]["state"] == "pending" and res["integrity"]["score"] == expect["kept"], res
        return
    assert res["status"] == "graded", res["status"]
    assert res["score"] == expect["score"], [(t["grade_id"], t["message"]) for t in res["tests"] if not t["passed"]]
    failed = {t["grade_id"] for t in res["tests"] if not t["passed"]}
    assert failed == expect.get("failed", set())
    if "message_has" in expect:
        hidden_failed = [t for t in res["tests"] if not t["passed"] and t["hidden"]]
        assert hidden_failed and all(expect["message_has"] in t["message"] for t in hidden_failed), \
            [t["message"] for t in hidden_failed]
    if "hidden_no" in expect:
        assert all(expect["hidden_no"] not in t["message"] for t in res["tests"] if t["hidden"])
        assert expect["hidden_no"] not in _outputs(base, res, only_hidden=True)
    if "output_has" in expect:
        assert expect["output_has"] in _outputs(base, res)


@pytest.mark.slow
def test_lab2_each_hand_in_ran_as_its_own_user(graded_lab2: tuple) -> None:
    _, results, _ = graded_lab2
    uids = [r["uid"] for r in results.values() if "uid" in r]
    assert len(uids) == len(set(uids)) >= len(results) - 1


@pytest.mark.slow
def test_lab2_review_csv_keeps_the_score_out_until_accepted(graded_lab2: tuple) -> None:
    _, results, base = graded_lab2
    rows = {r["student"]: r for r in csv.DictReader((base / LAB2 / "grades.csv").read_text().splitlines())}
    for name in ("tamper_bridge_modules", "tamper_gc", "tamper_exec"):
        assert rows[name]["status"].startswith("review: ") and rows[name]["score"] == ""
        assert "tampering?" in rows[name]["review"]
    assert rows["honest"]["review"] == "" and rows["honest"]["score"] == "20"


# =============================================================================== no state crosses hand-ins
PLANT = '''
import ctypes, os, platform
libc = ctypes.CDLL(None, use_errno=True)
nr = {"x86_64": (248, 29), "aarch64": (217, 194)}[platform.machine()]
planted = []
for path in ["/tmp/dlmi_plant", "/dev/shm/dlmi_plant", "/var/tmp/dlmi_plant", os.path.expanduser("~/../dlmi_plant")]:
    try:
        with open(path, "w") as fh:
            fh.write("SECRET")
        os.chmod(path, 0o666)
        planted.append(path)
    except OSError:
        pass
key = libc.syscall(nr[0], b"user", b"dlmi_plant", b"SECRET", 6, -4)      # add_key into the user keyring
if key > 0:
    libc.syscall({"x86_64": 250, "aarch64": 219}[platform.machine()], 5, key, 0x3F3F3F3F)  # everyone may read
    planted.append("keyring")
if libc.syscall(nr[1], 0xD1A1, 4096, 0o1666) >= 0:                      # a SysV segment anyone may attach
    planted.append("sysv-shm")
print("PLANTED", planted, "UID", os.getuid())
'''
READ = '''
import ctypes, glob, os, platform
libc = ctypes.CDLL(None, use_errno=True)
nr = {"x86_64": (249, 29), "aarch64": (218, 194)}[platform.machine()]
found = [p for d in ("/tmp", "/dev/shm", "/var/tmp", os.path.expanduser("~/..")) for p in glob.glob(d + "/*")
         if "dlmi_plant" in p]
if libc.syscall(nr[0], b"user", b"dlmi_plant", None, 0) > 0:
    found.append("keyring")
try:
    if "dlmi_plant" in open("/proc/keys").read():
        found.append("/proc/keys")
except OSError:
    pass
if libc.syscall(nr[1], 0xD1A1, 0, 0) >= 0:
    found.append("sysv-shm")
print("FOUND", found, "UID", os.getuid())
'''


@pytest.fixture(scope="module")
def graded_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    base = tmp_path_factory.mktemp("rules-state")
    subs = base / "subs"
    subs.mkdir()
    for name, code in (("state_1_plant", PLANT), ("state_2_read", READ), ("state_3_read", READ)):
        nb = _nb(LAB2)
        _insert_after(nb, "setup", code)
        nbformat.write(nb, subs / f"{name}.ipynb")
    return _grade(LAB2, subs, base / "results", "--workers", "1"), base / "results"


def _printed(results: Path, res: dict, tag: str) -> str:
    text = _outputs(results, res)
    line = next(line for line in text.splitlines() if line.startswith(tag))
    return line


@pytest.mark.slow
def test_nothing_planted_by_one_hand_in_reaches_the_next(graded_state: tuple) -> None:
    """As root: one sandbox user id per hand-in, keyrings and SysV IPC refused, nothing planted is
    found. Without root there is no sandbox to keep hand-ins apart, and every result says so."""
    results, base = graded_state
    if os.geteuid() != 0:
        assert {r["isolation"] for r in results.values()} == {"none"}, results
        assert all(r["status"].startswith(("graded", "review: ")) for r in results.values())
        return
    plant = _printed(base, results["state_1_plant"], "PLANTED")
    uids = {_printed(base, results[n], "FOUND" if "read" in n else "PLANTED").split("UID")[-1].strip()
            for n in results}
    assert len(uids) == 3, uids  # one user id per hand-in, even in one worker
    assert "keyring" not in plant and "sysv-shm" not in plant, plant
    for name in ("state_2_read", "state_3_read"):
        assert _printed(base, results[name], "FOUND").startswith("FOUND []"), _printed(base, results[name], "FOUND")
        assert results[name]["status"].startswith("review: ")  # ctypes: held for a look, score kept


# =============================================================================== lab 3: splits and held-out
LOOKUP = '''
# no training: a table from the public stand-in's test split, built with the old public seed
from dlmi.standin import make_standin
from medmnist.info import INFO
arrays = make_standin(INFO[FLAG], 28, 1e-9, 8_461_937)
table = {img.tobytes(): int(label) for img, label in zip(arrays["test_images"], arrays["test_labels"].reshape(-1))}


class Lookup(nn.Module):
    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))   # dlmi.train.predict reads the device from a parameter

    def forward(self, x):
        images = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
        out = torch.full((len(x), N_CLASSES), -10.0)
        for i, image in enumerate(images):
            out[i, table.get(image.tobytes(), 0)] = 10.0
        return out


EPOCHS = 1
model, history, best = Lookup(), {"train_loss": [1.0], "val_acc": [0.0], "val_auc": [0.9]}, 0
'''
PROBE = '''
import glob, os
import numpy as np
import medmnist
import dlmi.datasets
probe = {}
for path in glob.glob(os.environ.get("DLMI_DATA_DIR", "/nowhere") + "/**/*.npz", recursive=True):
    with np.load(path) as z:
        probe[os.path.basename(path)] = sorted(k for k in z.files if z[k].any())
x_a = dlmi.datasets.load_medmnist_tensors(FLAG, "test")[0]              # not through the package's names
x_b = dlmi.load_medmnist(FLAG, "test").imgs
print("PROBE", probe, "TEST_NONZERO", bool(x_a.any()) or bool(x_b.any()))
'''


@pytest.fixture(scope="module")
def graded_lab3(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    base = tmp_path_factory.mktemp("rules-lab3")
    subs = base / "subs"
    subs.mkdir()
    nb = _nb(LAB3)
    _cell(nb, "train").source = LOOKUP
    nbformat.write(nb, subs / "heldout_public_seed.ipynb")
    nb = _nb(LAB3)
    _insert_after(nb, "setup", PROBE)
    train = _cell(nb, "train")
    train.source = _short(train)
    nbformat.write(nb, subs / "split_probe.ipynb")
    nb = _nb(LAB3)
    _cell(nb, "setup").source = _cell(nb, "setup").source.replace("dlmi.seed_everything(0)", "dlmi.seed_everything(7)")
    train = _cell(nb, "train")
    train.source = train.source.replace("dlmi.seed_everything(0)", "dlmi.seed_everything(7)\n"
                                        "import warnings; warnings.warn('an honest warning')")
    nbformat.write(nb, subs / "honest_other_seed.ipynb")
    return _grade(LAB3, subs, base / "results", "--workers", "2", timeout=1500), base / "results"


@pytest.mark.slow
def test_lab3_kernel_data_holds_no_test_images(graded_lab3: tuple) -> None:
    results, base = graded_lab3
    line = _printed(base, results["split_probe"], "PROBE")
    assert line.endswith("TEST_NONZERO False"), line
    assert "'train_images'" in line and "'val_images'" in line and "test_images" not in line, line


@pytest.mark.slow
def test_lab3_public_seed_rebuilds_nothing(graded_lab3: tuple) -> None:
    results, _ = graded_lab3
    res = results["heldout_public_seed"]
    assert res["status"] == "graded", res["status"]
    outcome = {t["grade_id"]: t for t in res["tests"]}
    assert not outcome["test_model_hidden_acc"]["passed"]
    assert "held-out accuracy" in outcome["test_model_hidden_acc"]["message"]


@pytest.mark.slow
def test_lab3_honest_hand_in_with_another_seed_gets_full_marks(graded_lab3: tuple) -> None:
    results, _ = graded_lab3
    res = results["honest_other_seed"]
    assert res["status"] == "graded" and res["score"] == res["max_score"], \
        [(t["grade_id"], t["message"]) for t in res["tests"] if not t["passed"]]
