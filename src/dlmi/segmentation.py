"""Semantic segmentation: a configurable U-Net (2D or 3D, 'same' or 'valid' convolutions,
optional dilated bottleneck), overlap metrics (Dice, IoU) and segmentation losses.

Conventions: logits and masks are (N, C, H, W) (or (N, C, D, H, W)); binary masks have one
channel; label maps are integer (N, H, W). Scores are per image unless reduced.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    import ipywidgets

    from .widgets import StaticExplorer

Padding = Literal["same", "valid"]
Norm = Literal["batch", "instance", "none"]


def _conv(dims: int):
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _norm(kind: Norm, channels: int, dims: int) -> nn.Module:
    """Batch norm, instance norm (with learned scale and shift, as in nnU-Net) or nothing."""
    if kind == "batch":
        return (nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d)(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {kind!r}")


class DoubleConv(nn.Sequential):
    """Two (3×3 or 3×3×3) convolutions, each with batch norm and ReLU; ``valid`` padding
    shrinks each side by 2·dilation, as in the original U-Net."""

    def __init__(self, c_in: int, c_out: int, padding: Padding = "same", dims: int = 2,
                 dilation: int = 1, norm: Norm = "batch") -> None:
        conv = _conv(dims)
        pad = dilation if padding == "same" else 0
        bias = norm == "none"
        super().__init__(
            conv(c_in, c_out, 3, padding=pad, dilation=dilation, bias=bias), _norm(norm, c_out, dims),
            nn.ReLU(inplace=True),
            conv(c_out, c_out, 3, padding=pad, dilation=dilation, bias=bias), _norm(norm, c_out, dims),
            nn.ReLU(inplace=True),
        )


class DilatedContext(nn.Module):
    """Parallel 3×3 convolutions with different dilation rates, concatenated and fused by a 1×1
    convolution (an atrous spatial pyramid, as in DeepLab): context at several scales with
    the parameters of a 3×3 kernel each. Always 'same' padding."""

    def __init__(self, c_in: int, c_out: int, rates: Sequence[int] = (1, 2, 4), dims: int = 2,
                 norm: Norm = "batch") -> None:
        super().__init__()
        conv, bias = _conv(dims), norm == "none"
        self.branches = nn.ModuleList(
            nn.Sequential(conv(c_in, c_out, 3, padding=r, dilation=r, bias=bias), _norm(norm, c_out, dims),
                          nn.ReLU(inplace=True))
            for r in rates)
        self.fuse = nn.Sequential(conv(len(rates) * c_out, c_out, 1, bias=bias), _norm(norm, c_out, dims),
                                  nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([b(x) for b in self.branches], dim=1))


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop the trailing spatial dims of ``x`` to ``size`` around the centre (U-Net's 'copy and crop')."""
    slices = [slice(None)] * (x.ndim - len(size))
    for have, want in zip(x.shape[-len(size):], size, strict=False):
        if want > have:
            raise ValueError(f"cannot crop {tuple(x.shape[-len(size):])} to {tuple(size)}")
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


