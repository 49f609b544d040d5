"""The CNN building blocks of the lecture as short PyTorch modules, and how to count their cost.

LeNet-5, an AlexNet-style net, the VGG block, the Inception module, the ResNet basic block,
the MobileNet depthwise-separable block, a small CNN for MedMNIST and a deep plain/residual
net for the vanishing-gradient experiment. :func:`count_params`, :func:`count_macs`,
:func:`depth` and :func:`layer_table` measure any ``nn.Module``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


def _act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al.): two 5×5 conv + 2×2 pooling stages, then 120-84-classes dense layers.

    Inputs smaller than the original 32×32 are zero-padded in the first convolution.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 32,
                 activation: str = "sigmoid") -> None:
        super().__init__()
        pad = max(0, (32 - input_size) // 2)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=pad), _act(activation), nn.AvgPool2d(2, 2),
            nn.Conv2d(6, 16, 5), _act(activation), nn.AvgPool2d(2, 2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), _act(activation),
            nn.Linear(120, 84), _act(activation), nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class AlexNetStyle(nn.Module):
    """AlexNet's recipe (5 conv + 3 dense layers, ReLU, max pooling, dropout) sized for small
    images; ``width`` scales every layer (1.0 = AlexNet's 64-192-384-256-256 / 4096-4096)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 0.25,
                 dropout: float = 0.5) -> None:
        super().__init__()
        c = [max(1, round(n * width)) for n in (64, 192, 384, 256, 256, 4096)]
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c[0], 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c[0], c[1], 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(),
            nn.Conv2d(c[2], c[3], 3, padding=1), nn.ReLU(),
            nn.Conv2d(c[3], c[4], 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(3),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c[4] * 9, c[5]), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(c[5], c[5]), nn.ReLU(), nn.Linear(c[5], num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGGBlock(nn.Sequential):
    """VGG's unit: ``n_convs`` 3×3 convolutions ('same' padding) with ReLU,
    then 2×2 max pooling."""

    def __init__(self, c_in: int, c_out: int, n_convs: int = 2,
                 batchnorm: bool = False) -> None:
        layers: list[nn.Module] = []
        for i in range(n_convs):
            c = c_in if i == 0 else c_out
            layers.append(nn.Conv2d(c, c_out, 3, padding=1))
            if batchnorm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU())
        layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)


def _conv_relu(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.ReLU())


class InceptionModule(nn.Module):
    """GoogLeNet's Inception module: 1×1, 3×3 and 5×5 convolutions and 3×3
    max pooling in parallel, concatenated along channels.

    With ``reduce=True`` (the real design) 1×1 convolutions shrink the
    channels before the 3×3 and 5×5 ones and after the pooling;
    ``reduce=False`` is the naive version, for comparison.
    """

    def __init__(self, c_in: int, c1: int, c3_reduce: int, c3: int,
                 c5_reduce: int, c5: int, pool_proj: int,
                 reduce: bool = True) -> None:
        super().__init__()
        self.branch1 = _conv_relu(c_in, c1, 1)
        if reduce:
            self.branch3 = nn.Sequential(_conv_relu(c_in, c3_reduce, 1),
                                         _conv_relu(c3_reduce, c3, 3))
            self.branch5 = nn.Sequential(_conv_relu(c_in, c5_reduce, 1),
                                         _conv_relu(c5_reduce, c5, 5))
            self.branch_pool: nn.Module = nn.Sequential(nn.MaxPool2d(3, 1, 1),
                                             _conv_relu(c_in, pool_proj, 1))
        else:
            self.branch3 = _conv_relu(c_in, c3, 3)
            self.branch5 = _conv_relu(c_in, c5, 5)
            self.branch_pool = nn.MaxPool2d(3, 1, 1)
        self.out_channels = c1 + c3 + c5 + (pool_proj if reduce else c_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1, self.branch3, self.branch5, self.branch_pool]
        return torch.cat([branch(x) for branch in branches], dim=1)


