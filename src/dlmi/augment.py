"""Data augmentation for medical images, built on ``torchvision.transforms.v2``.

The v2 transforms act jointly on an image and on its ``tv_tensors`` targets (masks, boxes),
so one call keeps a segmentation mask or a box aligned with the pixels it describes. This
module adds the few pieces v2 lacks (speckle noise, Sobel filtering, laterality-aware flips),
named galleries and policies used by the book, and a training loop that draws a fresh
augmented copy of the training set every epoch.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2

from .train import History, accuracy, fit, predict

if TYPE_CHECKING:
    import ipywidgets

    from .widgets import StaticExplorer

Policy = Literal["none", "geometric", "intensity", "geometric+intensity"]
POLICIES: tuple[Policy, ...] = ("none", "geometric", "intensity", "geometric+intensity")


def _is_image(inpt: Any) -> bool:
    """True for pixel data (tv_tensors.Image or a plain tensor), False for masks and boxes."""
    return isinstance(inpt, torch.Tensor) and not isinstance(
        inpt, (tv_tensors.Mask, tv_tensors.BoundingBoxes, tv_tensors.KeyPoints))


class SpeckleNoise(v2.Transform):
    """Multiplicative noise ``x · (1 + σ·n)``, n ~ N(0, 1), as in ultrasound; images only.

    Expects float images in [0, 1]; the result is clipped to [0, 1]. Masks and boxes pass
    through unchanged.
    """

    def __init__(self, sigma: float = 0.2) -> None:
        super().__init__()
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = sigma

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not _is_image(inpt):
            return inpt
        if not inpt.is_floating_point():
            raise TypeError("SpeckleNoise needs a float image in [0, 1]; add v2.ToDtype(torch.float32, scale=True).")
        noisy = inpt * (1 + self.sigma * torch.randn_like(inpt))
        return tv_tensors.wrap(noisy.clamp(0, 1), like=inpt) if isinstance(inpt, tv_tensors.TVTensor) \
            else noisy.clamp(0, 1)


class Sobel(v2.Transform):
    """Gradient magnitude of each channel (Sobel filter), rescaled to [0, 1]; images only."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not _is_image(inpt):
            return inpt
        x = inpt.as_subclass(torch.Tensor).float()
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
        weight = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3)
        flat = x.reshape(-1, 1, *x.shape[-2:])
        g = F.conv2d(F.pad(flat, (1, 1, 1, 1), mode="replicate"), weight).pow(2).sum(1, keepdim=True).sqrt()
        g = (g / g.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-8)).reshape(x.shape)
        return tv_tensors.wrap(g, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else g


def random_rot90() -> v2.RandomChoice:
    """A rotation by a random multiple of 90° (exact on square images, boxes and masks too)."""
    return v2.RandomChoice([v2.RandomRotation((a, a)) for a in (0, 90, 180, 270)])


def gallery_transforms(size: int, rgb: bool = True) -> dict[str, v2.Transform]:
    """The lecture's augmentation gallery, one named v2 transform each (float images in [0, 1])."""
    colour = v2.ColorJitter(0.4, 0.4, 0.4, 0.1) if rgb else v2.ColorJitter(0.4, 0.4)
    return {
        "crop + resize": v2.RandomResizedCrop(size, scale=(0.3, 0.6), antialias=True),
        "crop, resize + flip": v2.Compose([v2.RandomResizedCrop(size, scale=(0.3, 0.6), antialias=True),
                                           v2.RandomHorizontalFlip(p=1.0)]),
        "colour drop": v2.Grayscale(num_output_channels=3) if rgb else v2.RandomInvert(p=1.0),
        "colour jitter": colour,
        "rotate 90°·k": random_rot90(),
        "small rotation ±15°": v2.RandomRotation(15),
        "cutout": v2.RandomErasing(p=1.0, scale=(0.05, 0.1), ratio=(0.5, 2.0), value=0.0),
        "Gaussian noise": v2.GaussianNoise(sigma=0.08),
        "speckle noise": SpeckleNoise(0.3),
        "Gaussian blur": v2.GaussianBlur(kernel_size=9, sigma=(2.0, 3.0)),
        "Sobel filter": Sobel(),
        "elastic": v2.ElasticTransform(alpha=max(10.0, size * 0.6), sigma=max(3.0, size / 25)),
    }


def policy(kind: Policy, rgb: bool = False) -> v2.Transform:
    """A training-time policy for small classification images.

    ``geometric``: random flips and 90° rotations (for images with no canonical orientation,
    e.g. histology); ``intensity``: brightness/contrast (and, for RGB, saturation)
    jitter plus mild Gaussian noise; ``geometric+intensity``: both; ``none``: identity.
    """
    geometric = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), random_rot90()]
    jitter = v2.ColorJitter(0.2, 0.2, 0.2) if rgb else v2.ColorJitter(0.2, 0.2)
    intensity = [v2.RandomApply([jitter], p=0.8), v2.GaussianNoise(sigma=0.03)]
    parts = {"none": [], "geometric": geometric, "intensity": intensity, "geometric+intensity": geometric + intensity}
    if kind not in parts:
        raise ValueError(f"Unknown policy {kind!r}; choose one of {', '.join(POLICIES)}.")
    return v2.Compose(parts[kind]) if parts[kind] else v2.Identity()


