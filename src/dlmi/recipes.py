"""The course's reference recipe for classifying any 2D MedMNIST flag, and its benchmark.

The recipe is what chapter 3 and lab 3 teach — :class:`dlmi.models.SmallCNN` trained by
:func:`dlmi.train.fit` — with the three settings that keep it working on small or imbalanced
sets: a minimum number of optimizer steps, BatchNorm statistics re-estimated on the training
images, and balanced class weights for binary tasks. ``python -m dlmi.recipes`` (``make
bench-recipes``) trains it on each flag's train split and prints the test-split ACC/AUC of
``medmnist.Evaluator`` next to the MedMNIST v2 ResNet-18 (28) figures, saying whether the
data were real or the synthetic stand-in.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from .datasets import info, load_medmnist_tensors, resolve_mode
from .models import SmallCNN
from .runtime import seed_everything
from .train import fit, medmnist_metrics, predict

# MedMNIST v2 (Yang et al., Scientific Data 10:41, 2023, Table 3), ResNet-18 at 28 px, test split;
# also the basis of lab 3's thresholds on real data.
TARGETS: dict[str, dict[str, float]] = {
    "pathmnist": {"ACC": 0.907, "AUC": 0.983},
    "chestmnist": {"ACC": 0.947, "AUC": 0.768},
    "dermamnist": {"ACC": 0.735, "AUC": 0.917},
    "octmnist": {"ACC": 0.743, "AUC": 0.943},
    "pneumoniamnist": {"ACC": 0.854, "AUC": 0.944},
    "retinamnist": {"ACC": 0.524, "AUC": 0.717},
    "breastmnist": {"ACC": 0.863, "AUC": 0.901},
    "bloodmnist": {"ACC": 0.958, "AUC": 0.998},
    "tissuemnist": {"ACC": 0.676, "AUC": 0.930},
    "organamnist": {"ACC": 0.935, "AUC": 0.997},
    "organcmnist": {"ACC": 0.900, "AUC": 0.992},
    "organsmnist": {"ACC": 0.782, "AUC": 0.972},
}
# One flag of each task type: binary (tiny, imbalanced), binary with a train/test shift,
# multi-class, multi-label, ordinal.
DEFAULT_FLAGS = ("breastmnist", "pneumoniamnist", "pathmnist", "chestmnist", "retinamnist")


@dataclass
class RecipeResult:
    """Test-split figures of one recipe run."""

    flag: str
    mode: str
    task: str
    train_images: int
    steps: int
    seconds: float  # CPU time of training (all threads of this process)
    metrics: dict[str, float]


def train_recipe(flag: str, *, size: int = 28, min_steps: int = 800, max_train: int = 20_000,
                 width: int = 16, lr: float = 3e-3, batch_size: int = 64, seed: int = 0,
                 mode: str | None = None) -> RecipeResult:
    """Train the reference recipe on ``flag``'s train split (at most ``max_train`` images)
    and score it on the test split with ``medmnist.Evaluator``."""
    seed_everything(seed)
    meta = info(flag)
    task = meta["task"]
    x, y = load_medmnist_tensors(flag, "train", size, mode=mode)  # type: ignore[arg-type]
    x, y = x[:max_train], y[:max_train]
    model = SmallCNN(meta["n_channels"], len(meta["label"]), width=width)
    start = time.process_time()
    epochs_steps = -(-len(x) // batch_size)
    history = fit(model, x, y, epochs=1, lr=lr, batch_size=batch_size, seed=seed,
                  min_steps=min_steps, weight_decay=1e-4,
                  class_weight="balanced" if task == "binary-class" else None)
    seconds = time.process_time() - start
    x_test, _ = load_medmnist_tensors(flag, "test", size, mode=mode)  # type: ignore[arg-type]
    metrics = medmnist_metrics(flag, "test", predict(model, x_test), size=size, mode=mode)
    return RecipeResult(flag, resolve_mode(flag, size, mode=mode), task, len(x),  # type: ignore[arg-type]
                        len(history.loss) * epochs_steps, seconds, metrics)


def report(result: RecipeResult) -> str:
    """One table row: figures, the published target and whether the recipe reached it."""
    target = TARGETS.get(result.flag)
    cells = []
    for key in ("ACC", "AUC"):
        got = result.metrics[key]
        want = f" / {target[key]:.3f} {'✓' if got >= target[key] else '✗'}" if target else ""
        cells.append(f"{got:.3f}{want}")
    return (f"| {result.flag} | {result.mode} | {result.task} | {result.train_images} | {result.steps} "
            f"| {result.seconds:.1f} | {cells[0]} | {cells[1]} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlmi.recipes", description=__doc__.split("\n\n")[0])
    parser.add_argument("flags", nargs="*", default=list(DEFAULT_FLAGS))
    parser.add_argument("--min-steps", type=int, default=800)
    parser.add_argument("--mode", choices=["auto", "real", "synthetic"], default=None,
                        help="data mode (default: $DLMI_DATA, else auto)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print("| flag | data | task | train images | steps | train CPU s | test ACC / ResNet-18 | test AUC / ResNet-18 |")
    print("|---|---|---|---|---|---|---|---|")
    for flag in args.flags:
        print(report(train_recipe(flag, min_steps=args.min_steps, mode=args.mode)), flush=True)
    print("data 'synthetic' = the stand-in: its figures say the recipe runs, not what it reaches "
          "on real MedMNIST")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