class BasicBlock(nn.Module):
    """ResNet's basic block: ``relu(F(x) + shortcut(x))``, ``F`` =
    conv3-BN-ReLU-conv3-BN. The shortcut is the identity, or a strided
    1×1 conv + BN when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class DepthwiseSeparable(nn.Sequential):
    """MobileNet's block: a 3×3 depthwise convolution (one filter per
    channel, ``groups=c_in``), then a 1×1 pointwise convolution that mixes
    the channels; each followed by BN and ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
            nn.BatchNorm2d(c_in), nn.ReLU(),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(),
        )


class StandardConv(nn.Sequential):
    """The block a depthwise-separable one replaces: 3×3 convolution + BN + ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCNN(nn.Module):
    """A small CNN for MedMNIST-sized images: three conv stages (width, 2·width, 4·width), global
    average pooling and a linear classifier; optional batch norm and dropout."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16,
                 batchnorm: bool = True, dropout: float = 0.0, activation: str = "relu") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, co in enumerate((width, 2 * width, 4 * width)):
            layers.append(nn.Conv2d(c, co, 3, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(co))
            layers.append(_act(activation))
            layers.append(nn.MaxPool2d(2) if i < 2 else nn.AdaptiveAvgPool2d(1))
            c = co
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DeepNet(nn.Module):
    """``blocks`` conv3 layers of constant width, plain (``x <- act(conv(x))``) or residual
    (``x <- x + act(conv(x))``), no normalisation: the setting where gradients vanish."""

    def __init__(self, blocks: int = 20, width: int = 16, residual: bool = False, activation: str = "relu",
                 in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        self.residual = residual
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(width, width, 3, padding=1), _act(activation))
                                    for _ in range(blocks))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x) if self.residual else block(x)
        return self.head(x)


# ------------------------------------------------------------------------------- counting
def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (``sum(p.numel())``), optionally only those with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _layer_macs(module: nn.Module, inp: torch.Tensor,
                out: torch.Tensor) -> int:
    """Multiply-accumulates of one weight layer for this input/output."""
    if isinstance(module, nn.ConvTranspose2d):
        # each input value meets C_out/g · K·K weights
        k = module.kernel_size[0] * module.kernel_size[1]
        return inp.numel() * module.out_channels // module.groups * k
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        # each output value is a sum over C_in/g · K·K products
        k = 1
        for s in module.kernel_size:
            k *= s
        return out.numel() * module.in_channels // module.groups * k
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def layer_table(model: nn.Module, input_size: tuple[int, ...],
                device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """One row per leaf module in call order: name, type, output shape, parameters, MACs
    (for a batch of one ``input_size`` = (C, H, W) input)."""
    rows: list[dict[str, Any]] = []

    def hook(name: str):
        def record(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
            rows.append({"layer": name, "type": type(mod).__name__, "output": tuple(out.shape[1:]),
                         "params": sum(p.numel() for p in mod.parameters(recurse=False)),
                         "MACs": _layer_macs(mod, args[0], out)})
        return record

    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rows


def count_macs(model: nn.Module, input_size: tuple[int, ...], device: str | torch.device = "cpu") -> int:
    """Multiply-accumulate operations of the conv and linear layers for one input of
    ``input_size`` = (C, H, W). Use ``device="meta"`` for a model built on the meta device
    (shapes only, no memory, no time)."""
    return sum(row["MACs"] for row in layer_table(model, input_size, device))


def depth(model: nn.Module) -> int:
    """Weight layers (conv, linear) on the longest input-to-output path of the traced graph:
    parallel branches and shortcuts do not add depth (VGG-16 → 16, ResNet-18 → 18)."""
    graph = fx.symbolic_trace(model)
    modules = dict(graph.named_modules())
    longest: dict[fx.Node, int] = {}
    for node in graph.graph.nodes:
        d = max((longest[a] for a in node.all_input_nodes), default=0)
        if node.op == "call_module" and isinstance(modules[node.target], WEIGHT_LAYERS):
            d += 1
        longest[node] = d
    return max(longest.values(), default=0)


def summary(models: dict[str, nn.Module], input_size: tuple[int, ...],
            device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """Rows ``{model, params, MACs, depth}`` for a table comparing several models."""
    return [{"model": name, "params": count_params(m), "MACs": count_macs(m, input_size, device),
             "depth": depth(m)} for name, m in models.items()]
