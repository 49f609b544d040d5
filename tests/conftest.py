"""Shared fixtures: an isolated data root and a machine with the network switched off."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest


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
