"""The kernels' copy of a data set keeps what is not a split (the stand-in's generator version), so
dlmi inside a kernel accepts the copy instead of trying to remake it on a read-only view."""
from pathlib import Path

import numpy as np

from autograder import data


def test_kernel_copy_keeps_the_standin_version(tmp_path: Path) -> None:
    arrays = {"train_labels": np.ones((3, 1), np.uint8), "test_labels": np.ones((2, 1), np.uint8),
              "standin_version": np.array(7)}
    np.savez(tmp_path / "src.npz", **arrays)
    with np.load(data.kernel_copy(tmp_path / "src.npz", tmp_path / "view" / "src.npz", ["train"])) as z:
        assert int(z["standin_version"]) == 7
        assert (z["train_labels"] == 1).all() and (z["test_labels"] == 0).all()
