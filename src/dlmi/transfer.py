"""Transfer learning: freezing, checkpoints, partial loading,
per-group learning rates, an online-only ImageNet code path, and Grad-CAM.

No pretrained weights can be downloaded offline, so the book pretrains
:class:`dlmi.models.SmallCNN` (``features`` → ``classifier``) on a
large *source* data set and transfers it to a small *target* set. :func:`imagenet_model`
is the real code path for torchvision's ImageNet weights when a reader is online: it fails
fast and always says which weights it used.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from .models import SmallCNN
from .runtime import socket_timeout
from .train import accuracy, fit, predict

__all__ = ["STRATEGIES", "LoadReport", "PretrainedUnavailableError", "embed",
           "freeze", "grad_cam", "head_name", "imagenet_input", "imagenet_model", "load_checkpoint",
           "load_partial", "param_groups", "reset_head", "save_checkpoint", "transfer_trial"]

Strategy = Literal["scratch", "frozen", "fine-tune"]
STRATEGIES: tuple[Strategy, ...] = ("scratch", "frozen", "fine-tune")


def head_name(model: nn.Module) -> str:
    """Qualified name of the model's last ``nn.Linear`` (its classification head)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head")
    return names[-1]


def freeze(module: nn.Module, frozen: bool = True) -> nn.Module:
    """Switch ``requires_grad`` off (or back on) for every parameter of ``module``; returns it."""
    for p in module.parameters():
        p.requires_grad_(not frozen)
    return module


def reset_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the last linear layer by a freshly initialised one with ``num_classes`` outputs."""
    name = head_name(model)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes).to(old.weight.device))
    return model


def param_groups(model: nn.Module, lr_features: float, lr_head: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the head (last linear layer) at ``lr_head``, every other
    parameter (the pretrained features) at a usually lower ``lr_features``."""
    head = set(model.get_submodule(head_name(model)).parameters())
    return [{"params": [p for p in model.parameters() if p not in head], "lr": lr_features, "name": "features"},
            {"params": list(head), "lr": lr_head, "name": "head"}]


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **meta: Any) -> Path:
    """Save ``{"state_dict": ..., "meta": meta}`` with :func:`torch.save`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "meta": meta}, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(state_dict, meta)``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["state_dict"], ckpt["meta"]


@dataclass
class LoadReport:
    """What :func:`load_partial` did: keys copied, keys skipped (shape differs), keys missing."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def load_partial(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Copy every tensor whose name and shape match ``model``; report the rest.

    The usual way to reuse a backbone whose head had a different number of classes.
    """
    own = model.state_dict()
    report = LoadReport()
    usable = {}
    for key, value in state_dict.items():
        if key in own and own[key].shape == value.shape:
            usable[key] = value
            report.loaded.append(key)
        else:
            report.skipped.append(key)
    report.missing = [k for k in own if k not in usable]
    model.load_state_dict(usable, strict=False)
    return report


@torch.no_grad()
def embed(features: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Feature vectors (N, D) of ``x`` from a (frozen) feature extractor, in eval mode, on the CPU."""
    return predict(features, x, batch_size).flatten(1)


def transfer_trial(strategy: Strategy, pretrained: dict[str, torch.Tensor] | None,
                   train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], *,
                   num_classes: int, in_channels: int, steps: int = 300, batch_size: int = 32,
                   lr: float = 2e-3, lr_features: float = 2e-4, width: int = 16, seed: int = 0,
                   device: torch.device | None = None) -> float:
    """Test accuracy of one way to train a :class:`dlmi.models.SmallCNN` on a (small) target set.

    ``scratch``: random initialisation, all layers trained at ``lr``. ``frozen``: pretrained
    features fixed, only a new linear head trained on their outputs (at 5·``lr``).
    ``fine-tune``: pretrained features at ``lr_features`` plus a new head at ``lr``. Every
    strategy takes about ``steps`` optimizer steps, whatever the size of ``train``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    if strategy != "scratch" and pretrained is None:
        raise ValueError(f"strategy {strategy!r} needs pretrained weights")
    torch.manual_seed(seed)
    x, y = train
    epochs = max(1, math.ceil(steps * batch_size / len(x)))
    model = SmallCNN(in_channels, num_classes, width)
    if strategy == "scratch":
        fit(model, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device)
        return accuracy(predict(model, test[0]), test[1])
    load_partial(model, pretrained)  # type: ignore[arg-type]
    if strategy == "frozen":
        freeze(model.features)
        head = model.get_submodule(head_name(model))
        feats, feats_test = embed(model.features, x), embed(model.features, test[0])
        fit(head, feats, y, epochs=epochs, lr=lr * 5, batch_size=batch_size, seed=seed, device=device)
        return accuracy(predict(head, feats_test), test[1])
    optimizer = torch.optim.Adam(param_groups(model, lr_features, lr))
    fit(model, x, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer, seed=seed, device=device)
    return accuracy(predict(model, test[0]), test[1])


class PretrainedUnavailableError(RuntimeError):
    """ImageNet weights were required and could not be loaded (offline, no cached file)."""


def imagenet_model(num_classes: int, arch: str = "resnet18",
                   weights: Literal["auto", "imagenet", "none"] = "auto",
                   timeout: float = 10.0) -> tuple[nn.Module, str]:
    """A torchvision classifier with a new ``num_classes`` head, and a sentence saying which
    weights it holds.

    ``imagenet``: ImageNet weights from the torch hub cache or a download with a ``timeout``
    (seconds) per network operation, else :class:`PretrainedUnavailableError`. ``auto``: the
    same, but falls back to random weights with a NOTICE on stderr. ``none``: random weights.
    """
    import torchvision

    if weights not in ("auto", "imagenet", "none"):
        raise ValueError(f"weights must be 'auto', 'imagenet' or 'none', got {weights!r}")
    model = torchvision.models.get_model(arch, weights=None)
    used = f"{arch}: random initialisation (weights='none')"
    if weights != "none":
        enum = torchvision.models.get_model_weights(arch).DEFAULT
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        try:
            with socket_timeout(timeout):
                model.load_state_dict(enum.get_state_dict(progress=False, check_hash=True))
            used = f"{arch}: ImageNet weights {enum} ({'cache' if cached.exists() else 'downloaded'}: {cached})"
        except Exception as err:  # URLError, timeout, hash mismatch: all mean "not available"
            reason = f"{type(err).__name__}: {err}".splitlines()[0][:160]
            if weights == "imagenet":
                raise PretrainedUnavailableError(
                    f"Could not load ImageNet weights for {arch} ({reason}). Go online once, or put "
                    f"{cached.name} into {cached.parent}.") from err
            used = f"{arch}: RANDOM initialisation — ImageNet weights unavailable ({reason})"
            print(f"NOTICE: {used}", file=sys.stderr)
    reset_head(model, num_classes)
    return model, used


def imagenet_input(x: torch.Tensor, size: int = 64) -> torch.Tensor:
    """Grey or RGB images in [0, 1] → 3 channels, resized, normalised with ImageNet statistics."""
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor,
             target: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM heat maps (N, H, W) in [0, 1] for class ``target`` (default: the predicted class).

    The gradients of the class score with respect to ``layer``'s output, averaged over space,
    weight that output's channels; the ReLU of the weighted sum is upsampled to the input size.
    """
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("act", out))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x)
            act = store["act"]
            target = logits.argmax(1) if target is None else target.to(logits.device)
            score = logits.gather(1, target.view(-1, 1)).sum()
            grads = torch.autograd.grad(score, act)[0]
    finally:
        handle.remove()
        model.train(was_training)
    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return (cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)).detach()
