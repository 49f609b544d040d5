"""dlmi.segmentation: U-Net shapes, Dice/IoU against hand-computed cases and torchmetrics, losses."""
import pytest
import torch
from torchmetrics.segmentation import DiceScore, MeanIoU

import dlmi
from dlmi import segmentation as seg
from dlmi.train import fit


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unet_same_keeps_size(depth):
    m = seg.UNet(1, 3, base=4, depth=depth)
    assert m(torch.rand(2, 1, 32, 32)).shape == (2, 3, 32, 32)


def test_unet_valid_matches_the_paper_sizes():
    # Ronneberger et al.: a 572×572 tile gives a 388×388 map with 4 levels of unpadded convs
    m = seg.UNet(1, 2, base=64, depth=4, padding="valid")
    assert seg.output_size(m, 572) == 388
    assert seg.center_crop(torch.zeros(1, 1, 10, 12), (4, 6)).shape == (1, 1, 4, 6)
    with pytest.raises(ValueError):
        seg.center_crop(torch.zeros(1, 1, 4, 4), (6, 6))


def test_unet_3d_and_dilated_context():
    m3 = seg.UNet(1, 2, base=2, depth=2, dims=3)
    assert m3(torch.rand(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)
    md = seg.UNet(1, 1, base=4, depth=2, context_rates=(1, 2, 4))
    assert md(torch.rand(1, 1, 16, 16)).shape == (1, 1, 16, 16)


def test_activation_bytes_on_meta_device():
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())
    assert seg.activation_bytes(m, (2, 1, 8, 8)) == 2 * (2 * 4 * 8 * 8 * 4)
    assert next(m.parameters()).device.type == "cpu"  # the original is untouched
    # same-size layers: a 3D volume of depth D holds D times the activations of one slice
    d3, d2 = seg.DoubleConv(1, 4, dims=3), seg.DoubleConv(1, 4, dims=2)
    assert seg.activation_bytes(d3, (1, 1, 16, 16, 16)) == 16 * seg.activation_bytes(d2, (1, 1, 16, 16))
    # a U-Net level k is 2**k times smaller per side, so the 3D/2D ratio falls from 16 to 4
    r = seg.activation_bytes(seg.UNet(1, 1, 4, 2, dims=3), (1, 1, 16, 16, 16)) / \
        seg.activation_bytes(seg.UNet(1, 1, 4, 2, dims=2), (1, 1, 16, 16))
    assert 4 < r < 16


def test_dice_and_iou_hand_computed():
    p = torch.zeros(1, 4, 4, dtype=torch.bool)
    t = torch.zeros(1, 4, 4, dtype=torch.bool)
    p[0, :2, :2] = True        # 4 pixels
    t[0, :2, :3] = True        # 6 pixels, overlap 4
    assert seg.dice_score(p, t).item() == pytest.approx(2 * 4 / 10)
    assert seg.iou_score(p, t).item() == pytest.approx(4 / 6)
    empty = torch.zeros(1, 4, 4)
    assert seg.dice_score(empty, empty).item() == 1.0 and seg.iou_score(empty, empty, empty=0.0).item() == 0.0
    assert seg.dice_score(empty, t).item() == 0.0
    # Dice = 2 IoU / (1 + IoU) for any pair
    a, b = torch.rand(8, 1, 9, 9) > 0.5, torch.rand(8, 1, 9, 9) > 0.5
    iou = seg.iou_score(a, b)
    assert torch.allclose(seg.dice_score(a, b), 2 * iou / (1 + iou))


def test_scores_match_torchmetrics():
    torch.manual_seed(0)
    pred = torch.randint(0, 3, (6, 16, 16))
    target = torch.randint(0, 3, (6, 16, 16))
    ours = seg.per_class_scores(pred, target, 3, "dice")
    tm = DiceScore(num_classes=3, average="none", input_format="index", aggregation_level="samplewise")
    assert torch.allclose(ours.mean(0), tm(pred, target), atol=1e-6)
    ours_iou = seg.per_class_scores(pred, target, 3, "iou")
    tm_iou = MeanIoU(num_classes=3, per_class=True, input_format="index")
    assert torch.allclose(ours_iou.mean(0), tm_iou(pred, target), atol=1e-6)


def test_per_class_nan_when_class_absent():
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 1
    s = seg.per_class_scores(pred, target, 3)
    assert s[0, 1] == 0 and torch.isnan(s[0, 2])


def test_losses():
    t = torch.zeros(2, 1, 8, 8)
    t[:, :, 2:5, 2:5] = 1
    perfect = (t * 2 - 1) * 20
    assert seg.soft_dice_loss(perfect, t).item() < 1e-3
    assert seg.soft_dice_loss(-perfect, t).item() > 0.9
    assert seg.soft_dice_loss(torch.full_like(t, -20.0), torch.zeros_like(t)).item() < 1e-3
    # pos_weight scales the positive term of BCE
    logits = torch.zeros_like(t)
    l1 = seg.BCEDiceLoss(dice_weight=0)(logits, t)
    l3 = seg.BCEDiceLoss(dice_weight=0, pos_weight=3.0)(logits, t)
    frac = t.mean()
    assert l3 / l1 == pytest.approx(float((3 * frac + (1 - frac)) / 1.0), rel=1e-5)
    labels = t[:, 0].long()
    assert seg.multiclass_dice_loss(torch.nn.functional.one_hot(labels, 2).movedim(-1, 1).float() * 40,
                                    labels).item() < 1e-3
    assert seg.CEDiceLoss()(torch.zeros(2, 2, 8, 8), labels).item() > 0


def test_unet_learns_synthetic_cells():
    torch.manual_seed(0)
    x, y = dlmi.SyntheticCells(24, size=32, radius=(3.0, 7.0), seed=0).tensors()
    model = seg.UNet(1, 1, base=4, depth=2)
    fit(model, x, y, epochs=12, lr=1e-2, batch_size=8, loss_fn=seg.BCEDiceLoss(), device=torch.device("cpu"))
    dice = seg.dice_score(dlmi.train.predict(model, x) > 0, y).mean().item()
    assert dice > 0.7


def test_overlay_shape():
    img = torch.rand(1, 8, 8)
    out = seg.overlay(img, img > 0.5)
    assert out.shape == (8, 8, 3) and out.max() <= 1


def test_norm_options_and_explorer():
    for norm in ("batch", "instance", "none"):
        m = seg.UNet(1, 1, base=4, depth=1, norm=norm)
        assert m(torch.rand(2, 1, 8, 8)).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError):
        seg.UNet(1, 1, norm="layer")
    x = torch.rand(2, 1, 8, 8)
    w = seg.threshold_explorer(x, x[:, 0], x[:, 0] > 0.5)
    assert len(w.children) >= 2


def test_receptive_extent():
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(2, 1, 3, padding=2, dilation=2))
    assert seg.receptive_extent(conv, size=21) == 7
    torch.manual_seed(0)
    small = seg.receptive_extent(seg.UNet(1, 1, base=8, depth=1), size=65)
    wide = seg.receptive_extent(seg.UNet(1, 1, base=8, depth=1, context_rates=(1, 4)), size=65)
    assert wide > small
    with pytest.raises(ValueError):
        seg.receptive_extent(seg.UNet(1, 1, base=8, depth=3), size=24)
