"""Real medical images that ship inside pip packages, so every page runs offline.

Each accessor returns a NumPy array and names its source in :data:`SOURCES`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pydicom

SOURCES: dict[str, str] = {
    "ct_small": "CT slice, pydicom test file CT_small.dcm (128×128, 0.66 mm pixels)",
    "mr_small": "MR slice, pydicom test file MR_small.dcm (64×64)",
    "ultrasound_cine": "cardiac ultrasound cine loop, pydicom test file examples_ybr_color.dcm (30 frames)",
    "shepp_logan": "Shepp–Logan head phantom, scikit-image",
    "ihc": "immunohistochemistry (IHC) stained tissue, scikit-image",
    "retina": "retinal fundus photograph, scikit-image",
    "brain_epi": "brain EPI MRI volume, nibabel test file example4d.nii.gz",
}


def read_dicom(name: str) -> pydicom.Dataset:
    """Read one of pydicom's bundled test files (raises if it is not bundled locally)."""
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if not isinstance(path, str):
        raise FileNotFoundError(f"pydicom's test file {name} is not installed; reinstall pydicom.")
    return pydicom.dcmread(path)


def to_hu(ds) -> np.ndarray:
    """Stored CT values → Hounsfield units with the file's RescaleSlope and RescaleIntercept."""
    slope = float(getattr(ds, "RescaleSlope", 1.0))
    intercept = float(getattr(ds, "RescaleIntercept", 0.0))
    return ds.pixel_array.astype(np.float32) * slope + intercept


def ct_small() -> np.ndarray:
    """A real CT slice in Hounsfield units, float32 (128, 128)."""
    return to_hu(read_dicom("CT_small.dcm"))


def ct_pixel_spacing() -> tuple[float, float]:
    """Row and column spacing of :func:`ct_small` in millimetres."""
    return tuple(float(s) for s in read_dicom("CT_small.dcm").PixelSpacing)  # type: ignore[return-value]


def mr_small() -> np.ndarray:
    """A real MR slice, float32 (64, 64), scanner units."""
    return read_dicom("MR_small.dcm").pixel_array.astype(np.float32)


def ultrasound_cine() -> np.ndarray:
    """A real cardiac ultrasound loop as RGB uint8 (frames, rows, cols, 3).

    The file is stored as YBR_FULL_422; pydicom converts it to RGB when decoding.
    """
    return read_dicom("examples_ybr_color.dcm").pixel_array


def shepp_logan(size: int = 256) -> np.ndarray:
    """The Shepp–Logan phantom, float64 (size, size) in [0, 1]."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return resize(shepp_logan_phantom(), (size, size), anti_aliasing=True)


def ihc() -> np.ndarray:
    """Immunohistochemistry-stained tissue (DAB + haematoxylin), uint8 (512, 512, 3)."""
    from skimage.data import immunohistochemistry

    return immunohistochemistry()


def retina() -> np.ndarray:
    """A retinal fundus photograph, uint8 (1411, 1411, 3)."""
    from skimage.data import retina as _retina

    return _retina()


def brain_epi() -> np.ndarray:
    """A brain EPI MRI volume, float32 (x, y, slices, time) = (128, 96, 24, 2)."""
    import nibabel as nib
    from nibabel.testing import data_path

    image = nib.load(Path(str(data_path)) / "example4d.nii.gz")
    return np.asarray(image.dataobj, dtype=np.float32)  # type: ignore[attr-defined]  # load() is typed as the base class
