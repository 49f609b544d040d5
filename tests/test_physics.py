"""dlmi.physics: hand-written reconstructions agree with scikit-image, the models behave as physics says."""
import numpy as np
import pytest
from skimage.color import rgb2hed
from skimage.transform import iradon, radon

from dlmi import physics as P
from dlmi import samples


@pytest.fixture(scope="module")
def phantom():
    return samples.shepp_logan(64)


@pytest.mark.parametrize("n_angles", [7, 60])
def test_fbp_from_scratch_equals_iradon(phantom, n_angles):
    theta = P.angles(n_angles)
    sino = radon(phantom, theta=theta, circle=True)
    np.testing.assert_allclose(P.backproject(P.ramp_filter(sino), theta, 64),
                               iradon(sino, theta=theta, circle=True), atol=1e-10)
    np.testing.assert_allclose(P.backproject(sino, theta),
                               iradon(sino, theta=theta, filter_name=None, circle=True), atol=1e-10)


def test_ramp_filter_output_is_padded_to_the_diagonal(phantom):
    sino = P.sinogram(phantom, P.angles(5))
    assert P.ramp_filter(sino).shape == (int(np.ceil(np.sqrt(2) * 64)), 5)


def test_more_angles_reconstruct_better_and_filtering_matters(phantom):
    errs = P.error_vs_angles(phantom, [8, 32, 90], ["ramp", None])
    assert errs["ramp"][0] > errs["ramp"][1] > errs["ramp"][2]
    assert errs["ramp"][2] < 0.5 * errs[None][2]  # unfiltered back-projection stays blurred
    assert P.angles(4).tolist() == [0, 45, 90, 135]


def test_system_matrix_reproduces_the_operator(phantom):
    small = samples.shepp_logan(16)
    mask = P.circle_mask(16)
    small = small * mask
    theta = P.angles(8)
    K = P.system_matrix(lambda u: P.sinogram(u, theta), (16, 16), mask)
    assert K.shape == (16 * 8, mask.sum())
    np.testing.assert_allclose(K @ small[mask], P.sinogram(small, theta).ravel(), atol=1e-12)


def test_kspace_round_trip_and_parseval():
    img = samples.mr_small()
    k = P.to_kspace(img)
    np.testing.assert_allclose(P.from_kspace(k).real, img, atol=1e-3)
    assert np.sum(np.abs(k) ** 2) == pytest.approx(np.sum(img.astype(float) ** 2), rel=1e-6)
    # the DC coefficient sits in the centre
    assert np.unravel_index(np.abs(k).argmax(), k.shape) == (32, 32)


@pytest.mark.parametrize("kind", ["random", "equispaced"])
def test_line_mask_keeps_centre_and_about_one_over_r(kind):
    mask = P.line_mask((128, 128), 4, 0.08, kind=kind, seed=1)
    cols = mask[0]
    assert (mask == cols).all()  # whole phase-encoding lines
    assert cols[60:68].all()
    assert 0.18 < cols.mean() < 0.35
    assert P.line_mask((8, 8), 1).all()
    with pytest.raises(ValueError):
        P.line_mask((8, 8), 0.5)


def test_zero_filled_full_mask_is_exact_and_undersampling_hurts():
    img = samples.mr_small()
    np.testing.assert_allclose(P.zero_filled(img, np.ones(img.shape, bool)), img, atol=1e-3)
    e2 = P.rmse(P.zero_filled(img, P.line_mask(img.shape, 2)), img)
    e8 = P.rmse(P.zero_filled(img, P.line_mask(img.shape, 8)), img)
    assert 0 < e2 < e8


def test_speckle_is_multiplicative():
    flat = np.full((200, 200), 10.0)
    noisy = P.speckle(np.concatenate([flat, 4 * flat], axis=1), looks=4, seed=0)
    left, right = noisy[:, :200], noisy[:, 200:]
    assert left.mean() == pytest.approx(10, rel=0.02)
    assert left.std() == pytest.approx(10 / 2, rel=0.05)  # std = mean / sqrt(L)
    assert right.std() / left.std() == pytest.approx(4, rel=0.05)
    m, s = P.local_mean_std(np.arange(100.0).reshape(10, 10), 3)
    assert m[5, 5] == pytest.approx(55) and s[5, 5] == pytest.approx(np.std([44, 45, 46, 54, 55, 56, 64, 65, 66]))