class UNet(nn.Module):
    """U-Net (Ronneberger et al., 2015): a contracting path (double conv + 2× max pooling per level),
    a bottleneck, and an expanding path (2×2 transposed convolution, concatenation with the
    cropped skip connection, double conv), then a 1×1 convolution to ``out_channels`` logits.

    ``base`` channels double at every one of ``depth`` levels. ``padding='valid'`` reproduces
    the original unpadded convolutions (output smaller than input, skips cropped);
    ``'same'`` keeps the size (input sides must be divisible by ``2**depth``). ``dims=3`` makes
    a 3D U-Net. ``context_rates`` replaces the bottleneck by a :class:`DilatedContext` block.
    ``norm`` picks batch norm, instance norm (nnU-Net's choice: no running statistics, so
    training and evaluation behave alike even after a few steps) or none.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: int = 16, depth: int = 3,
                 padding: Padding = "same", dims: int = 2, context_rates: Sequence[int] | None = None,
                 norm: Norm = "batch") -> None:
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        self.in_channels, self.depth, self.padding, self.dims = in_channels, depth, padding, dims
        chans = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(DoubleConv(c_i, c_o, padding, dims, norm=norm)
                                  for c_i, c_o in zip([in_channels] + chans[:-2], chans[:-1], strict=False))
        self.pool = (nn.MaxPool3d if dims == 3 else nn.MaxPool2d)(2)
        self.bottleneck = (DilatedContext(chans[-2], chans[-1], context_rates, dims, norm) if context_rates
                           else DoubleConv(chans[-2], chans[-1], padding, dims, norm=norm))
        up = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        self.up = nn.ModuleList(up(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth)))
        self.decode = nn.ModuleList(DoubleConv(2 * chans[i], chans[i], padding, dims, norm=norm)
                                    for i in reversed(range(depth)))
        self.out = _conv(dims)(chans[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.up, self.decode, reversed(skips), strict=False):
            x = up(x)
            x = block(torch.cat([center_crop(skip, x.shape[2:]), x], dim=1))
        return self.out(x)


def activation_bytes(model: nn.Module, shape: Sequence[int], bytes_per_value: int = 4) -> int:
    """Bytes of all module outputs in one forward pass of an input of ``shape`` (a lower bound
    on what training keeps for backpropagation). Runs on the ``meta`` device: no memory used."""
    total = 0

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * bytes_per_value

    model_meta = _to_meta(model)
    handles = [m.register_forward_hook(hook) for m in model_meta.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model_meta(torch.empty(*shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total


def _to_meta(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the meta device (shapes only); the original is left alone."""
    import copy

    return copy.deepcopy(model).to("meta")


def output_size(model: UNet, size: int) -> int:
    """Spatial output size of ``model`` for a square (cubic) input of side ``size`` (meta device)."""
    shape = (1, model.in_channels) + (size,) * model.dims
    with torch.no_grad():
        return int(_to_meta(model)(torch.empty(*shape, device="meta")).shape[-1])


def receptive_extent(model: nn.Module, size: int = 129, channels: int = 1, seed: int = 0) -> int:
    """Width in pixels of the input region that influences the centre output pixel, found by
    back-propagating from it through ``model`` in eval mode on a random input (a zero input
    would leave ReLUs without gradient). Raises if the region reaches the border — as it
    always does with instance normalisation, whose statistics mix the whole image."""
    was_training = model.training
    model.eval()
    x = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    try:
        y = model(x)
        y[0, :, y.shape[-2] // 2, y.shape[-1] // 2].sum().backward()
    finally:
        model.train(was_training)
    assert x.grad is not None  # x requires grad and reached y
    cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2)) > 0).view(-1)
    if len(cols) and (cols.min() == 0 or cols.max() == size - 1):
        raise ValueError(f"the receptive field reaches the border of a {size}-pixel input; use a larger size")
    return int(cols.max() - cols.min() + 1) if len(cols) else 0


def _binarize(x: torch.Tensor) -> torch.Tensor:
    return x.bool() if x.dtype == torch.bool or not x.is_floating_point() else x > 0.5


def dice_score(pred: torch.Tensor, target: torch.Tensor, empty: float = 1.0) -> torch.Tensor:
    """Dice = 2|P∩T| / (|P| + |T|) per image (all dims after the first); 0/1 or bool masks.

    Float inputs are thresholded at 0.5. An image where both masks are empty scores ``empty``.
    """
    p, t = _binarize(pred).flatten(1), _binarize(target).flatten(1)
    inter = (p & t).sum(1).float()
    denom = (p.sum(1) + t.sum(1)).float()
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.full_like(denom, empty))


def iou_score(pred: torch.Tensor, target: torch.Tensor, empty: float = 1.0) -> torch.Tensor:
    """IoU (Jaccard) = |P∩T| / |P∪T| per image; same conventions as :func:`dice_score`."""
    p, t = _binarize(pred).flatten(1), _binarize(target).flatten(1)
    inter = (p & t).sum(1).float()
    union = (p | t).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, empty))


