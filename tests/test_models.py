"""dlmi.models and the training helpers of dlmi.train: shapes, counts checked by hand and
against torch/torchvision, and a training loop that learns."""
import pytest
import torch
import torchvision
from torch import nn

import dlmi
from dlmi import models as M
from dlmi.train import fit, grad_norms, medmnist_metrics, predict, scores


def _n(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("make, in_shape, out_shape", [
    (lambda: M.LeNet5(1, 10, input_size=28), (1, 28, 28), (10,)),
    (lambda: M.LeNet5(3, 4, input_size=32, activation="relu"), (3, 32, 32), (4,)),
    (lambda: M.AlexNetStyle(3, 9), (3, 28, 28), (9,)),
    (lambda: M.AlexNetStyle(1, 2, width=0.1), (1, 64, 64), (2,)),
    (lambda: M.VGGBlock(3, 8, 3), (3, 16, 16), (8, 8, 8)),
    (lambda: M.InceptionModule(16, 8, 4, 8, 2, 4, 4), (16, 12, 12), (24, 12, 12)),
    (lambda: M.InceptionModule(16, 8, 4, 8, 2, 4, 4, reduce=False), (16, 12, 12), (36, 12, 12)),
    (lambda: M.BasicBlock(8, 8), (8, 10, 10), (8, 10, 10)),
    (lambda: M.BasicBlock(8, 16, stride=2), (8, 10, 10), (16, 5, 5)),
    (lambda: M.DepthwiseSeparable(8, 16, stride=2), (8, 10, 10), (16, 5, 5)),
    (lambda: M.StandardConv(8, 16), (8, 10, 10), (16, 10, 10)),
    (lambda: M.SmallCNN(3, 9, width=8, dropout=0.3), (3, 28, 28), (9,)),
    (lambda: M.SmallCNN(1, 2, batchnorm=False, activation="sigmoid"), (1, 28, 28), (2,)),
    (lambda: M.DeepNet(5, 8, residual=True), (1, 28, 28), (2,)),
])
def test_shapes(make, in_shape, out_shape):
    model = make().eval()
    assert model(torch.zeros(2, *in_shape)).shape == (2, *out_shape)
    assert M.count_params(model) == _n(model)


def test_inception_out_channels_attribute():
    m = M.InceptionModule(16, 8, 4, 8, 2, 4, 4)
    assert m(torch.zeros(1, 16, 6, 6)).shape[1] == m.out_channels


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="activation"):
        M.SmallCNN(activation="swish")


def test_lenet5_has_the_classic_parameter_count():
    # 156 + 2416 + 48120 + 10164 + 850 = 61706 (LeCun et al. 1998, with full C3 connections)
    assert M.count_params(M.LeNet5(1, 10, input_size=32)) == 61_706


def test_count_params_trainable_only():
    m = M.SmallCNN(1, 2, width=4)
    for p in m.features.parameters():
        p.requires_grad_(False)
    assert M.count_params(m, trainable_only=True) == _n(m.classifier)


def test_macs_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert M.count_macs(conv, (3, 10, 10)) == 8 * 10 * 10 * 3 * 9
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert M.count_macs(dw, (8, 10, 10)) == 8 * 10 * 10 * 9
    lin = nn.Sequential(nn.Flatten(), nn.Linear(20, 5))
    assert M.count_macs(lin, (4, 5)) == 100
    up = nn.ConvTranspose2d(4, 2, 2, stride=2)
    assert M.count_macs(up, (4, 3, 3)) == 4 * 9 * 2 * 4
    # pooling, activations and batch norm are not counted
    assert M.count_macs(nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)), (1, 4, 4)) == 0


def test_depthwise_separable_saving_matches_the_formula():
    # MobileNet paper: cost ratio 1/N + 1/K^2 for N output channels and K×K kernels
    c_in, c_out, k, hw = 32, 64, 3, 16
    sep = M.count_macs(M.DepthwiseSeparable(c_in, c_out), (c_in, hw, hw))
    std = M.count_macs(M.StandardConv(c_in, c_out), (c_in, hw, hw))
    assert sep / std == pytest.approx(1 / c_out + 1 / k**2)


def test_layer_table_rows_sum_to_totals():
    m = M.LeNet5(1, 10, input_size=28)
    rows = M.layer_table(m, (1, 28, 28))
    assert rows[0]["output"] == (6, 28, 28)
    assert sum(r["params"] for r in rows) == _n(m)
    assert m.training, "layer_table restores the training mode"


@pytest.mark.parametrize("name, expected", [("alexnet", 8), ("vgg16", 16), ("resnet18", 18),
                                            ("resnet34", 34), ("googlenet", 22)])
def test_depth_and_macs_of_torchvision_models(name, expected):
    kw = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    with torch.device("meta"):
        model = getattr(torchvision.models, name)(weights=None, **kw)
    assert M.depth(model) == expected
    if name == "resnet18":  # the published 1.8 GFLOPs (multiply-adds) at 224×224
        assert M.count_macs(model, (3, 224, 224), device="meta") == pytest.approx(1.82e9, rel=0.01)


def test_depth_of_blocks():
    assert M.depth(M.LeNet5()) == 5
    assert M.depth(M.InceptionModule(16, 8, 4, 8, 2, 4, 4)) == 2
    assert M.depth(M.BasicBlock(8, 16, stride=2)) == 2
    assert M.depth(M.DeepNet(7, 4)) == 9


def test_summary_rows():
    rows = M.summary({"a": M.VGGBlock(1, 4), "b": M.StandardConv(1, 4)}, (1, 8, 8))
    assert [r["model"] for r in rows] == ["a", "b"]
    assert rows[1] == {"model": "b", "params": 4 * 9 + 8, "MACs": 4 * 64 * 9, "depth": 1}


def test_fit_reduces_loss_on_the_standin(data_dir):
    x, y = dlmi.load_medmnist_tensors("bloodmnist", "train", mode="synthetic")
    xv, yv = dlmi.load_medmnist_tensors("bloodmnist", "val", mode="synthetic")
    torch.manual_seed(0)
    model = M.SmallCNN(3, 8, width=8)
    hist = fit(model, x, y, epochs=8, lr=3e-3, val=(xv[:256], yv[:256]))
    assert hist.loss[-1] < 0.8 * hist.loss[0]
    assert len(hist.val_loss) == len(hist.val_acc) == 8
    logits = predict(model, xv)
    metrics = medmnist_metrics("bloodmnist", "val", logits, mode="synthetic")
    assert set(metrics) == {"AUC", "ACC"}
    assert metrics["AUC"] > 0.6, "better than chance after a few epochs"
    acc = (logits.argmax(1) == yv).float().mean().item()
    assert metrics["ACC"] == pytest.approx(acc)


def test_scores():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    assert torch.allclose(scores(logits).sum(1), torch.ones(2))
    assert torch.allclose(scores(logits, multi_label=True)[0], torch.full((2,), 0.5))


def test_residual_connections_keep_gradients_alive():
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 2, (8,))
    plain = grad_norms(M.DeepNet(20, 8, activation="sigmoid"), x, y)
    torch.manual_seed(0)
    res = grad_norms(M.DeepNet(20, 8, residual=True, activation="sigmoid"), x, y)
    assert len(plain) == 22 and plain[0][0] == "stem"
    first_plain, first_res = plain[0][1], res[0][1]
    assert first_plain < 1e-3 * plain[-1][1], "sigmoid plain net: gradients vanish towards the input"
    assert first_res > 100 * first_plain