def test_pet_counts_are_poisson_and_mlem_beats_fbp_at_low_counts(phantom):
    theta = P.angles(30)
    f = P.pet_sinogram(phantom, theta, 1e4, seed=0)
    assert f.sum() == pytest.approx(1e4, rel=0.03)
    assert np.all(f == np.round(f)) and f.min() >= 0
    mask = P.circle_mask(64)
    em = P.rmse(P.fit_scale(P.mlem(f, theta, 15), phantom), phantom, mask)
    fbp = P.rmse(P.fit_scale(P.reconstruct(f, theta), phantom), phantom, mask)
    assert em < fbp
    hi = P.pet_sinogram(phantom, theta, 1e7, seed=0)
    assert P.rmse(P.fit_scale(P.mlem(hi, theta, 15), phantom), phantom, mask) < em


def test_stain_channels_and_tiles():
    rgb = samples.ihc()[:64, :64]
    stains = P.stain_channels(rgb)
    assert set(stains) == {"haematoxylin", "eosin", "DAB"}
    assert all(s.shape == rgb.shape for s in stains.values())
    # the DAB-only image is darkest where rgb2hed finds most DAB
    dab = rgb2hed(rgb)[..., 2]
    darkness = 1 - stains["DAB"].mean(-1)
    assert np.corrcoef(dab.ravel(), darkness.ravel())[0, 1] > 0.9
    t = P.tiles(np.arange(100).reshape(10, 10), 4, 3)
    assert t.shape == (3, 3, 4, 4) and t[1, 2, 0, 0] == 36
    assert P.tile_count(10, 10, 4, 3) == 9
    assert P.tile_count(100_000, 80_000, 256) == 390 * 312
    assert P.tissue_fraction(np.full((4, 4, 3), 255)) == 0.0
    assert P.tissue_fraction(np.zeros((4, 4, 3))) == 1.0


def test_std_vs_mean_tells_multiplicative_from_additive_noise():
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(1, 10, 400), (400, 1))
    mult = P.std_vs_mean(P.speckle(ramp, looks=4, seed=1), size=9, bins=5)
    add = P.std_vs_mean(ramp + rng.normal(0, 1, ramp.shape), size=9, bins=5)
    assert np.all(np.diff(mult[0]) > 0) and np.all(np.diff(add[0]) > 0)
    assert mult[1][-1] > 4 * mult[1][0]             # std grows with the signal
    assert add[1].max() < 1.3 * add[1].min()        # std does not


def test_ct_and_mri_explorers_draw_every_setting():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlmi.widgets import ct_explorer, mri_explorer

    # interactive swallows callback errors, so call the callback itself
    ct = ct_explorer(samples.shepp_logan(64))
    assert ct.kwargs == {"n_angles": 30, "filter_name": "ramp"}
    for filt in ["ramp", "shepp-logan", "hann", "none"]:
        ct.f(n_angles=4, filter_name=filt)
    mri = mri_explorer(samples.mr_small())
    for kind in ["random", "equispaced"]:
        mri.f(acceleration=6.0, kind=kind, center_fraction=0.0)
    assert plt.get_fignums()
    plt.close("all")


def test_window_explorer_and_every_explorer_settles(monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlmi import widgets

    calls = []
    monkeypatch.setattr(widgets, "settle", lambda seconds=0.3: calls.append(seconds))
    image = samples.shepp_logan(64)
    made = [widgets.window_explorer(samples.ct_small()), widgets.ct_explorer(image),
            widgets.mri_explorer(image), widgets.conv_explorer(image)]
    assert len(calls) == len(made), "each explorer pauses once (see dlmi.widgets.settle)"
    assert made[0].kwargs == {"level": 40, "width": 400}
    made[0].f(level=-600, width=1500)
    plt.close("all")