def joint_transform(degrees: float = 0.0) -> v2.Compose:
    """Geometric augmentation for an image with its target dict (boxes, masks, labels).

    Flips and 90° rotations (and optionally a rotation of up to ±``degrees``), then clamping
    and sanitising so that boxes that left the image are dropped together with their labels
    and masks. Rotations by 90° are exact only for square images.
    """
    steps: list[nn.Module] = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), random_rot90()]
    if degrees:
        steps.append(v2.RandomRotation(degrees))
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1)]
    return v2.Compose(steps)


def boxes_inside(boxes: torch.Tensor, canvas_size: tuple[int, int]) -> bool:
    """True if all XYXY boxes lie inside an image of ``canvas_size = (H, W)`` and have x1<x2, y1<y2."""
    h, w = canvas_size
    b = boxes.as_subclass(torch.Tensor)
    return bool(((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= w) & (b[:, 3] <= h)
                 & (b[:, 0] < b[:, 2]) & (b[:, 1] < b[:, 3])).all())


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """XYXY boxes enclosing each instance mask, in the convention of :class:`dlmi.SyntheticCells`."""
    m = masks.as_subclass(torch.Tensor).bool()
    return masks_to_boxes(m) if len(m) else torch.zeros((0, 4))


def laterality_permutation(labels: Mapping[str, str]) -> torch.Tensor:
    """Where each class goes under a left–right flip: swaps ``…left…`` and ``…right…`` names.

    ``labels`` maps class index (as a string, like MedMNIST's INFO) to name. Classes without a
    side map to themselves. Raises if a side has no partner.
    """
    names = {int(k): v.lower() for k, v in labels.items()}
    index = {v: k for k, v in names.items()}
    perm = list(range(len(names)))
    for k, name in names.items():
        for a, b in (("left", "right"), ("right", "left")):
            if a in name:
                partner = name.replace(a, b)
                if partner not in index:
                    raise ValueError(f"class {k} {name!r} has no mirror class {partner!r}")
                perm[k] = index[partner]
    return torch.tensor(perm)


class LateralityFlip:
    """Horizontal flip of an image that also swaps left/right class labels (``perm`` from
    :func:`laterality_permutation`). Called as ``image, label = flip(image, label)``."""

    def __init__(self, perm: torch.Tensor, p: float = 0.5) -> None:
        self.perm, self.p = perm, p

    def __call__(self, image: torch.Tensor, label: int | torch.Tensor) -> tuple[torch.Tensor, Any]:
        if torch.rand(()) >= self.p:
            return image, label
        return v2.functional.horizontal_flip(image), self.perm[label]


def augment_batch(x: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``transform`` to each image of a batch separately (a v2 transform called on a batch
    would draw one random parameter set for the whole batch)."""
    return torch.stack([transform(xi) for xi in x])


def fit_augmented(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  transform: Callable[[torch.Tensor], torch.Tensor] | None, *, epochs: int,
                  lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 0.0,
                  val: tuple[torch.Tensor, torch.Tensor] | None = None,
                  device: torch.device | None = None, seed: int = 0) -> History:
    """Like :func:`dlmi.train.fit`, but every epoch trains on a freshly augmented copy of ``x``."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = History()
    for epoch in range(epochs):
        xa = x if transform is None else augment_batch(x, transform)
        h = fit(model, xa, y, epochs=1, batch_size=batch_size, optimizer=optimizer, val=val,
                device=device, seed=seed * 10_007 + epoch)
        history.loss += h.loss
        history.val_acc += h.val_acc
    return history


def augmentation_trial(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor],
                       tests: Mapping[str, tuple[torch.Tensor, torch.Tensor]], kind: Policy, *,
                       epochs: int, seed: int, rgb: bool = False, lr: float = 2e-3, batch_size: int = 32,
                       device: torch.device | None = None) -> dict[str, float]:
    """Train ``model`` with policy ``kind`` and return accuracy on each named evaluation set."""
    transform = None if kind == "none" else policy(kind, rgb)
    fit_augmented(model, *train, transform, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device)
    return {name: accuracy(predict(model, xs), ys) for name, (xs, ys) in tests.items()}


def subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int = 0,
           stratify: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of ``(x, y)``, class-balanced when ``stratify`` (single-label ``y``)."""
    gen = torch.Generator().manual_seed(seed)
    if n >= len(x):
        return x, y
    if not stratify or y.ndim != 1:
        idx = torch.randperm(len(x), generator=gen)[:n]
        return x[idx], y[idx]
    classes = y.unique()
    per = [torch.nonzero(y == c).view(-1) for c in classes]
    per = [p[torch.randperm(len(p), generator=gen)] for p in per]
    quota = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    idx = torch.cat([p[:q] for p, q in zip(per, quota, strict=False)])
    idx = idx[torch.randperm(len(idx), generator=gen)]
    return x[idx], y[idx]


def show_grid(images: Sequence[torch.Tensor], titles: Sequence[str], ncols: int = 6,
              size: float = 2.0, cmap: str = "gray"):
    """Plot (C, H, W) or (H, W) tensors in a grid with titles; returns the figure."""
    import matplotlib.pyplot as plt

    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles, strict=False):
        a = img.as_subclass(torch.Tensor).detach().cpu().float()
        a = a.permute(1, 2, 0) if a.ndim == 3 and a.shape[0] == 3 else a.squeeze(0) if a.ndim == 3 else a
        ax.imshow(a.clamp(0, 1).numpy(), cmap=cmap, vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def strength_transform(name: str, strength: float, size: int) -> v2.Transform:
    """One named augmentation at ``strength`` in [0, 1] (0 = identity) for ``size``-pixel
    float images: the knob of the book's explorer."""
    s = float(min(max(strength, 0.0), 1.0))
    table: dict[str, Callable[[], v2.Transform]] = {
        "rotation": lambda: v2.RandomRotation(45 * s),
        "crop + resize": lambda: v2.RandomResizedCrop(size, scale=(1 - 0.9 * s, 1.0),
                                                      ratio=(1 - 0.25 * s, 1 + 0.33 * s), antialias=True),
        "colour jitter": lambda: v2.ColorJitter(s, s, s, 0.5 * s),
        "Gaussian noise": lambda: v2.GaussianNoise(sigma=0.3 * s),
        "speckle noise": lambda: SpeckleNoise(0.8 * s),
        "Gaussian blur": lambda: v2.GaussianBlur(2 * (size // 16) + 1, sigma=0.1 + 4 * s),
        "cutout": lambda: v2.RandomErasing(p=1.0 if s > 0 else 0.0, scale=(0.02, max(0.02, 0.3 * s)), value=0.0),
        "elastic": lambda: v2.ElasticTransform(alpha=2.0 * size * s, sigma=max(2.0, size / 25)),
    }
    if name not in table:
        raise ValueError(f"Unknown augmentation {name!r}; choose one of {', '.join(table)}.")
    return table[name]()


EXPLORER_AUGMENTATIONS = ("rotation", "crop + resize", "colour jitter", "Gaussian noise", "speckle noise",
                          "Gaussian blur", "cutout", "elastic")


def augment_explorer(images: Mapping[str, torch.Tensor]) -> ipywidgets.interactive | StaticExplorer:
    """An ipywidgets explorer: pick an image, an augmentation and its strength, see four draws.

    ``images`` maps names to float (C, H, W) tensors in [0, 1]. Returns ``ipywidgets.interactive``.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from .widgets import explorer

    def show(image: str, augmentation: str, strength: float = 0.5, seed: int = 0) -> None:
        x = tv_tensors.Image(images[image])
        t = strength_transform(augmentation, strength, x.shape[-1])
        torch.manual_seed(seed)
        show_grid([x] + [t(x) for _ in range(4)], ["original"] + [f"draw {i + 1}" for i in range(4)],
                  ncols=5, size=2.2)
        plt.show()

    return explorer(
        show, image=widgets.Dropdown(options=list(images)),
        augmentation=widgets.Dropdown(options=list(EXPLORER_AUGMENTATIONS)),
        strength=widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05),
        seed=widgets.IntSlider(value=0, min=0, max=20))


def disk_mask(shape: tuple[int, int], center: tuple[float, float], radius: float) -> torch.Tensor:
    """Boolean (H, W) mask of a disk at ``center = (row, col)``."""
    rows, cols = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def lesion_contrast(image: torch.Tensor, lesion: torch.Tensor, ring: float = 4.0) -> dict[str, float]:
    """Contrast (mean inside − mean of a surrounding ring ``ring`` pixels wide) and
    contrast-to-noise ratio (contrast / std of the ring) of a lesion mask in a 2D image."""
    img = image.as_subclass(torch.Tensor).squeeze().float()
    from torch.nn.functional import max_pool2d

    k = 2 * int(ring) + 1
    grown = max_pool2d(lesion.float()[None, None], k, stride=1, padding=int(ring))[0, 0].bool()
    background = grown & ~lesion
    contrast = img[lesion].mean() - img[background].mean()
    return {"contrast": float(contrast), "cnr": float(contrast / img[background].std().clamp_min(1e-8))}


class TransformedDataset(torch.utils.data.Dataset):
    """Wrap a data set of ``(image, target)`` pairs so that every access returns a freshly
    transformed sample (for detection or segmentation training with :func:`joint_transform`)."""

    def __init__(self, dataset: torch.utils.data.Dataset, transform: Callable[..., Any]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.transform(*self.dataset[index])
