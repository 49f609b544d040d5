"""Small, explicit training and evaluation loops shared by the chapters."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.optim.swa_utils import update_bn
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
    """Per-epoch training loss and (optional) validation accuracy and loss."""

    loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)


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


def class_weights(y: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """"Balanced" weights ``N / (K · count_k)`` (scikit-learn's ``compute_class_weight``): each
    class contributes equally to the loss. For multi-label ``y`` (N, L): the positive weight
    ``negatives / positives`` per label, for ``BCEWithLogitsLoss(pos_weight=...)``."""
    y = y.cpu()
    if y.ndim == 2:
        pos = y.float().sum(0)
        return (len(y) - pos) / pos.clamp(min=1)
    counts = torch.bincount(y.long(), minlength=num_classes or 0).float()
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"class(es) {missing} have no training example: balanced weights are undefined")
    return len(y) / (len(counts) * counts)


def default_loss(y: torch.Tensor, class_weight: Literal["balanced"] | None = None) -> nn.Module:
    """Cross-entropy for class indices, BCE-with-logits for multi-label (N, L) float targets;
    with ``class_weight="balanced"``, weighted by :func:`class_weights`."""
    weight = class_weights(y) if class_weight == "balanced" else None
    if class_weight not in (None, "balanced"):
        raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    if y.ndim == 2:
        return nn.BCEWithLogitsLoss(pos_weight=weight)
    return nn.CrossEntropyLoss(weight=weight)


def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> bool:
    """Re-estimate every BatchNorm layer's running mean and variance from ``x`` (one pass, no
    gradients, exact averages: ``torch.optim.swa_utils.update_bn``). After few optimisation
    steps the running statistics lag far behind the weights and evaluation-mode predictions
    can collapse to one class; this puts them back on the data. Returns whether the model
    has batch norm at all."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    dev = next(model.parameters()).device
    was_training = model.training
    update_bn(((x[i:i + batch_size],) for i in range(0, len(x), batch_size)), model, device=dev)
    model.train(was_training)
    return True


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
        lr: float = 1e-3, batch_size: int = 128, weight_decay: float = 0.0,
        val: tuple[torch.Tensor, torch.Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        loss_fn: nn.Module | None = None, device: torch.device | None = None,
        seed: int = 0, progress: bool = False, min_steps: int = 0,
        class_weight: Literal["balanced"] | None = None,
        recalibrate_bn: bool = True) -> History:
    """Train ``model`` on tensors with mini-batch Adam (or ``optimizer``);
    return its history.

    ``min_steps`` raises the number of epochs until at least that many optimizer steps are
    taken (small data sets give few steps per epoch). ``class_weight="balanced"`` weights the
    default loss by inverse class frequency. With ``recalibrate_bn`` (default) BatchNorm
    running statistics are re-estimated on the training images before every validation and
    at the end, so evaluation mode sees statistics of the final weights."""
    dev = device or default_device()
    model.to(dev)
    loss_fn = (loss_fn or default_loss(y, class_weight)).to(dev)
    optimizer = optimizer or torch.optim.Adam(
        model.parameters(), lr=lr, weight_decay=weight_decay)
    epochs = max(epochs, math.ceil(min_steps / math.ceil(len(x) / batch_size)))
    gen = torch.Generator().manual_seed(seed)
    history = History()
    bar = tqdm(range(epochs), desc="epochs", disable=not progress)
    for _ in bar:
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
            if recalibrate_bn:
                recalibrate_batchnorm(model, x)
            logits, target = predict(model, val[0]), val[1].cpu()
            history.val_acc.append(accuracy(logits, target))
            with torch.no_grad():
                val_loss = loss_fn(logits.to(dev), target.to(dev)).item()
            history.val_loss.append(val_loss)
            bar.set_postfix(loss=f"{history.loss[-1]:.3f}",
                            val_acc=f"{history.val_acc[-1]:.3f}")
    if recalibrate_bn and val is None:
        recalibrate_batchnorm(model, x)
    return history


def scores(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """Logits → probabilities: softmax over classes, or a sigmoid per label."""
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)


def task_metrics(task: str, y: torch.Tensor, logits: torch.Tensor) -> dict[str, float]:
    """AUC and ACC of ``logits`` for labels ``y`` by ``medmnist.Evaluator``'s rules for ``task``
    (``info(flag)["task"]``): binary — AUC of the positive class's probability, ACC at 0.5;
    multi-class and ordinal — mean one-vs-rest AUC, arg-max ACC; multi-label — a sigmoid per
    label, AUC and ACC (at 0.5) per label, averaged."""
    from medmnist.evaluator import getACC, getAUC

    if task == "binary-class" and logits.shape[1] != 2:
        raise ValueError(f"a binary task needs logits of shape (N, 2), got {tuple(logits.shape)}")
    probs = scores(logits.float(), task.startswith("multi-label")).numpy()
    labels = y.cpu().numpy()
    return {"AUC": float(getAUC(labels, probs, task)), "ACC": float(getACC(labels, probs, task))}


def medmnist_metrics(flag: str, split: str, logits: torch.Tensor, size: int = 28,
                     mode: str | None = None) -> dict[str, float]:
    """AUC and ACC from ``medmnist.Evaluator`` for logits over a whole split, on the data that
    :func:`dlmi.load_medmnist` uses for the same arguments (real or stand-in)."""
    from medmnist import Evaluator

    from .datasets import resolve

    _, name, path = resolve(flag, size, mode=mode)  # type: ignore[arg-type]
    evaluator = Evaluator(name, split, size=size, root=str(path.parent))
    multi = evaluator.info["task"].startswith("multi-label")
    auc, acc = evaluator.evaluate(scores(logits, multi).numpy())
    return {"AUC": float(auc), "ACC": float(acc)}


def grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               loss_fn: nn.Module | None = None) -> list[tuple[str, float]]:
    """L2 norm of the loss gradient for each conv/linear weight, input to output, after one
    backward pass on ``(x, y)``: where gradients vanish or explode."""
    loss_fn = loss_fn or (nn.BCEWithLogitsLoss() if y.ndim == 2 else nn.CrossEntropyLoss())
    model.zero_grad()
    loss_fn(model(x), y).backward()
    out = [(name, m.weight.grad.norm().item()) for name, m in model.named_modules()
           if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.grad is not None]
    model.zero_grad()
    return out
