"""The stand-in callout: one per page, plain words, wrapped, nothing when the data are real."""
from __future__ import annotations

import pytest

import dlmi.datasets
from dlmi import display


def test_no_callout_when_every_flag_is_real(monkeypatch, capsys):
    monkeypatch.setattr(dlmi.datasets, "resolve_mode", lambda flag, size=28: "real")
    assert display.data_notice("pathmnist", "bloodmnist") is None
    assert capsys.readouterr().err == ""


def test_one_callout_names_the_synthetic_flags_and_what_real_images_look_like(monkeypatch, capsys):
    def resolve(flag, size=28):
        print(f"NOTICE: real MedMNIST {flag!r} could not be had (/root/.medmnist)",
              file=__import__("sys").stderr)
        print("a warning that is not the notice", file=__import__("sys").stderr)
        return "synthetic" if flag != "chestmnist" else "real"

    monkeypatch.setattr(dlmi.datasets, "resolve_mode", resolve)
    notice = display.data_notice("pathmnist", "chestmnist", "breastmnist")
    err = capsys.readouterr().err
    assert "NOTICE" not in err and err.count("a warning that is not the notice") == 3
    assert notice.flags == ["pathmnist", "breastmnist"]
    html, text = notice._repr_html_(), repr(notice)
    assert html.count("dlmi-standin") == 1 and "synthetic" in html
    for words in ("PathMNIST", "BreastMNIST", "H&amp;E-stained", "ultrasound", "28×28"):
        assert words in html
    assert "ChestMNIST" not in html and "/root" not in html
    assert max(len(line) for line in text.splitlines()) <= display.NOTICE_WIDTH


def test_every_2d_flag_has_a_description_of_its_real_images():
    assert set(display.REAL_LOOK) == set(dlmi.datasets.FLAGS_2D)


def test_a_callout_needs_a_flag():
    with pytest.raises(ValueError, match="at least one"):
        display.StandinNotice([])
