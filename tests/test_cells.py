"""The synthetic cells data set: determinism, consistency of masks and boxes, arguments."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou, masks_to_boxes

from dlmi import SyntheticCells, collate_detection


def test_deterministic_in_seed_and_index():
    a, b, c = SyntheticCells(n=4, seed=1), SyntheticCells(n=4, seed=1), SyntheticCells(n=4, seed=2)
    assert torch.equal(a[3][0], b[3][0]) and torch.equal(a[3][1]["masks"], b[3][1]["masks"])
    assert not torch.equal(a[3][0], c[3][0])


def test_masks_boxes_labels_agree():
    ds = SyntheticCells(n=20, size=64, cells=(1, 6), seed=0)
    for image, target in ds:
        assert image.shape == (1, 64, 64) and image.min() >= 0 and image.max() <= 1
        masks, boxes, labels = target["masks"], target["boxes"], target["labels"]
        assert len(masks) == len(boxes) == len(labels) >= 1
        assert torch.equal(boxes.as_subclass(torch.Tensor), masks_to_boxes(masks.bool()))
        assert set(labels.tolist()) <= {1, 2}
        union = masks.bool().any(0)
        assert torch.equal(target["semantic"] > 0, union)
        assert masks.sum(0).max() <= 1, "instances do not overlap"


def test_overlap_limit_is_respected():
    ds = SyntheticCells(n=10, cells=(5, 8), max_overlap=0.0, seed=3)
    for _, target in ds:
        iou = box_iou(target["boxes"], target["boxes"]).fill_diagonal_(0)
        assert iou.max() <= 0.0 + 1e-6


def test_empty_images_allowed():
    image, target = SyntheticCells(n=1, cells=(0, 0))[0]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape[0] == 0
    assert target["semantic"].sum() == 0


def test_tensors_and_collate():
    ds = SyntheticCells(n=3, size=32, radius=(3, 6))
    x, y = ds.tensors()
    assert x.shape == y.shape == (3, 1, 32, 32) and set(y.unique().tolist()) <= {0.0, 1.0}
    images, targets = collate_detection([ds[0], ds[1]])
    assert len(images) == len(targets) == 2


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"size": 8}, {"cells": (3, 1)}, {"radius": (5, 40)},
                                    {"max_overlap": 2.0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SyntheticCells(**kwargs)
