"""``dlmi-data fetch``: medmnist's own download against a local HTTP server that serves files
in MedMNIST's exact format, failing, truncating or serving the wrong bytes on demand."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from medmnist.info import INFO

import dlmi
from dlmi import datasets, fetch

FLAG = "breastmnist"


def medmnist_bytes(flag: str = FLAG, seed: int = 0) -> bytes:
    """An npz in MedMNIST's format with the real split sizes (random content, test data)."""
    rng = np.random.default_rng(seed)
    n_classes = len(INFO[flag]["label"])
    arrays = {}
    for split, n in INFO[flag]["n_samples"].items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, n_classes, (n, 1), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


class Server:
    """A local file server: ``fail_first`` requests get 503, ``mode`` is ``ok``, ``truncate``
    (announces the full length, sends half) or ``wrong`` (another valid file)."""

    def __init__(self, body: bytes):
        self.body, self.wrong = body, medmnist_bytes(seed=1)
        self.fail_first, self.mode, self.requests = 0, "ok", 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests += 1
                if server.requests <= server.fail_first:
                    self.send_error(503, "archive busy")
                    return
                data = server.wrong if server.mode == "wrong" else server.body
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if server.mode == "truncate" else data)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/{FLAG}.npz?download=1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setenv("DLMI_FETCH_BACKOFF", "0")
    monkeypatch.setenv("DLMI_DOWNLOAD_TIMEOUT", "10")


@pytest.fixture
def server(monkeypatch, data_dir):
    body = medmnist_bytes()
    srv = Server(body)
    monkeypatch.setitem(INFO[FLAG], "url", srv.url)  # medmnist reads its URL and MD5 from INFO
    monkeypatch.setitem(INFO[FLAG], "MD5", hashlib.md5(body).hexdigest())
    datasets._verified.clear()
    yield srv
    srv.close()


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name != ".verified") if root.exists() else []


def test_fetch_downloads_verifies_and_stamps(server, data_dir, capsys):
    path = fetch.fetch(FLAG)
    assert path == data_dir / f"{FLAG}.npz" and path.read_bytes() == server.body
    err = capsys.readouterr().err
    assert f"MD5 {INFO[FLAG]['MD5']} verified" in err and "downloaded" in err
    stamp = json.loads((data_dir / ".verified" / f"{FLAG}.npz.json").read_text())
    assert stamp["md5"] == INFO[FLAG]["MD5"] and stamp["size"] == len(server.body)
    requests = server.requests
    assert fetch.fetch(FLAG) == path  # present: its MD5 is checked again, no request made
    assert server.requests == requests
    assert "present" in capsys.readouterr().err
    assert leftovers(data_dir) == [f"{FLAG}.npz"]


def test_fetch_retries_a_failing_server(server, data_dir, capsys):
    server.fail_first = 2  # an attempt fails at its first request (medmnist's redirect check)
    path = fetch.fetch(FLAG, retries=3)
    assert path.read_bytes() == server.body
    err = capsys.readouterr().err
    assert "attempt 1/3 failed" in err and "503" in err and "attempt 2/3 failed" in err
    assert "attempt 3/3" in err and "verified" in err


def test_fetch_gives_up_loudly_and_leaves_nothing(server, data_dir):
    server.fail_first = 10**6
    with pytest.raises(fetch.FetchError, match=r"attempt 1: .*503.*attempt 2: .*503") as err:
        fetch.fetch(FLAG, retries=2)
    assert "dlmi-data fetch breastmnist" in str(err.value) and INFO[FLAG]["MD5"] in str(err.value)
    assert isinstance(err.value, dlmi.DataUnavailableError)
    assert leftovers(data_dir) == []


@pytest.mark.parametrize("mode", ["truncate", "wrong"])
def test_bad_transfer_never_leaves_a_file(mode, server, data_dir):
    server.mode = mode
    with pytest.raises(fetch.FetchError, match="MD5 mismatch") as err:
        fetch.fetch(FLAG, retries=2)
    if mode == "truncate":
        assert f"after {len(server.body) // 2 / 1e6:.1f} MB" in str(err.value)
    assert leftovers(data_dir) == [], "a failed or partial download must leave no file"
    server.mode = "ok"  # the next attempt works and lands the verified file
    assert fetch.fetch(FLAG, retries=1).read_bytes() == server.body


def test_damaged_file_in_place_is_replaced_only_by_a_verified_copy(server, data_dir, capsys):
    data_dir.mkdir(parents=True)
    damaged = data_dir / f"{FLAG}.npz"
    damaged.write_bytes(server.body[:1000])
    server.fail_first = 10**6
    with pytest.raises(fetch.FetchError):
        fetch.fetch(FLAG, retries=1)
    assert "WARNING" in capsys.readouterr().err and damaged.read_bytes() == server.body[:1000]
    server.fail_first = 0
    assert fetch.fetch(FLAG, retries=1).read_bytes() == server.body


