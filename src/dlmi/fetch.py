"""``dlmi-data``: fetch MedMNIST files before they are needed, verified, with retries.

    dlmi-data fetch pathmnist bloodmnist      # named flags (--size 64 for larger images)
    dlmi-data fetch --book                    # every flag the book loads
    dlmi-data fetch --labs                    # every flag the labs load
    dlmi-data verify --book                   # only check files already there (no network)
    dlmi-data rehearse --root /tmp/rehearse   # book at real size on FAKE files (make rehearse)

Each file is downloaded by medmnist's own ``download()`` (its URL from ``medmnist.INFO``,
torchvision's ``download_url`` with its tqdm progress bar) into a temporary folder inside the
data root; its MD5 is checked against ``medmnist.INFO`` and its arrays validated once; only
then is it moved into place (one atomic rename). A failed, truncated or wrong download leaves
no file behind and is retried with exponential back-off. A file already in place is trusted
only after its MD5 is checked again (a restored cache may be stale or damaged).

Settings: ``DLMI_DATA_DIR`` (data root), ``DLMI_FETCH_RETRIES`` (attempts, default 5),
``DLMI_FETCH_BACKOFF`` (first wait in seconds, doubled each time, default 5),
``DLMI_DOWNLOAD_TIMEOUT`` (seconds a socket may stall, default 30).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable

import medmnist
from medmnist.info import INFO

from .datasets import (FLAGS_2D, SIZES, CorruptDataError, DataUnavailableError, _suffix,
                       data_root, ensure_valid, mark_verified)
from .runtime import socket_timeout

# The flags whose files are loaded (not only described) by the book and by the labs; tests
# check these lists against the chapters and lab sources.
BOOK_FLAGS = ("pathmnist", "chestmnist", "dermamnist", "bloodmnist", "pneumoniamnist",
              "retinamnist", "breastmnist", "organamnist")
LAB_FLAGS = ("pathmnist", "organamnist")


class FetchError(DataUnavailableError):
    """A file could not be fetched and verified."""


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        return float(value) if value.strip() else default
    except ValueError:
        raise ValueError(f"${name}={value!r} is not a number") from None


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def source(flag: str, size: int = 28) -> tuple[str, str, str]:
    """``(file name, URL, MD5)`` of a MedMNIST file, from ``medmnist.INFO``."""
    suffix = _suffix(size)
    return f"{flag}{suffix}.npz", INFO[flag][f"url{suffix}"], INFO[flag][f"MD5{suffix}"]


def _medmnist_download(flag: str, size: int, folder: Path, timeout: float) -> None:
    """medmnist's own ``download()`` into ``folder`` (without loading a split afterwards)."""
    cls = getattr(medmnist, INFO[flag]["python_class"])
    ds = cls.__new__(cls)  # download() reads only these attributes
    ds.info, ds.size_flag, ds.root = INFO[flag], _suffix(size), str(folder)
    with socket_timeout(timeout):  # medmnist's download() takes no timeout of its own
        ds.download()


def _reason(err: BaseException) -> str:
    """The root cause of a failed download in one line (medmnist wraps it in a long message)."""
    cause = err.__cause__ or err.__context__ or err
    text = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


STALE_AFTER_S = 3600.0


def _remove_stale_downloads(folder: Path, note: Callable[[str], None]) -> None:
    """Remove temporary download folders left by a killed fetch (older than an hour, so a
    concurrent fetch's folder is never touched)."""
    for stale in folder.glob(".download-*"):
        try:
            if stale.is_dir() and time.time() - stale.stat().st_mtime > STALE_AFTER_S:
                shutil.rmtree(stale, ignore_errors=True)
                note(f"removed {stale.name}, left by an interrupted download")
        except OSError:
            pass