def per_class_scores(pred: torch.Tensor, target: torch.Tensor, n_classes: int,
                     metric: Literal["dice", "iou"] = "dice") -> torch.Tensor:
    """(N, n_classes) scores for integer label maps (N, H, W); NaN where a class is absent from
    both prediction and target (so ``nanmean`` averages only classes that occur)."""
    fn = dice_score if metric == "dice" else iou_score
    cols = []
    for c in range(n_classes):
        p, t = pred == c, target == c
        present = (p | t).flatten(1).any(1)
        cols.append(torch.where(present, fn(p, t), torch.full(present.shape, float("nan"))))
    return torch.stack(cols, 1)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 − soft Dice of ``sigmoid(logits)`` with a 0/1 ``target``, per image, averaged.

    ``smooth`` keeps the loss defined (and gives 0) on images with no foreground at all.
    """
    p, t = torch.sigmoid(logits).flatten(1), target.float().flatten(1)
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return 1 - dice.mean()


def multiclass_dice_loss(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 − soft Dice of ``softmax(logits)`` (N, C, H, W) against integer ``labels`` (N, H, W),
    per image and class, averaged over both."""
    p = torch.softmax(logits, 1).flatten(2)
    t = F.one_hot(labels.long(), logits.shape[1]).movedim(-1, 1).float().flatten(2)
    dice = (2 * (p * t).sum(2) + smooth) / (p.sum(2) + t.sum(2) + smooth)
    return 1 - dice.mean()


class CEDiceLoss(nn.Module):
    """Cross-entropy + multi-class soft Dice loss for integer label maps (N, H, W)."""

    def __init__(self, dice_weight: float = 1.0, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.class_weights: torch.Tensor | None
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        ce = F.cross_entropy(logits, labels.long(), weight=weight)
        return ce + self.dice_weight * multiclass_dice_loss(logits, labels)


class BCEDiceLoss(nn.Module):
    """``bce_weight · BCE(pos_weight) + dice_weight · soft Dice loss`` for binary segmentation.

    ``pos_weight`` > 1 counts each foreground pixel that many times in the BCE term, the usual
    fix for rare foreground; the Dice term ignores how much background there is.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, pos_weight: float | None = None) -> None:
        super().__init__()
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.pos_weight: torch.Tensor | None
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor([pos_weight]))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros(())
        if self.bce_weight:
            pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
            loss = loss + self.bce_weight * F.binary_cross_entropy_with_logits(
                logits, target.float(), pos_weight=pos_weight)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target)
        return loss


def foreground_fraction(masks: torch.Tensor) -> float:
    """Share of foreground pixels in binary masks."""
    return _binarize(masks).float().mean().item()


def overlay(image: torch.Tensor, mask: torch.Tensor, color: tuple[float, float, float] = (1.0, 0.2, 0.2),
            alpha: float = 0.45) -> torch.Tensor:
    """RGB (H, W, 3) picture of a grey image (1, H, W) with a binary mask tinted in ``color``."""
    g = image.as_subclass(torch.Tensor).detach().cpu().float().squeeze().clamp(0, 1)
    rgb = g[..., None].repeat(1, 1, 3)
    m = _binarize(mask.as_subclass(torch.Tensor).detach().cpu().squeeze())[..., None]
    tint = torch.tensor(color)
    return torch.where(m, (1 - alpha) * rgb + alpha * tint, rgb)


def threshold_explorer(images: torch.Tensor, probs: torch.Tensor,
                       targets: torch.Tensor) -> ipywidgets.interactive | StaticExplorer:
    """An ipywidgets explorer: image index and threshold → overlay of the thresholded
    foreground probability (red) and the true mask outline, with Dice and IoU.

    ``images`` (N, 1, H, W), ``probs`` (N, H, W) foreground probabilities, ``targets`` (N, H, W).
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from .widgets import explorer

    def show(index: int = 0, threshold: float = 0.5) -> None:
        pred = probs[index] > threshold
        d = dice_score(pred[None], targets[index][None]).item()
        j = iou_score(pred[None], targets[index][None]).item()
        fig, ax = plt.subplots(figsize=(3.6, 3.6))
        ax.imshow(overlay(images[index], pred).numpy())
        ax.contour(targets[index].float().numpy(), levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(f"threshold {threshold:.2f}: Dice {d:.2f}, IoU {j:.2f}", fontsize=9)
        ax.axis("off")
        plt.show()

    return explorer(
        show, index=widgets.IntSlider(value=0, min=0, max=len(images) - 1),
        threshold=widgets.FloatSlider(value=0.5, min=0.05, max=0.95, step=0.05))
