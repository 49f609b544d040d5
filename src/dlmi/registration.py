"""Registration and enhancement.

Registration: affine warps with a spatial transformer (``affine_grid`` + ``grid_sample``),
intensity-based affine registration by gradient descent, dense displacement fields, random
smooth deformations, and a tiny VoxelMorph-style network (a U-Net that predicts the field,
trained without ground-truth fields on image similarity + smoothness), and percentile
intensity scaling. Denoising lives in :mod:`dlmi.denoising`.

Images are (N, C, H, W) float tensors in [0, 1]; a displacement field ``flow`` is
(N, 2, H, W) in pixels, channel 0 = x (columns), channel 1 = y (rows): the output pixel p
samples the input at p + flow(p).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .segmentation import UNet


# ---------------------------------------------------------------- affine (spatial transformer)
def affine_matrix(angle: float = 0.0, scale: float = 1.0, tx: float = 0.0, ty: float = 0.0) -> torch.Tensor:
    """A (2, 3) matrix for ``affine_grid`` in normalised coordinates ([-1, 1] across the image):
    rotation by ``angle`` degrees, isotropic ``scale``, translation (tx, ty) in half-widths.
    It maps output coordinates to the input coordinates they sample."""
    a = math.radians(angle)
    return torch.tensor([[scale * math.cos(a), -scale * math.sin(a), tx],
                         [scale * math.sin(a), scale * math.cos(a), ty]], dtype=torch.float32)


def affine_warp(image: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Warp (N, C, H, W) images with (N, 2, 3) or (2, 3) affine matrices (zeros outside)."""
    theta = theta.expand(len(image), 2, 3) if theta.ndim == 2 else theta
    grid = F.affine_grid(theta.to(image), list(image.shape), align_corners=False)
    return F.grid_sample(image, grid, mode=mode, padding_mode="zeros", align_corners=False)


def register_affine(moving: torch.Tensor, fixed: torch.Tensor, steps: int = 200, lr: float = 0.01,
                    blur: float = 2.0) -> tuple[torch.Tensor, list[float]]:
    """Find the affine matrix that warps ``moving`` onto ``fixed`` (both (1, C, H, W)) by gradient
    descent on the mean squared difference, starting from the identity. Both images are
    Gaussian-blurred by ``blur`` pixels first (a smoother, wider basin). Returns (theta, losses)."""
    from torchvision.transforms.v2.functional import gaussian_blur

    k = 2 * int(3 * blur) + 1
    m, f = (gaussian_blur(t, [k, k], [blur, blur]) if blur > 0 else t for t in (moving, fixed))
    theta = torch.eye(2, 3, device=moving.device)[None].clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(affine_warp(m, theta), f)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return theta.detach()[0], losses


# ---------------------------------------------------------------- dense deformation fields
def _base_grid(h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys])  # (2, H, W), x first


def warp(image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear",
         padding_mode: str = "border") -> torch.Tensor:
    """Spatial transformer for a dense field: out(p) = image(p + flow(p)), bilinear.

    ``flow`` (N, 2, H, W) is in pixels (x, y). Differentiable in both image and flow, which is
    what lets a network learn to predict ``flow``.
    """
    n, _, h, w = image.shape
    pos = _base_grid(h, w, image.device)[None] + flow
    # pixel centres → normalised [-1, 1] with align_corners=True
    gx = 2 * pos[:, 0] / max(w - 1, 1) - 1
    gy = 2 * pos[:, 1] / max(h - 1, 1) - 1
    return F.grid_sample(image, torch.stack([gx, gy], -1), mode=mode, padding_mode=padding_mode,
                         align_corners=True)


