"""Real images bundled in pip packages load offline with the expected geometry and units."""
from __future__ import annotations

import numpy as np
import pytest

from dlmi import samples


@pytest.mark.parametrize("name, shape", [
    ("ct_small", (128, 128)),
    ("mr_small", (64, 64)),
    ("ultrasound_cine", (30, 240, 320, 3)),
    ("shepp_logan", (256, 256)),
    ("ihc", (512, 512, 3)),
    ("retina", (1411, 1411, 3)),
    ("brain_epi", (128, 96, 24, 2)),
])
def test_accessor_loads_offline(name, shape, offline):
    image = getattr(samples, name)()
    assert image.shape == shape
    assert np.isfinite(image).all() and image.std() > 0
    assert name in samples.SOURCES


def test_ct_is_in_hounsfield_units(offline):
    hu = samples.ct_small()
    assert hu.min() == -896 and hu.max() == 1167  # stored values × 1 − 1024
    assert samples.ct_pixel_spacing() == pytest.approx((0.661468, 0.661468))


def test_ultrasound_is_decoded_to_rgb(offline):
    frame = samples.ultrasound_cine()[5]
    dark = frame[frame[..., 0] < 10]
    # Undecoded YBR black is (0, 128, 128); decoded RGB black is (0, 0, 0).
    assert len(dark) > 1000 and dark[:, 1:].mean() < 20
