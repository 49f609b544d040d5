"""dlmi.augment: custom v2 transforms, joint transforms on boxes/masks, laterality, policies."""
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

import dlmi
from dlmi import augment


def test_speckle_and_sobel_touch_images_only():
    img = tv_tensors.Image(torch.rand(1, 16, 16))
    mask = tv_tensors.Mask((torch.rand(16, 16) > 0.5).to(torch.uint8))
    for t in (augment.SpeckleNoise(0.5), augment.Sobel()):
        out_img, out_mask = t(img, mask)
        assert isinstance(out_img, tv_tensors.Image) and out_img.shape == img.shape
        assert torch.equal(out_mask, mask)
        assert out_img.min() >= 0 and out_img.max() <= 1
    assert not torch.equal(augment.SpeckleNoise(0.5)(img), img)


def test_sobel_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(1, 20, 20, dtype=torch.float64)
    ours = augment.Sobel()(x)[0].numpy()
    gx = ndimage.sobel(x[0].numpy(), axis=1, mode="nearest")
    gy = ndimage.sobel(x[0].numpy(), axis=0, mode="nearest")
    ref = (gx**2 + gy**2) ** 0.5
    assert abs(ours - ref / ref.max()).max() < 1e-5


def test_speckle_rejects_integer_images():
    with pytest.raises(TypeError):
        augment.SpeckleNoise()(torch.zeros(1, 4, 4, dtype=torch.uint8))


@pytest.mark.parametrize("degrees", [0.0, 20.0])
def test_joint_transform_keeps_boxes_inside_and_aligned(degrees):
    ds = dlmi.SyntheticCells(12, seed=3)
    t = augment.joint_transform(degrees)
    torch.manual_seed(0)
    for i in range(len(ds)):
        img, target = t(*ds[i])
        boxes, masks = target["boxes"], target["masks"]
        assert len(boxes) == len(target["labels"]) == len(masks)
        assert augment.boxes_inside(boxes, img.shape[-2:])
        tight, b = augment.tight_boxes(masks), boxes.as_subclass(torch.Tensor)
        if degrees == 0:  # flips and 90° rotations move boxes exactly (up to the 1-pixel
            assert (b - tight).abs().max() <= 1  # inclusive-edge convention of masks_to_boxes)
        else:  # a rotated box encloses the rotated object's own box
            assert (b[:, :2] <= tight[:, :2] + 2).all() and (b[:, 2:] >= tight[:, 2:] - 2).all()


def test_flip_moves_boxes_like_pixels():
    img, target = dlmi.SyntheticCells(1, seed=0)[0]
    out, t2 = v2.RandomHorizontalFlip(p=1.0)(img, target)
    assert torch.equal(out, img.flip(-1))
    w = img.shape[-1]
    b = target["boxes"].as_subclass(torch.Tensor)
    assert torch.equal(t2["boxes"].as_subclass(torch.Tensor),
                       torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1))
    # boxes from masks count the last pixel's index, not its far edge: one pixel apart after a flip
    assert torch.equal(augment.tight_boxes(t2["masks"]),
                       t2["boxes"].as_subclass(torch.Tensor) - torch.tensor([1, 0, 1, 0]))


def test_laterality_permutation_on_organamnist_labels():
    labels = dlmi.info("organamnist")["label"]
    perm = augment.laterality_permutation(labels)
    name = {int(k): v for k, v in labels.items()}
    assert name[int(perm[1])] == "femur-right" and name[int(perm[8])] == "lung-left"
    assert name[int(perm[3])] == "heart"
    assert torch.equal(perm[perm], torch.arange(len(labels)))  # an involution
    with pytest.raises(ValueError):
        augment.laterality_permutation({"0": "kidney-left", "1": "liver"})
    flip = augment.LateralityFlip(perm, p=1.0)
    x = torch.rand(1, 8, 8)
    out, lab = flip(x, 4)
    assert torch.equal(out, x.flip(-1)) and int(lab) == 5


def test_augment_batch_draws_per_sample():
    torch.manual_seed(0)
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    out = augment.augment_batch(x, v2.RandomHorizontalFlip())
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert 10 < int(flipped.sum()) < 54


@pytest.mark.parametrize("kind", augment.POLICIES)
def test_policies_keep_shape_and_range(kind):
    x = torch.rand(3, 12, 12)
    y = augment.policy(kind, rgb=True)(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    with pytest.raises(ValueError):
        augment.policy("everything")


def test_gallery_runs_on_grey_and_rgb():
    for rgb, c in ((True, 3), (False, 1)):
        x = tv_tensors.Image(torch.rand(c, 32, 32))
        for name, t in augment.gallery_transforms(32, rgb).items():
            out = t(x)
            assert out.shape[-2:] == (32, 32), name


def test_subset_is_stratified():
    y = torch.arange(100) % 4
    xs, ys = augment.subset(torch.rand(100, 1, 2, 2), y, 20, seed=1)
    assert len(xs) == 20 and torch.equal(ys.bincount(), torch.full((4,), 5))


def test_fit_augmented_learns():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0.5).long()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    h = augment.fit_augmented(model, x, y, v2.RandomHorizontalFlip(), epochs=30, lr=0.01,
                              device=torch.device("cpu"))
    assert len(h.loss) == 30 and sum(h.loss[-3:]) < sum(h.loss[:3])


@pytest.mark.parametrize("name", augment.EXPLORER_AUGMENTATIONS)
def test_strength_zero_is_identity_and_one_changes(name):
    x = tv_tensors.Image(torch.rand(3, 32, 32))
    torch.manual_seed(0)
    assert torch.allclose(augment.strength_transform(name, 0.0, 32)(x), x, atol=1e-3), name
    assert not torch.allclose(augment.strength_transform(name, 1.0, 32)(x), x, atol=1e-3), name
    with pytest.raises(ValueError):
        augment.strength_transform("mirror", 0.5, 32)


def test_explorer_builds():
    w = augment.augment_explorer({"noise": torch.rand(3, 16, 16)})
    assert len(w.children) >= 4


def test_lesion_contrast():
    img = torch.zeros(32, 32)
    les = augment.disk_mask((32, 32), (16, 16), 3)
    img[les] = 1.0
    g = torch.Generator().manual_seed(0)
    noisy = img + 0.5 * torch.randn(32, 32, generator=g)
    clean = augment.lesion_contrast(img + 1e-3 * torch.randn(32, 32, generator=g), les)
    low = augment.lesion_contrast(noisy, les)
    assert clean["contrast"] == pytest.approx(1.0, abs=0.01) and clean["cnr"] > 100
    assert 1 < low["cnr"] < 4


def test_transformed_dataset_draws_fresh_transforms():
    ds = augment.TransformedDataset(dlmi.SyntheticCells(2, seed=0), augment.joint_transform())
    assert len(ds) == 2
    torch.manual_seed(0)
    draws = [ds[0][0] for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    img, target = ds[1]
    assert augment.boxes_inside(target["boxes"], img.shape[-2:])
