"""Device choice and seeding."""
from __future__ import annotations

import pytest
import torch

import dlmi


def test_env_overrides_device(monkeypatch):
    monkeypatch.setenv("DLMI_DEVICE", "cpu")
    assert dlmi.device() == torch.device("cpu")


def test_default_device_is_best_available(monkeypatch):
    monkeypatch.delenv("DLMI_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert dlmi.device().type == expected


@pytest.mark.parametrize("value", ["tpu", "gpu"])
def test_bad_device_names_the_valid_ones(monkeypatch, value):
    monkeypatch.setenv("DLMI_DEVICE", value)
    with pytest.raises(ValueError, match="cuda, mps, cpu"):
        dlmi.device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_requested_without_gpu_is_an_error(monkeypatch):
    monkeypatch.setenv("DLMI_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        dlmi.device()


def test_seed_everything_repeats_random_draws():
    dlmi.seed_everything(7)
    a = torch.rand(3)
    gen = dlmi.seed_everything(7)
    assert torch.equal(a, torch.rand(3))
    assert torch.equal(torch.rand(2, generator=gen), torch.rand(2, generator=torch.Generator().manual_seed(7)))


def test_socket_timeout_is_restored_even_after_an_error():
    import socket

    from dlmi.runtime import socket_timeout

    before = socket.getdefaulttimeout()
    with pytest.raises(KeyError), socket_timeout(3.5):
        assert socket.getdefaulttimeout() == 3.5
        raise KeyError("boom")
    assert socket.getdefaulttimeout() == before
