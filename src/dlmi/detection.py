"""Object detection and instance segmentation.

From scratch (and tested against ``torchvision.ops``): box formats, IoU, non-maximum
suppression, the focal loss, YOLO-style grid targets, greedy matching for precision/recall.
Builders for small torchvision Faster R-CNN / Mask R-CNN / RetinaNet models with no
pretrained weights (they train on :class:`dlmi.SyntheticCells` in seconds on a CPU), a
training loop, and mAP through ``torchmetrics``.

Boxes are (N, 4) float tensors in XYXY pixel coordinates unless a format is named.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

if TYPE_CHECKING:
    import ipywidgets

    from .widgets import StaticExplorer

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]


# ---------------------------------------------------------------- boxes, IoU, NMS
def box_convert(boxes: torch.Tensor, in_fmt: BoxFormat, out_fmt: BoxFormat) -> torch.Tensor:
    """Convert between corner (``xyxy``), corner + size (``xywh``) and centre + size (``cxcywh``)."""
    for fmt in (in_fmt, out_fmt):
        if fmt not in ("xyxy", "xywh", "cxcywh"):
            raise ValueError(f"Unknown box format {fmt!r}")
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        a, b, c, d = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    if out_fmt == "xywh":
        return torch.stack([a, b, c - a, d - b], -1)
    if out_fmt == "cxcywh":
        return torch.stack([(a + c) / 2, (b + d) / 2, c - a, d - b], -1)
    return torch.stack([a, b, c, d], -1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of XYXY boxes (0 for degenerate ones)."""
    return (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU (N, M) of XYXY boxes: intersection area over union area."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp_min(0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp_min(1e-12)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: keep the best box, drop the boxes that overlap it by
    more than ``iou_threshold``, repeat. Returns kept indices in decreasing score order."""
    order = scores.argsort(descending=True, stable=True)
    iou = box_iou(boxes, boxes)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


# ---------------------------------------------------------------- losses
def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0, reduction: Literal["none", "mean", "sum"] = "none") -> torch.Tensor:
    """Focal loss (Lin et al., 2017): ``−α_t (1 − p_t)^γ log p_t``. γ = 0 and α < 0 give plain BCE;
    the factor ``(1 − p_t)^γ`` shrinks the loss of easy, well-classified examples."""
    p = torch.sigmoid(logits)
    ce = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


# ---------------------------------------------------------------- YOLO's idea
def yolo_targets(boxes: torch.Tensor, labels: torch.Tensor, grid: int, n_classes: int,
                 image_size: int) -> torch.Tensor:
    """YOLO v1 training target (grid, grid, 5 + n_classes): the cell holding a box's centre
    predicts it as (objectness=1, cx, cy relative to the cell, w, h relative to the image,
    one-hot class). Labels run from 1 (0 is background). One box per cell: a later box in the
    same cell overwrites an earlier one, which is YOLO v1's known limit with crowded objects."""
    out = torch.zeros(grid, grid, 5 + n_classes)
    cell = image_size / grid
    for (cx, cy, w, h), label in zip(box_convert(boxes.float(), "xyxy", "cxcywh"), labels, strict=False):
        col, row = min(int(cx // cell), grid - 1), min(int(cy // cell), grid - 1)
        out[row, col, :5] = torch.tensor([1.0, cx / cell - col, cy / cell - row, w / image_size, h / image_size])
        out[row, col, 5:] = 0
        out[row, col, 4 + int(label)] = 1.0
    return out


# ---------------------------------------------------------------- evaluation
def match_detections(pred_boxes: torch.Tensor, pred_scores: torch.Tensor, gt_boxes: torch.Tensor,
                     iou_threshold: float = 0.5) -> torch.Tensor:
    """Greedy matching in decreasing score: a prediction is a true positive if it overlaps a
    not-yet-matched ground-truth box by at least ``iou_threshold``. Returns a bool per
    prediction (in the input order)."""
    tp = torch.zeros(len(pred_boxes), dtype=torch.bool)
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return tp
    iou = box_iou(pred_boxes, gt_boxes)
    taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
    for i in pred_scores.argsort(descending=True).tolist():
        cand = iou[i].masked_fill(taken, -1)
        j = int(cand.argmax())
        if cand[j] >= iou_threshold:
            tp[i] = taken[j] = True
    return tp


def precision_recall(preds: Sequence[dict], targets: Sequence[dict], score_threshold: float = 0.5,
                     iou_threshold: float = 0.5) -> dict[str, float]:
    """Precision, recall and counts over a data set, for detections above ``score_threshold``
    (classes ignored: 'is there a cell here?')."""
    tp = fp = fn = 0
    for p, t in zip(preds, targets, strict=False):
        keep = p["scores"] >= score_threshold
        hits = match_detections(p["boxes"][keep], p["scores"][keep], t["boxes"], iou_threshold)
        tp += int(hits.sum())
        fp += int((~hits).sum())
        fn += len(t["boxes"]) - int(hits.sum())
    return {"tp": tp, "fp": fp, "fn": fn, "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1)}


def mean_average_precision(preds: Sequence[dict], targets: Sequence[dict],
                           iou_type: Literal["bbox", "segm"] = "bbox") -> dict[str, float]:
    """COCO-style mAP with ``torchmetrics`` (mAP@[.5:.95], mAP@.5, mAP@.75, mAR@100).

    For ``segm``, predictions need ``masks`` (N, H, W) bool; targets their instance masks.
    """
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type=iou_type, backend="pycocotools")
    key = "boxes" if iou_type == "bbox" else "masks"
    metric.update([{key: (p[key] > 0.5 if p[key].is_floating_point() else p[key].bool()) if key == "masks"
                    else p[key], "scores": p["scores"], "labels": p["labels"]} for p in preds],
                  [{key: t[key].bool() if key == "masks" else t[key], "labels": t["labels"]} for t in targets])
    res = metric.compute()
    return {k: float(res[k]) for k in ("map", "map_50", "map_75", "mar_100")}


# ---------------------------------------------------------------- models
class TinyBackbone(nn.Sequential):
    """A five-layer CNN with output stride 4 and ``out_channels`` feature maps (what the
    torchvision detectors need from a backbone)."""

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        def block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                                 nn.ReLU(inplace=True))

        super().__init__(block(in_channels, width // 2), block(width // 2, width, 2), block(width, width),
                         block(width, width, 2), block(width, width))
        self.out_channels = width


class _Single(nn.Module):
    """Wrap a backbone so that it returns ``{"0": feature_map}`` (one pyramid level)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.out_channels = body.out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict([("0", self.body(x))])


def _common(image_size: int, in_channels: int) -> dict:
    return dict(min_size=image_size, max_size=image_size, image_mean=[0.5] * in_channels,
                image_std=[0.25] * in_channels)


def anchor_generator(sizes: Sequence[int] = (8, 16, 32),
                     aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> AnchorGenerator:
    """Anchors for one feature map: every size × every aspect ratio at every position."""
    return AnchorGenerator(sizes=(tuple(sizes),), aspect_ratios=(tuple(aspect_ratios),))


def faster_rcnn(num_classes: int, image_size: int = 64, in_channels: int = 1, width: int = 32,
                anchor_sizes: Sequence[int] = (8, 16, 32), representation: int = 128) -> FasterRCNN:
    """A small Faster R-CNN (Ren et al., 2015) for ``image_size`` images, no pretrained weights.

    ``num_classes`` counts the background class 0. Images are not resized (min = max = size).
    """
    backbone = _Single(TinyBackbone(in_channels, width))
    roi = MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2)
    return FasterRCNN(
        backbone, num_classes=None, rpn_anchor_generator=anchor_generator(anchor_sizes), box_roi_pool=roi,
        box_head=TwoMLPHead(width * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes),
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=64, box_batch_size_per_image=64,
        box_detections_per_img=30, **_common(image_size, in_channels))


def mask_rcnn(num_classes: int, image_size: int = 64, in_channels: int = 1, width: int = 32,
              anchor_sizes: Sequence[int] = (8, 16, 32), representation: int = 128,
              mask_channels: int = 32) -> MaskRCNN:
    """:func:`faster_rcnn` plus a small mask head (He et al., 2017): per region of interest, a
    14×14 RoIAlign → two 3×3 convolutions → a 28×28 mask per class. Parameter names match
    :func:`faster_rcnn`, so a trained Faster R-CNN's weights load into it."""
    backbone = _Single(TinyBackbone(in_channels, width))
    return MaskRCNN(
        backbone, num_classes=None, rpn_anchor_generator=anchor_generator(anchor_sizes),
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(width * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes),
        mask_roi_pool=MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(width, [mask_channels, mask_channels], 1),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=64, box_batch_size_per_image=64,
        box_detections_per_img=30, **_common(image_size, in_channels))


def retinanet(num_classes: int, image_size: int = 64, in_channels: int = 1, width: int = 32,
              anchor_sizes: Sequence[int] = (8, 16, 32)) -> RetinaNet:
    """A small one-stage RetinaNet (Lin et al., 2017): dense class + box heads on every anchor,
    trained with the focal loss; no pretrained weights."""
    return RetinaNet(_Single(TinyBackbone(in_channels, width)), num_classes=num_classes,
                     anchor_generator=anchor_generator(anchor_sizes), detections_per_img=30,
                     **_common(image_size, in_channels))


def mobilenet_faster_rcnn(num_classes: int) -> FasterRCNN:
    """torchvision's full-size ``fasterrcnn_mobilenet_v3_large_fpn`` with random weights (no
    download): the model one would fine-tune from COCO weights when online."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    return fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=num_classes)


# ---------------------------------------------------------------- training and inference
def plain_target(target: dict) -> dict[str, torch.Tensor]:
    """A target dict with plain tensors (tv_tensors unwrapped) for models and metrics."""
    return {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in target.items()}


def train_detector(model: nn.Module, dataset: Dataset, *, epochs: int, batch_size: int = 8,
                   lr: float = 2e-3, weight_decay: float = 1e-4, device: torch.device | None = None,
                   seed: int = 0, log_every: int = 0) -> list[float]:
    """Train a torchvision detector (it returns a dict of losses in train mode) with AdamW;
    returns the mean total loss of each epoch."""
    from .cells import collate_detection
    from .runtime import device as default_device

    dev = device or default_device()
    model.to(dev).train()
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate_detection, generator=gen)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history = []
    for epoch in range(epochs):
        total, n = 0.0, 0
        for images, targets in loader:
            images = [im.as_subclass(torch.Tensor).to(dev) for im in images]
            targets = [{k: v.to(dev) for k, v in plain_target(t).items()} for t in targets]
            losses = model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, n = total + loss.item(), n + 1
        history.append(total / max(n, 1))
        if log_every and (epoch + 1) % log_every == 0:
            print(f"epoch {epoch + 1}: loss {history[-1]:.3f}")
    return history


@torch.no_grad()
def detect(model: nn.Module, images: Sequence[torch.Tensor], batch_size: int = 16) -> list[dict[str, torch.Tensor]]:
    """Predictions (boxes, scores, labels[, masks]) for a list of images, in eval mode, on the CPU."""
    model.eval()
    dev = next(model.parameters()).device
    out: list[dict[str, torch.Tensor]] = []
    for i in range(0, len(images), batch_size):
        batch = [im.as_subclass(torch.Tensor).to(dev) for im in images[i:i + batch_size]]
        out += [{k: v.cpu() for k, v in p.items()} for p in model(batch)]
    return out


def draw_detections(ax, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor | None = None,
                    scores: torch.Tensor | None = None, color: str = "lime", title: str = "") -> None:
    """Show a grey image with XYXY boxes (and optional label:score captions) on a matplotlib axis."""
    import matplotlib.patches as patches

    ax.imshow(image.as_subclass(torch.Tensor).squeeze().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=color, lw=1.2))
        if scores is not None or labels is not None:
            text = "".join([f"{int(labels[i])}" if labels is not None else "",
                            f":{float(scores[i]):.2f}" if scores is not None else ""])
            ax.text(x1, y1 - 1, text, color=color, fontsize=6)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


@torch.no_grad()
def detect_raw(model: nn.Module, images: Sequence[torch.Tensor],
               score_threshold: float = 0.05) -> list[dict[str, torch.Tensor]]:
    """Detections of a torchvision R-CNN *before* its final non-maximum suppression (and with
    a low score threshold), to study NMS; the model's settings are restored afterwards."""
    heads: Any = model.roi_heads  # torchvision's RoIHeads
    saved = heads.nms_thresh, heads.score_thresh
    heads.nms_thresh, heads.score_thresh = 1.0, score_threshold
    try:
        return detect(model, images)
    finally:
        heads.nms_thresh, heads.score_thresh = saved


def postprocess(raw: dict[str, torch.Tensor], score_threshold: float,
                iou_threshold: float) -> dict[str, torch.Tensor]:
    """Keep detections above ``score_threshold``, then class-agnostic NMS at ``iou_threshold``."""
    keep = raw["scores"] >= score_threshold
    kept = {k: v[keep] for k, v in raw.items()}
    if not len(kept["boxes"]):
        return kept
    order = nms(kept["boxes"], kept["scores"], iou_threshold)
    return {k: v[order] for k, v in kept.items()}


def detection_explorer(images: Sequence[torch.Tensor], raw: Sequence[dict],
                       targets: Sequence[dict]) -> ipywidgets.interactive | StaticExplorer:
    """An ipywidgets explorer: image, score threshold and NMS IoU threshold → kept boxes
    (green), true boxes (yellow), precision and recall for that image."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from .widgets import explorer

    def show(index: int = 0, score_threshold: float = 0.5, iou_threshold: float = 0.5) -> None:
        kept = postprocess(raw[index], score_threshold, iou_threshold)
        pr = precision_recall([kept], [targets[index]], score_threshold=0.0)
        fig, ax = plt.subplots(figsize=(3.8, 3.8))
        draw_detections(ax, images[index], targets[index]["boxes"], color="yellow")
        draw_detections(ax, images[index], kept["boxes"], scores=kept["scores"], color="lime",
                        title=f"{len(kept['boxes'])} boxes: precision {pr['precision']:.2f}, recall {pr['recall']:.2f}")
        plt.show()

    return explorer(
        show, index=widgets.IntSlider(value=0, min=0, max=len(images) - 1),
        score_threshold=widgets.FloatSlider(value=0.5, min=0.05, max=0.95, step=0.05, description="score ≥"),
        iou_threshold=widgets.FloatSlider(value=0.5, min=0.1, max=1.0, step=0.05, description="NMS IoU"))
