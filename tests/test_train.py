"""dlmi.train.task_metrics: medmnist.Evaluator's rules per task type, checked against scikit-learn."""
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score

from dlmi.train import task_metrics

g = torch.Generator().manual_seed(0)


def test_binary_scores_the_positive_class():
    logits, y = torch.randn(60, 2, generator=g), torch.randint(0, 2, (60,), generator=g)
    probs = torch.softmax(logits, 1)
    got = task_metrics("binary-class", y, logits)
    assert got["AUC"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
    assert got["ACC"] == pytest.approx(accuracy_score(y, probs[:, 1] > 0.5))


@pytest.mark.parametrize("task", ["multi-class", "ordinal-regression"])
def test_multiclass_and_ordinal_average_one_vs_rest(task):
    logits, y = torch.randn(90, 5, generator=g), torch.arange(90) % 5
    probs = torch.softmax(logits, 1).numpy()
    got = task_metrics(task, y, logits)
    assert got["AUC"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert got["ACC"] == pytest.approx(accuracy_score(y, probs.argmax(1)))


def test_multilabel_averages_per_label_with_sigmoids():
    logits, y = torch.randn(80, 3, generator=g), (torch.rand(80, 3, generator=g) < 0.3).float()
    probs = torch.sigmoid(logits).numpy()
    got = task_metrics("multi-label, binary-class", y, logits)
    assert got["AUC"] == pytest.approx(np.mean([roc_auc_score(y[:, i], probs[:, i]) for i in range(3)]))
    assert got["ACC"] == pytest.approx(np.mean([accuracy_score(y[:, i], probs[:, i] > 0.5) for i in range(3)]))


def test_binary_task_with_wrong_logits_is_named():
    with pytest.raises(ValueError, match=r"binary task needs logits of shape \(N, 2\), got \(4, 3\)"):
        task_metrics("binary-class", torch.tensor([0, 1, 0, 1]), torch.randn(4, 3))
