"""The small-data settings of dlmi.train (class weights, minimum steps, BatchNorm
re-estimation) and the reference recipe of dlmi.recipes."""
import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from dlmi import recipes
from dlmi.models import SmallCNN
from dlmi.train import class_weights, default_loss, fit, predict, recalibrate_batchnorm


def test_class_weights_match_scikit_learn():
    y = torch.tensor([1] * 73 + [0] * 27)
    want = compute_class_weight("balanced", classes=np.array([0, 1]), y=y.numpy())
    assert torch.allclose(class_weights(y), torch.tensor(want, dtype=torch.float32))


def test_multilabel_weights_are_negatives_over_positives():
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert torch.allclose(class_weights(y), torch.tensor([3.0, 1.0]))
    assert torch.equal(default_loss(y, "balanced").pos_weight, torch.tensor([3.0, 1.0]))


def test_a_class_without_examples_is_named():
    with pytest.raises(ValueError, match=r"\[1\] have no training example"):
        class_weights(torch.tensor([0, 0, 2]))


def test_balanced_weights_lift_the_minority_class():
    """On an imbalanced set with overlapping classes, the unweighted loss buys accuracy by
    ignoring the minority class; balanced weights trade some of it for minority recall."""
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(800, generator=g) < 0.2).long()
    x = (y.float() * 1.0 + torch.randn(800, generator=g)).view(-1, 1, 1, 1)
    recall = {}
    for weight in (None, "balanced"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
        fit(model, x, y, epochs=30, lr=0.05, class_weight=weight, device=torch.device("cpu"))
        pred = predict(model, x).argmax(1)
        recall[weight] = (pred[y == 1] == 1).float().mean().item()
    assert recall[None] < 0.3 and recall["balanced"] > 0.6, recall


def test_min_steps_raise_the_epochs():
    x, y = torch.randn(100, 1, 4, 4), torch.randint(0, 2, (100,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    history = fit(model, x, y, epochs=1, batch_size=32, min_steps=50, device=torch.device("cpu"))
    assert len(history.loss) == 13  # 4 steps per epoch


def _first_bn_input(model: SmallCNN, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.features[0](x)


@pytest.mark.parametrize("recalibrate", [True, False])
def test_fit_puts_batchnorm_statistics_on_the_data(recalibrate):
    """Few steps on inputs far from BatchNorm's initial statistics: without re-estimation the
    running statistics lag behind the data (the small-data collapse of evaluation mode)."""
    g = torch.Generator().manual_seed(1)
    x = 5 + 3 * torch.rand(200, 1, 12, 12, generator=g)
    y = torch.randint(0, 2, (200,), generator=g)
    torch.manual_seed(0)
    model = SmallCNN(1, 2, width=4)
    fit(model, x, y, epochs=1, batch_size=100, device=torch.device("cpu"), recalibrate_bn=recalibrate)
    bn, act = model.features[1], _first_bn_input(model, x)
    mean, var = act.mean((0, 2, 3)), act.var((0, 2, 3), unbiased=True)
    close = torch.allclose(bn.running_mean, mean, rtol=1e-3, atol=1e-4) and \
        torch.allclose(bn.running_var, var, rtol=1e-2, atol=1e-4)
    assert close is recalibrate, (bn.running_mean, mean)


def test_recalibrate_reports_models_without_batchnorm():
    assert recalibrate_batchnorm(nn.Linear(2, 2), torch.randn(4, 2)) is False
    model = SmallCNN(1, 2, width=4).train(False)
    assert recalibrate_batchnorm(model, torch.rand(8, 1, 12, 12)) is True
    assert not model.training, "the model's mode is restored"


def test_recipe_runs_and_says_which_data(data_dir):
    result = recipes.train_recipe("breastmnist", min_steps=40, mode="synthetic")
    assert result.mode == "synthetic" and result.task == "binary-class"
    assert result.steps >= 40
    assert set(result.metrics) == {"ACC", "AUC"} and 0 <= result.metrics["ACC"] <= 1
    row = recipes.report(result)
    assert row.startswith("| breastmnist | synthetic | binary-class |") and "0.863" in row


def test_targets_cover_every_2d_flag():
    """Every 2D flag has its published ResNet-18 (28) figures: the benchmark and lab 3's real-data
    thresholds read them."""
    from dlmi import FLAGS_2D

    assert set(recipes.TARGETS) == set(FLAGS_2D)
    assert all(0.5 < t["AUC"] < 1 and 0.5 < t["ACC"] < 1 for t in recipes.TARGETS.values())
