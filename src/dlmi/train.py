"""Small, explicit training and evaluation loops shared by the chapters."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .runtime import device as default_device


def scaled(n: int) -> int:
    """Scale an epoch or sample count by ``$DLMI_SCALE`` (default 1: the book's small settings)."""
    scale = float(os.environ.get("DLMI_SCALE", "1"))
    if scale <= 0:
        raise ValueError(f"DLMI_SCALE must be positive, got {scale}")
    return max(1, round(n * scale))


@dataclass
class History:
    """Per-epoch training loss and (optional) validation accuracy."""

    loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Model outputs for ``x`` in evaluation mode, batched, returned on the CPU."""
    model.eval()
    dev = next(model.parameters()).device
    return torch.cat([model(x[i:i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)])


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy: argmax for single-label targets, threshold 0 per label for multi-label ones."""
    if y.ndim == 2:
        return ((logits > 0).float() == y).float().mean().item()
    return (logits.argmax(1) == y).float().mean().item()


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float = 1e-3,
        batch_size: int = 128, weight_decay: float = 0.0, val: tuple[torch.Tensor, torch.Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None, loss_fn: nn.Module | None = None,
        device: torch.device | None = None, seed: int = 0, progress: bool = False) -> History:
    """Train ``model`` on tensors with mini-batch Adam (or ``optimizer``); return its history."""
    dev = device or default_device()
    model.to(dev)
    loss_fn = loss_fn or (nn.BCEWithLogitsLoss() if y.ndim == 2 else nn.CrossEntropyLoss())
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history = History()
    for _ in tqdm(range(epochs), desc="epochs", disable=not progress):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            xb, yb = x[idx].to(dev), y[idx].to(dev)
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        history.loss.append(total / len(x))
        if val is not None:
            history.val_acc.append(accuracy(predict(model, val[0]), val[1]))
    return history