def test_load_in_real_mode_fetches_through_the_same_path(server, data_dir):
    ds = dlmi.load_medmnist(FLAG, "val", mode="real")
    assert ds.data_mode == "real" and len(ds) == 78
    assert (data_dir / ".verified" / f"{FLAG}.npz.json").exists()


def test_cli_fetch_and_verify(server, data_dir, capsys):
    assert fetch.main(["verify", FLAG]) == 1
    assert f"{FLAG}.npz: missing" in capsys.readouterr().err
    assert fetch.main(["fetch", FLAG, "--retries", "2"]) == 0
    assert "1/1 verified" in capsys.readouterr().err
    assert fetch.main(["verify", FLAG]) == 0
    (data_dir / f"{FLAG}.npz").write_bytes(medmnist_bytes(seed=2))
    assert fetch.main(["verify", FLAG]) == 1
    assert "MD5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fetch.main(["fetch"])
    with pytest.raises(SystemExit):
        fetch.main(["fetch", "nosuchmnist"])


def test_cli_reports_each_failure_and_exits_nonzero(server, data_dir, capsys):
    server.fail_first = 10**6
    assert fetch.main(["fetch", FLAG, "--retries", "1"]) == 1
    err = capsys.readouterr().err
    assert "ERROR: Could not fetch MedMNIST breastmnist.npz" in err and "FAILED: breastmnist.npz" in err


def _loaded_flags(sources: list[str]) -> set[str]:
    flags = set()
    for text in sources:
        flags |= set(re.findall(r"(?:load_medmnist(?:_tensors)?|resolve_mode)\(\s*\"([a-z]+)\"", text))
        flags |= set(re.findall(r"FLAG\s*=\s*\"([a-z]+)\"", text))
        for tour in re.findall(r"tour\s*=\s*\[([^\]]*)\]", text):
            flags |= set(re.findall(r"\"([a-z]+)\"", tour))
    return flags


def test_book_and_lab_flag_lists_cover_what_they_load():
    repo = Path(__file__).resolve().parents[1]
    book = _loaded_flags([p.read_text() for p in sorted((repo / "book").glob("*.md"))])
    labs = _loaded_flags([
        "".join("".join(c["source"]) for c in json.loads(p.read_text())["cells"])
        for p in sorted((repo / "solutions").glob("*/*.ipynb"))])
    assert book and labs
    assert book <= set(fetch.BOOK_FLAGS), f"book loads {sorted(book - set(fetch.BOOK_FLAGS))}"
    assert labs <= set(fetch.LAB_FLAGS), f"labs load {sorted(labs - set(fetch.LAB_FLAGS))}"


def test_publish_fetches_in_its_own_step_before_the_book_build():
    import yaml

    repo = Path(__file__).resolve().parents[1]
    wf = yaml.safe_load((repo / ".github/workflows/publish.yml").read_text())
    runs = [str(step.get("run", "")) for job in wf["jobs"].values() for step in job.get("steps", [])]
    fetch_at = [i for i, r in enumerate(runs) if re.search(r"\bmake\b.*\bdata\b|dlmi-data fetch", r)]
    book_at = [i for i, r in enumerate(runs) if re.search(r"\bmake\b.*\bbook\b|jupyter-book build", r)]
    assert fetch_at and book_at, "publish must fetch MedMNIST (make data) and build the book"
    assert max(fetch_at) < min(book_at) and not set(fetch_at) & set(book_at), \
        "the fetch must be its own step, before the book build"
    makefile = (repo / "Makefile").read_text()
    assert re.search(r"^data:.*\n\t.*dlmi-data fetch --book --labs", makefile, re.M)


def test_fake_full_size_file_validates_but_never_passes_as_medmnist(tmp_path, data_dir):
    path = fetch.write_fake(FLAG, tmp_path / "fake")
    datasets._validate(path, FLAG)  # MedMNIST's exact format, real split sizes
    assert fetch.md5sum(path) != INFO[FLAG]["MD5"]
    assert fetch.verify(FLAG, root=tmp_path / "fake").startswith("MD5 ")
    with pytest.raises(SystemExit):  # the rehearsal refuses to write into a real data root
        fetch.main(["rehearse", "--root", str(data_dir)])
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert re.search(r"^rehearse:.*\n\t.*dlmi-data rehearse --root", makefile, re.M)


def test_folders_left_by_a_killed_fetch_are_removed_but_not_a_running_one(server, data_dir):
    import os
    import time

    data_dir.mkdir(parents=True)
    stale, fresh = data_dir / ".download-killed", data_dir / ".download-running"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / f"{FLAG}.npz").write_bytes(b"partial")
    old = time.time() - 2 * fetch.STALE_AFTER_S
    os.utime(stale, (old, old))
    fetch.fetch(FLAG, retries=1)
    assert not stale.exists() and fresh.exists()
