"""Sentences about measured results hold on the executed book.

Chapters state results through myst-nb ``glue``: the numbers in the prose and the words that
compare them ("narrows", "below", ...) are glued from the same cell outputs that these tests
read back from the executed book (``book/_build/jupyter_execute``, beside the HTML of
``DLMI_SITE``). Two kinds of checks:

* a claim the demo is designed to make true on the stand-in and on real MedMNIST is asserted
  outright (the regularisation baseline overfits; a re-estimated BatchNorm matches its data;
  the pretrained advantage is largest for the smallest target set; the focal loss moves loss
  away from easy negatives);
* a comparison that depends on the data is printed as a word computed from the numbers, and
  the test recomputes that word from the glued numbers, so prose and output cannot disagree.
"""
from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
HTML = Path(os.environ.get("DLMI_SITE", BOOK / "_build" / "html"))
EXECUTED = HTML.parent / "jupyter_execute"


def glued(page: str) -> dict[str, object]:
    """Every value glued while ``page`` executed, as Python values. myst-nb moves glued
    outputs out of the executed notebook into ``jupyter_execute/<page>.glue.json``."""
    path = EXECUTED / f"{page}.glue.json"
    assert path.is_file(), f"{path} is missing: build the book first (make book)"
    values: dict[str, object] = {}
    for name, output in json.loads(path.read_text()).items():
        text = output["data"]["text/plain"]
        try:
            values[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[name] = text
    return values


def pasted(page: str) -> set[str]:
    """Names the prose of ``page`` pastes with the ``{glue:text}`` role."""
    return set(re.findall(r"\{glue:text\}`([^`:]+)", (BOOK / f"{page}.md").read_text()))


@pytest.mark.parametrize("page", sorted(p.stem for p in BOOK.glob("0*.md") if pasted(p.stem)))
def test_every_glued_name_in_the_prose_is_computed(page: str) -> None:
    missing = pasted(page) - set(glued(page))
    assert not missing, f"{page}: prose pastes {sorted(missing)}, never glued"


def comparison(after: float, before: float, up: str, down: str, same: str) -> str:
    return up if after > before else down if after < before else same


def test_ch3_regularisation_baseline_overfits_and_more_data_narrows_the_gap() -> None:
    g = glued("03-architectures")
    base = g["reg_gap_base"]
    assert g["reg_train"] - g["reg_val"] == pytest.approx(base, abs=1e-9)
    assert base >= g["reg_margin"], (
        f"the baseline does not overfit: gap {base:.3f} < margin {g['reg_margin']}")
    assert g["reg_gap_data"] < base, "four times the images did not narrow the gap"
    for key in ("reg_gap_dropout", "reg_gap_decay", "reg_gap_data"):
        word = "narrows" if g[key] < base else "does not narrow"
        assert g[f"{key}_verb"] == word, f"{key}: prose says {g[f'{key}_verb']!r}"


def test_ch3_imbalance_and_batchnorm_sentences_match_their_numbers() -> None:
    g = glued("03-architectures")
    majority_share = g["pn_test_share"] if g["pn_majority"] == "pneumonia" else 1 - g["pn_test_share"]
    assert g["pn_majority_acc"] == pytest.approx(majority_share, abs=1e-6)
    # by design: re-estimated statistics match the data; stale ones are further off
    assert abs(g["pn_fresh_ratio"] - 1) < 0.1, f"re-estimated variance ratio {g['pn_fresh_ratio']:.3f}"
    assert abs(g["pn_stale_ratio"] - 1) > abs(g["pn_fresh_ratio"] - 1)
    for sentence, after, before in [
            (g["pn_recal_effect"], g["pn_fresh_acc"], g["pn_stale_acc"]),
            (g["pn_weight_effect"], g["pn_weighted_bacc"], g["pn_fresh_bacc"])]:
        word = comparison(round(after, 3), round(before, 3), "raises", "lowers", "leaves")
        assert sentence.startswith(word + " "), f"{sentence!r} for {before:.3f} → {after:.3f}"
        assert (f"from {before:.3f} to {after:.3f}" if word != "leaves" else f"at {after:.3f}") in sentence
    beats = "beats" if g["pn_weighted_acc"] > g["pn_majority_acc"] else "does not beat"
    assert g["pn_beats_majority"] == beats


def test_ch5_pretrained_advantage_is_largest_for_the_smallest_target_set() -> None:
    g = glued("05-transfer-learning")
    assert g["tl_n_small"] < g["tl_n_large"]
    assert g["tl_adv_small"] >= g["tl_adv_large"], (
        f"pretrained advantage {g['tl_adv_small']:+.3f} at {g['tl_n_small']} images < "
        f"{g['tl_adv_large']:+.3f} at {g['tl_n_large']}")
    assert g["tl_helps"] == ("help" if g["tl_adv_small"] > 0 else "do not help")
    for key in ("small", "large"):
        word = comparison(g[f"tl_tune_{key}"], 0.0, "above", "below", "equal to")
        assert g[f"tl_tune_word_{key}"] == word


def test_ch7_focal_loss_moves_loss_off_easy_negatives_and_the_text_says_how_it_scored() -> None:
    g = glued("07-detection")
    assert g["toy_easy_n"] > 1000, "the toy has few easy negatives"
    assert g["toy_easy_share_focal"] < g["toy_easy_share_BCE"] / 10
    for metric in ("ap", "recall"):
        focal, ce = round(g[f"toy_{metric}_focal"], 3), round(g[f"toy_{metric}_bce"], 3)
        assert g[f"toy_{metric}_word"] == comparison(focal, ce, "above", "below", "equal to")


def test_ch5_fine_tuning_moves_the_head_more_than_the_pretrained_layers() -> None:
    g = glued("05-transfer-learning")
    assert g["tl_head_change"] > g["tl_conv_change"]


def test_ch6_sentence_on_plain_bce_matches_the_runs() -> None:
    g = glued("06-segmentation")
    others = [g[f"seg_dice_{k}"] for k in ("weighted", "dice", "bcedice")]
    assert g["seg_bce_rank"] == ("below" if g["seg_dice_bce"] < min(others) else "not below")
    assert g["seg_ratio_bce"] < 0.5 < g["seg_first_ratio_bce"], \
        "plain BCE starts by calling too much 'cell' and ends calling (almost) everything background"


def test_ch8_threshold_and_cnn_beat_the_trivial_area_baseline() -> None:
    g = glued("08-registration-enhancement")
    assert g["area_mae_threshold"] < g["area_mae_mean"]
    assert g["area_mae_cnn"] < g["area_mae_mean"]


def test_ch1_filter_and_pet_sentences_hold() -> None:
    """Deterministic demos (the Shepp–Logan phantom): the sentences under them are asserted."""
    g = glued("01-imaging-physics")
    assert g["ct_rmse_hann_few"] < g["ct_rmse_ramp_few"], "Hann does better with few angles"
    assert g["ct_rmse_ramp_many"] < g["ct_rmse_hann_many"], "the ramp wins with many angles"
    assert g["ct_rmse_none_few"] < min(g["ct_rmse_ramp_few"], g["ct_rmse_hann_few"]), \
        "unfiltered back-projection has the lowest RMSE at the fewest angles"
    assert g["pet_rmse_mlem_low"] < g["pet_rmse_fbp_low"], "MLEM beats FBP at low counts"
    for key in ("fbp", "mlem"):
        assert g[f"pet_rmse_{key}_high"] < g[f"pet_rmse_{key}_low"], "more counts, less error"


def test_ch2_pooling_damps_small_shifts_the_more_the_larger_the_window() -> None:
    g = glued("02-convolution")
    assert g["shift1_none"] > g["shift1_max2"] > g["shift1_max4"] > g["shift1_global"]


def test_ch4_strong_noise_hides_the_lesion_and_blur_lowers_its_contrast() -> None:
    g = glued("04-augmentation")
    assert g["lesion_cnr_original"] > 1.5 > 1.0 > g["lesion_cnr_noise_strong"]
    assert 0 < g["lesion_hu_blur"] < g["lesion_hu_original"]