def random_flow(n: int, shape: tuple[int, int], max_disp: float = 4.0, control: int = 5,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Random smooth displacement fields (N, 2, H, W): uniform random vectors on a coarse
    ``control`` × ``control`` grid, upsampled bicubically; each component at most ``max_disp``
    pixels at the control points."""
    coarse = (torch.rand(n, 2, control, control, generator=generator) * 2 - 1) * max_disp
    return F.interpolate(coarse, size=shape, mode="bicubic", align_corners=True)


def smoothness_loss(flow: torch.Tensor) -> torch.Tensor:
    """Mean squared spatial gradient of the field (VoxelMorph's diffusion regulariser)."""
    dx = flow[..., :, 1:] - flow[..., :, :-1]
    dy = flow[..., 1:, :] - flow[..., :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()


def jacobian_determinant(flow: torch.Tensor) -> torch.Tensor:
    """det(I + ∇flow) per pixel (N, H-1, W-1): < 0 where the deformation folds space."""
    dux = flow[:, 0, :-1, 1:] - flow[:, 0, :-1, :-1]
    duy = flow[:, 0, 1:, :-1] - flow[:, 0, :-1, :-1]
    dvx = flow[:, 1, :-1, 1:] - flow[:, 1, :-1, :-1]
    dvy = flow[:, 1, 1:, :-1] - flow[:, 1, :-1, :-1]
    return (1 + dux) * (1 + dvy) - duy * dvx


def grid_image(shape: tuple[int, int], step: int = 6, width: int = 1) -> torch.Tensor:
    """A (1, 1, H, W) image of grid lines, to be warped to show a deformation."""
    img = torch.zeros(1, 1, *shape)
    for k in range(width):
        img[..., k::step, :] = 1.0
        img[..., :, k::step] = 1.0
    return img


class RegNet(nn.Module):
    """A tiny VoxelMorph-style registration network (Balakrishnan et al., 2018/2019) in 2D:
    a U-Net reads the moving and the fixed image stacked as two channels and outputs a
    displacement field (2 channels, pixels). The last layer starts at zero: identity warp."""

    def __init__(self, base: int = 8, depth: int = 3, max_disp: float = 8.0) -> None:
        super().__init__()
        self.unet = UNet(2, 2, base=base, depth=depth)
        nn.init.normal_(self.unet.out.weight, std=1e-5)
        nn.init.zeros_(self.unet.out.bias)
        self.max_disp = max_disp

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return self.max_disp * torch.tanh(self.unet(torch.cat([moving, fixed], 1)) / self.max_disp)


def registration_loss(warped: torch.Tensor, fixed: torch.Tensor, flow: torch.Tensor,
                      smooth_weight: float = 0.05) -> torch.Tensor:
    """Unsupervised registration loss: MSE(warped, fixed) + ``smooth_weight`` · smoothness."""
    return F.mse_loss(warped, fixed) + smooth_weight * smoothness_loss(flow)


def train_registration(model: RegNet, images: torch.Tensor, *, steps: int, batch_size: int = 8,
                       max_disp: float = 4.0, smooth_weight: float = 0.05, lr: float = 3e-3,
                       seed: int = 0, device: torch.device | None = None) -> list[float]:
    """Train on synthetic pairs: fixed = a training image, moving = fixed warped by a random
    smooth field. The network never sees that field, only the similarity of its own warp
    of ``moving`` to ``fixed`` and the smoothness of its field. Returns the loss per step."""
    from .runtime import device as default_device

    dev = device or default_device()
    model.to(dev).train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        fixed = images[idx].to(dev)
        flow_true = random_flow(batch_size, (fixed.shape[-2], fixed.shape[-1]), max_disp, generator=gen)
        moving = warp(fixed, flow_true.to(dev))
        flow = model(moving, fixed)
        loss = registration_loss(warp(moving, flow), fixed, flow, smooth_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def register_deformable(moving: torch.Tensor, fixed: torch.Tensor, steps: int = 100, lr: float = 0.1,
                        smooth_weight: float = 0.05) -> tuple[torch.Tensor, list[float]]:
    """Classical deformable registration: optimise a displacement field for this one pair
    (N, C, H, W) by gradient descent on :func:`registration_loss`. Returns (flow, losses)."""
    flow = torch.zeros(len(moving), 2, *moving.shape[-2:], device=moving.device, requires_grad=True)
    opt = torch.optim.Adam([flow], lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = registration_loss(warp(moving, flow), fixed, flow, smooth_weight)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return flow.detach(), losses


def normalise(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Scale an image to [0, 1] between its ``low`` and ``high`` percentiles (clipped)."""
    lo, hi = np.percentile(image, [low, high])
    return np.clip((image - lo) / max(hi - lo, 1e-8), 0, 1).astype(np.float32)
