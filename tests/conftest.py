"""Shared fixtures: an isolated data root and a machine with the network switched off; and the
grouping that lets ``make test`` run the suite in parallel (``pytest -n auto --dist loadgroup``)."""
from __future__ import annotations

import inspect
import socket
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _shared_fixtures(item: pytest.Item) -> list[str]:
    """This suite's own fixtures wider than one test that ``item`` uses, as ``file::name``
    (module or class scope: ``test_file.name``) or ``name`` (package or session scope)."""
    info = getattr(item, "_fixtureinfo", None)
    names = []
    for name in getattr(item, "fixturenames", ()):
        defs = info.name2fixturedefs.get(name) if info else None
        if not defs or defs[-1].scope == "function":
            continue
        try:
            where = Path(inspect.getfile(defs[-1].func)).resolve()
        except (TypeError, OSError):
            continue
        if TESTS not in where.parents:
            continue  # pytest's own (tmp_path_factory, ...) or a plugin's: cheap
        names.append(f"{where.stem}.{name}" if defs[-1].scope in ("module", "class") else name)
    return sorted(names)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that share an expensive module- or session-scoped fixture (a class graded once, a
    course built once, a lab loaded once) go to the same xdist worker, so the fixture is made once
    and two workers never build it side by side; every other test is spread freely. Done by
    fixture rather than by hand-written marks, so new tests and new files are grouped too; an
    explicit ``@pytest.mark.xdist_group`` wins."""
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    uses = {}
    for item in items:
        if item.get_closest_marker("xdist_group") is None and (shared := _shared_fixtures(item)):
            uses[item] = shared
            for other in shared[1:]:  # tests that share any fixture end up in one group
                parent[find(other)] = find(shared[0])
    for item, shared in uses.items():
        item.add_marker(pytest.mark.xdist_group(find(shared[0])))
    if getattr(config.option, "loadgroup", False):  # an xdist worker under --dist loadgroup
        for item in items:
            groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                             for m in item.iter_markers("xdist_group")})
            if groups and "@" not in item.nodeid:
                _tag_nodeid(item, "_".join(groups))


def _tag_nodeid(item: pytest.Item, group: str) -> None:
    """Put ``@group`` at the end of the test's node id, which is what xdist's scheduler groups by.
    pytest-xdist 3.8 does it by setting ``item._nodeid``, which pytest 9.2 no longer reads (the id
    lives in ``item._id``), so without this every test would be scheduled alone."""
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # an older pytest: xdist's own hook does it
        return
    item._id = NodeId.parse(f"{item.nodeid}@{group}")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty MedMNIST data root (``DLMI_DATA_DIR``), mode from arguments only."""
    root = tmp_path / "medmnist"
    monkeypatch.setenv("DLMI_DATA_DIR", str(root))
    monkeypatch.delenv("DLMI_DATA", raising=False)
    monkeypatch.setenv("DLMI_STANDIN_FRACTION", "0.01")
    return root


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse every outgoing connection, as on a machine without network."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the 'offline' test fixture")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
