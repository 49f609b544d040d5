"""dlmi.detection: from-scratch box ops against torchvision.ops, focal loss, YOLO targets,
matching, mAP, and the small detectors' train/eval contract."""
import pytest
import torch
import torchvision.ops as tvops

import dlmi
from dlmi import detection as det


def random_boxes(n, size=64.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 3 + 1
    return torch.cat([xy, xy + wh], 1)


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
def test_box_convert_matches_torchvision(fmt):
    b = random_boxes(20)
    ours = det.box_convert(b, "xyxy", fmt)
    assert torch.allclose(ours, tvops.box_convert(b, "xyxy", fmt))
    assert torch.allclose(det.box_convert(ours, fmt, "xyxy"), b, atol=1e-5)
    with pytest.raises(ValueError):
        det.box_convert(b, "xyxy", "polar")


def test_box_iou_hand_computed_and_matches_torchvision():
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3], [2.0, 2, 4, 4], [0.0, 0, 2, 2]])
    assert torch.allclose(det.box_iou(a, b), torch.tensor([[1 / 7, 0.0, 1.0]]))
    x, y = random_boxes(30, seed=1), random_boxes(40, seed=2)
    assert torch.allclose(det.box_iou(x, y), tvops.box_iou(x, y), atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_equals_torchvision(seed, thr):
    boxes = random_boxes(60, seed=seed)
    scores = torch.rand(60, generator=torch.Generator().manual_seed(100 + seed))
    assert torch.equal(det.nms(boxes, scores, thr), tvops.nms(boxes, scores, thr))


def test_nms_keeps_one_of_a_cluster():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [30, 30, 40, 40]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert det.nms(boxes, scores, 0.5).tolist() == [0, 2]


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (0.5, 1.0)])
def test_focal_loss_matches_torchvision(alpha, gamma):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, generator=g) * 3
    targets = (torch.rand(50, generator=g) > 0.8).float()
    for red in ("none", "mean", "sum"):
        ours = det.sigmoid_focal_loss(logits, targets, alpha, gamma, red)
        ref = tvops.sigmoid_focal_loss(logits, targets, alpha, gamma, red)
        assert torch.allclose(ours, ref, atol=1e-6)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert torch.allclose(det.sigmoid_focal_loss(logits, targets, -1, 0), bce)


def test_focal_loss_downweights_easy_examples():
    easy, hard = torch.tensor([-5.0]), torch.tensor([0.0])
    zero = torch.zeros(1)
    ratio_easy = det.sigmoid_focal_loss(easy, zero, -1, 2) / det.sigmoid_focal_loss(easy, zero, -1, 0)
    ratio_hard = det.sigmoid_focal_loss(hard, zero, -1, 2) / det.sigmoid_focal_loss(hard, zero, -1, 0)
    assert ratio_easy < 1e-3 and ratio_hard == pytest.approx(0.25)


def test_yolo_targets():
    boxes = torch.tensor([[0.0, 0, 16, 16], [40, 40, 64, 56]])
    t = det.yolo_targets(boxes, torch.tensor([1, 2]), grid=4, n_classes=2, image_size=64)
    assert t.shape == (4, 4, 7) and t[..., 0].sum() == 2
    assert torch.allclose(t[0, 0], torch.tensor([1.0, 0.5, 0.5, 0.25, 0.25, 1, 0]))
    assert t[3, 3, 0] == 1 and t[3, 3, 6] == 1  # centre (52, 48) → row 3, col 3, class 2


def test_matching_and_precision_recall():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    pred = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert det.match_detections(pred, scores, gt).tolist() == [True, False, False]
    pr = det.precision_recall([{"boxes": pred, "scores": scores, "labels": torch.ones(3, dtype=torch.long)}],
                              [{"boxes": gt, "labels": torch.ones(2, dtype=torch.long)}])
    assert (pr["tp"], pr["fp"], pr["fn"]) == (1, 2, 1)
    assert pr["precision"] == pytest.approx(1 / 3) and pr["recall"] == pytest.approx(0.5)


def test_map_perfect_and_empty():
    ds = dlmi.SyntheticCells(4, seed=0)
    targets = [det.plain_target(ds[i][1]) for i in range(4)]
    perfect = [{"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"])), "labels": t["labels"],
                "masks": t["masks"]} for t in targets]
    assert det.mean_average_precision(perfect, targets)["map"] == pytest.approx(1.0)
    assert det.mean_average_precision(perfect, targets, "segm")["map"] == pytest.approx(1.0)
    shifted = [dict(p, boxes=p["boxes"] + 30) for p in perfect]
    assert det.mean_average_precision(shifted, targets)["map_50"] < 0.2


@pytest.mark.parametrize("builder", [det.faster_rcnn, det.mask_rcnn, det.retinanet])
def test_small_detectors_train_and_predict(builder):
    torch.manual_seed(0)
    ds = dlmi.SyntheticCells(4, seed=0)
    model = builder(3, width=8)
    losses = det.train_detector(model, ds, epochs=1, batch_size=2, device=torch.device("cpu"))
    assert len(losses) == 1 and losses[0] > 0
    out = det.detect(model, [ds[0][0]])
    assert set(out[0]) >= {"boxes", "scores", "labels"}


def test_mask_rcnn_loads_faster_rcnn_weights():
    from dlmi.transfer import load_partial

    report = load_partial(det.mask_rcnn(3, width=8), det.faster_rcnn(3, width=8).state_dict())
    assert not report.skipped and all("mask" in k for k in report.missing)


def test_mobilenet_builder_needs_no_download(offline):
    model = det.mobilenet_faster_rcnn(3)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3


def test_detect_raw_restores_settings_and_postprocess():
    torch.manual_seed(0)
    model = det.faster_rcnn(3, width=8)
    ds = dlmi.SyntheticCells(2, seed=0)
    saved = (model.roi_heads.nms_thresh, model.roi_heads.score_thresh)
    raw = det.detect_raw(model, [ds[0][0]], score_threshold=0.0)
    assert (model.roi_heads.nms_thresh, model.roi_heads.score_thresh) == saved
    out = det.postprocess(raw[0], 0.0, 0.5)
    if len(out["boxes"]) > 1:
        iou = det.box_iou(out["boxes"], out["boxes"]).fill_diagonal_(0)
        assert iou.max() <= 0.5
    w = det.detection_explorer([ds[0][0]], raw, [det.plain_target(ds[0][1])])
    assert len(w.children) >= 3