def fetch(flag: str, size: int = 28, root: str | os.PathLike | None = None, *,
          retries: int | None = None, backoff: float | None = None,
          timeout: float | None = None, quiet: bool = False,
          log: Callable[[str], None] | None = None) -> Path:
    """Make ``<root>/<flag>[_size].npz`` present and verified; return its path.

    A file already there is kept if its MD5 matches ``medmnist.INFO``; otherwise (or if it is
    missing) the file is downloaded up to ``retries`` times with back-off ``backoff``,
    ``2 * backoff``, … seconds. Raises :class:`FetchError` (a :class:`DataUnavailableError`)
    naming every attempt's failure. ``quiet`` prints only the outcome of a download.
    """
    if flag not in FLAGS_2D:
        raise ValueError(f"Unknown MedMNIST flag {flag!r}; valid 2D flags: {', '.join(FLAGS_2D)}.")
    if size not in SIZES:
        raise ValueError(f"Unknown MedMNIST size {size!r}; valid sizes: {', '.join(map(str, SIZES))}.")
    retries = int(_env_number("DLMI_FETCH_RETRIES", 5)) if retries is None else retries
    backoff = _env_number("DLMI_FETCH_BACKOFF", 5) if backoff is None else backoff
    timeout = _env_number("DLMI_DOWNLOAD_TIMEOUT", 30) if timeout is None else timeout
    if retries < 1:
        raise ValueError(f"retries must be at least 1, got {retries}")
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    note = (lambda msg: None) if quiet else say
    folder = data_root(root)
    name, url, md5 = source(flag, size)
    target = folder / name

    if target.exists():
        got = md5sum(target)
        if got == md5:
            ensure_valid(target, flag, size)
            mark_verified(target, md5)
            note(f"{name}: present in {folder}, {_mb(target.stat().st_size)}, MD5 {md5} verified")
            return target
        say(f"WARNING: {target} has MD5 {got}, not {md5} (medmnist.INFO): downloading it again "
            "(the file stays until a verified copy replaces it)")

    _remove_stale_downloads(folder, note)
    failures: list[str] = []
    for attempt in range(1, retries + 1):
        note(f"{name}: downloading {url} (attempt {attempt}/{retries}) into {folder}")
        start = time.monotonic()
        with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
            fetched = Path(tmp) / name
            try:
                _medmnist_download(flag, size, Path(tmp), timeout)
                if not fetched.exists():
                    raise FileNotFoundError("medmnist's download left no file")
                got = md5sum(fetched)
                if got != md5:
                    raise ValueError(f"MD5 {got} != {md5} after {_mb(fetched.stat().st_size)}")
                ensure_valid(fetched, flag, size)
            except Exception as err:  # noqa: BLE001 (every failure is retried)
                reason = _reason(err)
                if "File not found or corrupted" in reason and fetched.exists():
                    reason = (f"MD5 mismatch: {md5sum(fetched)} != {md5} after "
                              f"{_mb(fetched.stat().st_size)} (truncated or wrong file)")
                failures.append(f"attempt {attempt}: {reason}")
                note(f"{name}: attempt {attempt}/{retries} failed after "
                     f"{time.monotonic() - start:.1f} s: {reason}")
            else:
                os.replace(fetched, target)
                mark_verified(target, md5)
                say(f"{name}: downloaded {_mb(target.stat().st_size)} in "
                    f"{time.monotonic() - start:.1f} s, MD5 {md5} verified -> {target}")
                return target
        if attempt < retries:
            delay = backoff * 2 ** (attempt - 1)
            note(f"{name}: retrying in {delay:g} s")
            time.sleep(delay)
    raise FetchError(
        f"Could not fetch MedMNIST {name} ({'; '.join(failures)}). Check the network and run "
        f"`dlmi-data fetch {flag}{'' if size == 28 else f' --size {size}'}` again, or put {name} "
        f"(MD5 {md5}, from {url}) into {folder} by hand; mode='synthetic' (DLMI_DATA=synthetic) "
        "uses the stand-in instead.")


def verify(flag: str, size: int = 28, root: str | os.PathLike | None = None) -> str:
    """``"ok"``, ``"missing"`` or ``"MD5 <got> != <expected>"`` for a file in place (no network)."""
    name, _, md5 = source(flag, size)
    path = data_root(root) / name
    if not path.exists():
        return "missing"
    got = md5sum(path)
    if got != md5:
        return f"MD5 {got} != {md5}"
    ensure_valid(path, flag, size)
    mark_verified(path, md5)
    return "ok"


def write_fake(flag: str, root: str | os.PathLike, size: int = 28, seed: int = 0) -> Path:
    """A full-size file in MedMNIST's exact format with FAKE content (class-dependent brightness
    plus noise), for rehearsing a real-data build at real size. Its MD5 is not medmnist's, so
    ``dlmi-data verify`` and ``fetch`` reject it; never write one into a real data root."""
    import numpy as np

    meta = INFO[flag]
    multi, n_labels = meta["task"].startswith("multi-label"), len(meta["label"])
    shape = (size, size) if meta["n_channels"] == 1 else (size, size, 3)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in meta["n_samples"].items():
        labels = ((rng.random((n, n_labels)) < 0.1) if multi
                  else rng.integers(0, n_labels, (n, 1))).astype(np.uint8)
        images = np.empty((n, *shape), np.uint8)
        for a in range(0, n, 4096):
            m = min(4096, n - a)
            level = labels[a:a + m, 0].astype(np.int16).reshape((m,) + (1,) * len(shape))
            noise = rng.integers(0, 48, (m, *shape), dtype=np.int16)
            images[a:a + m] = (40 + 12 * level + noise).clip(0, 255).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".npz", delete=False) as tmp:
        np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **arrays as allow_pickle
    target = folder / source(flag, size)[0]
    os.replace(tmp.name, target)
    return target


def rehearse(root: Path, flags: list[str], book: str = "book") -> int:
    """Build the book with ``DLMI_DATA=real`` against full-size fake files under ``root``;
    print each page's execution time and the peak memory of the largest process."""
    import re
    import resource
    import subprocess

    data = root / "data"
    for flag in flags:
        path = data / source(flag)[0]
        if not path.exists():
            start = time.monotonic()
            write_fake(flag, data)
            print(f"{path.name}: FAKE full-size file, {_mb(path.stat().st_size)} in "
                  f"{time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
    env = {**os.environ, "DLMI_DATA": "real", "DLMI_DATA_DIR": str(data)}
    command = [str(Path(sys.executable).with_name("jupyter-book")), "build", book, "--all", "-W",
               "--keep-going", "--path-output", str(root / "site")]
    print("rehearsal:", " ".join(command), file=sys.stderr, flush=True)
    start, times = time.monotonic(), []
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            found = re.search(r"/([^/\s]+)\.\w+: Executed notebook in ([\d.]+) seconds", line)
            if found:
                times.append((found.group(1), float(found.group(2))))
    total = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print("\n| page | executed in (s) |\n|---|---:|")
    for page, seconds in times:
        print(f"| {page} | {seconds:.0f} |")
    print(f"\nbuild: {total:.0f} s wall, rc {proc.returncode}; peak memory of the largest "
          f"process (a kernel): {peak:.2f} GiB")
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dlmi-data", description="Fetch and verify MedMNIST files (MD5 from medmnist.INFO).")
    sub = parser.add_subparsers(dest="command", required=True)
    for command, text in (("fetch", "download missing or damaged files, with retries"),
                          ("verify", "check the files already there, without the network")):
        p = sub.add_parser(command, help=text, description=text)
        p.add_argument("flags", nargs="*", metavar="FLAG", help=f"2D flags: {', '.join(FLAGS_2D)}")
        p.add_argument("--book", action="store_true", help=f"the book's flags ({', '.join(BOOK_FLAGS)})")
        p.add_argument("--labs", action="store_true", help=f"the labs' flags ({', '.join(LAB_FLAGS)})")
        p.add_argument("--size", type=int, default=28, choices=SIZES, help="image size (default 28)")
        p.add_argument("--root", help="data root (default $DLMI_DATA_DIR, else ~/.medmnist)")
        if command == "fetch":
            p.add_argument("--retries", type=int, help="attempts per file (default $DLMI_FETCH_RETRIES or 5)")
            p.add_argument("--backoff", type=float, help="first wait in s, doubled (default 5)")
    p = sub.add_parser("rehearse", help="build the book against full-size FAKE files (make rehearse)",
                       description="Write full-size files in MedMNIST's format with fake content "
                       "under ROOT/data (never the real data root), build the book with "
                       "DLMI_DATA=real against them, print per-page times and peak memory.")
    p.add_argument("--root", required=True, help="a scratch folder, not a real data root")
    p.add_argument("--book-dir", default="book")
    args = parser.parse_args(argv)
    if args.command == "rehearse":
        scratch = Path(args.root).expanduser().resolve()
        real_roots = {data_root(None).resolve(), (Path.home() / ".medmnist").resolve()}
        if scratch in real_roots or (scratch / "data") in real_roots:
            parser.error(f"{scratch} is a real data root: fake files must live elsewhere")
        return rehearse(scratch, list(dict.fromkeys(BOOK_FLAGS + LAB_FLAGS)), args.book_dir)
    flags = list(dict.fromkeys(args.flags + list(BOOK_FLAGS if args.book else ())
                               + list(LAB_FLAGS if args.labs else ())))
    if not flags:
        parser.error("name at least one FLAG, or --book / --labs")
    unknown = [f for f in flags if f not in FLAGS_2D]
    if unknown:
        parser.error(f"unknown flag(s) {', '.join(unknown)}; valid 2D flags: {', '.join(FLAGS_2D)}")
    root = data_root(args.root)
    print(f"dlmi-data {args.command}: {len(flags)} file(s) at size {args.size} in {root}",
          file=sys.stderr, flush=True)
    failed = []
    start = time.monotonic()
    for flag in flags:
        name = source(flag, args.size)[0]
        if args.command == "verify":
            try:
                state = verify(flag, args.size, root)
            except CorruptDataError as err:
                state = str(err)
            print(f"{name}: {state}", file=sys.stderr, flush=True)
            if state != "ok":
                failed.append(name)
            continue
        try:
            fetch(flag, args.size, root, retries=args.retries, backoff=args.backoff)
        except DataUnavailableError as err:
            print(f"ERROR: {err}", file=sys.stderr, flush=True)
            failed.append(name)
    done = len(flags) - len(failed)
    print(f"dlmi-data {args.command}: {done}/{len(flags)} verified in {time.monotonic() - start:.1f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
