"""The synthetic stand-in per flag: real split sizes and class priors, a look of its own per
modality, learnable but not trivially, and a cache that follows the generator's version."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from medmnist.info import INFO

import dlmi
from dlmi import datasets, standin
from dlmi.models import SmallCNN
from dlmi.train import accuracy, fit, predict

FRACTION = 0.01  # large sets: 800 images per split (the floor), small sets in full
SMALL = [f for f in dlmi.FLAGS_2D if sum(INFO[f]["n_samples"].values()) <= standin.SMALL_SET]


@pytest.fixture(scope="module")
def made() -> dict[str, dict[str, np.ndarray]]:
    """Every flag's stand-in at 28 px, made once for the module."""
    return {flag: standin.make_standin(INFO[flag], 28, FRACTION, seed=1) for flag in dlmi.FLAGS_2D}


def test_small_sets_have_their_real_split_sizes(made):
    assert set(SMALL) == {"breastmnist", "pneumoniamnist", "retinamnist"}
    for flag in SMALL:
        assert {s: len(made[flag][f"{s}_labels"]) for s in standin.SPLITS} == INFO[flag]["n_samples"]
        assert standin.split_sizes(INFO[flag], FRACTION, 28) == INFO[flag]["n_samples"]
    assert standin.split_sizes(INFO["breastmnist"], 0.05, 224) == INFO["breastmnist"]["n_samples"]
    assert standin.split_sizes(INFO["pneumoniamnist"], 0.05, 224)["train"] == 2000  # the large-image cap


@pytest.mark.parametrize("flag", dlmi.FLAGS_2D)
def test_images_and_labels_have_the_real_format(flag, made):
    meta = INFO[flag]
    shape = (28, 28, 3) if meta["n_channels"] == 3 else (28, 28)
    for split in standin.SPLITS:
        images, labels = made[flag][f"{split}_images"], made[flag][f"{split}_labels"]
        assert images.dtype == np.uint8 and images.shape[1:] == shape
        assert labels.dtype == np.uint8 and len(labels) == len(images)
        assert labels.shape[1] == (14 if flag == "chestmnist" else 1)
        assert images.std() > 10, "a texture, not a flat image"


@pytest.mark.parametrize("flag", dlmi.FLAGS_2D)
def test_class_priors_per_split_follow_the_table(flag, made):
    for split in standin.SPLITS:
        labels = made[flag][f"{split}_labels"]
        want = standin.priors(flag, split)
        got = labels.mean(0) if flag == "chestmnist" else np.bincount(labels[:, 0], minlength=len(want)) / len(labels)
        if flag == "chestmnist":  # independent draws: binomial tolerance
            tolerance = 4 * np.sqrt(want * (1 - want) / len(labels)) + 1 / len(labels)
        else:  # exact counts up to rounding
            tolerance = np.full(len(want), 1 / len(labels) + 1e-9)
        assert np.all(np.abs(got - want) <= tolerance), f"{split}: {got.round(3)} vs {want.round(3)}"


def test_the_tables_hold_the_published_figures():
    assert standin.priors("pneumoniamnist", "test")[1] == pytest.approx(390 / 624)
    assert standin.priors("pneumoniamnist", "train")[1] == pytest.approx(0.742, abs=0.001)
    assert standin.priors("breastmnist", "val")[1] == pytest.approx(0.731, abs=0.001)
    assert standin.priors("dermamnist", "train").argmax() == 5  # melanocytic nevi
    assert standin.priors("dermamnist", "train")[5] == pytest.approx(0.67, abs=0.005)
    assert standin.priors("octmnist", "test").tolist() == [0.25] * 4  # balanced test, skewed train
    assert standin.priors("octmnist", "train")[3] == pytest.approx(0.472, abs=0.001)
    chest = standin.priors("chestmnist", "train")
    assert len(chest) == 14 and chest.argmax() == 3 and chest.max() < 0.2  # infiltration
    retina = standin.priors("retinamnist", "test")
    assert retina.argmax() == 0 and retina[-1] == retina.min()
    for flag in dlmi.FLAGS_2D:
        for split in standin.SPLITS:
            assert len(standin.priors(flag, split)) == len(INFO[flag]["label"]), flag


def test_pneumonia_keeps_its_train_test_shift(made):
    train = made["pneumoniamnist"]["train_labels"].mean()
    test = made["pneumoniamnist"]["test_labels"].mean()
    assert train == pytest.approx(0.742, abs=0.002) and test == pytest.approx(0.625, abs=0.002)


def test_chest_no_finding_is_the_majority(made):
    labels = made["chestmnist"]["train_labels"]
    assert 0.4 < (labels.sum(1) == 0).mean() < 0.65
    assert labels[:, 13].mean() < 0.01  # hernia is rare


def _look(images: np.ndarray) -> np.ndarray:
    """Per-image look statistics: mean and spread per channel, edge energy, and a 4×4 thumbnail."""
    x = images.astype(np.float32).reshape(len(images), 28, 28, -1) / 255
    edges = np.abs(np.diff(x, axis=1)).mean((1, 2, 3)) + np.abs(np.diff(x, axis=2)).mean((1, 2, 3))
    thumbnail = x.reshape(len(x), 4, 7, 4, 7, -1).mean((2, 4)).reshape(len(x), -1)
    return np.column_stack([x.mean((1, 2)), x.std((1, 2)), edges, thumbnail])


@pytest.mark.parametrize("flags", [
    ("breastmnist", "pneumoniamnist"),
    ("breastmnist", "pneumoniamnist", "octmnist", "organamnist", "tissuemnist"),
    ("pathmnist", "bloodmnist", "dermamnist", "retinamnist"),
])
def test_flags_differ_in_look(flags, made):
    """A linear classifier on a few look statistics per image tells the flags apart (the old
    stand-in drew every flag alike)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def features(split):
        xs = [_look(made[f][f"{split}_images"][:400]) for f in flags]
        return np.concatenate(xs), np.repeat(np.arange(len(flags)), [len(x) for x in xs])

    (x, y), (xt, yt) = features("train"), features("test")
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(x), y)
    assert clf.score(scaler.transform(xt), yt) > 0.9


def _cnn_accuracy(flag: str, steps: int) -> tuple[float, float]:
    """Test accuracy of a small CNN trained for ``steps`` steps on the stand-in, and the
    test split's majority-class rate."""
    dlmi.seed_everything(0)
    x, y = dlmi.load_medmnist_tensors(flag, "train", mode="synthetic")
    xt, yt = dlmi.load_medmnist_tensors(flag, "test", mode="synthetic")
    meta = INFO[flag]
    model = SmallCNN(meta["n_channels"], len(meta["label"]), width=16)
    fit(model, x, y, epochs=1, lr=3e-3, batch_size=64, min_steps=steps, weight_decay=1e-4,
        device=torch.device("cpu"), class_weight="balanced" if meta["task"] == "binary-class" else None)
    return accuracy(predict(model, xt), yt), np.bincount(yt.numpy()).max() / len(yt)


@pytest.mark.parametrize("flag, margin, ceiling", [("breastmnist", 0.05, 0.97), ("bloodmnist", 0.3, 0.97)])
def test_learnable_but_not_trivially(flag, margin, ceiling, data_dir, offline):
    acc, majority = _cnn_accuracy(flag, steps=300)
    assert majority + margin < acc < ceiling, f"{flag}: accuracy {acc:.3f}, majority {majority:.3f}"


def test_looks_are_made_from_real_images():
    for name, channels in (("stain", 2), ("retina", 3), ("ct", 1), ("mr", 1), ("us", 1)):
        tex = standin._texture(name)
        assert tex.dtype == np.float32 and tex.shape[-1] == channels and min(tex.shape[1:3]) >= 64
        assert tex.std() > 0.1, name
    assert standin._texture("ct") is standin._texture("ct"), "decoded once per process"


def test_cache_is_remade_when_the_generator_version_changes(data_dir, offline, monkeypatch):
    path = data_dir / "synthetic" / "breastmnist_synthetic.npz"
    dlmi.load_medmnist("breastmnist", "val", mode="synthetic")
    stamp = path.stat().st_mtime_ns
    dlmi.load_medmnist("breastmnist", "val", mode="synthetic")
    assert path.stat().st_mtime_ns == stamp, "a fresh file is reused"
    monkeypatch.setattr(datasets, "STANDIN_VERSION", standin.STANDIN_VERSION + 1)
    ds = dlmi.load_medmnist("breastmnist", "val", mode="synthetic")
    assert path.stat().st_mtime_ns != stamp and len(ds) == 78
    with np.load(path) as npz:
        assert int(npz["standin_version"]) == standin.STANDIN_VERSION + 1


def test_an_unversioned_stand_in_file_is_remade(data_dir, offline):
    """Files of the old generator carry no version."""
    ds = dlmi.load_medmnist("breastmnist", "test", mode="synthetic")
    path = data_dir / "synthetic" / "breastmnist_synthetic.npz"
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "standin_version"}
    np.savez(path, **{**arrays, "test_images": np.zeros_like(arrays["test_images"])})
    ds = dlmi.load_medmnist("breastmnist", "test", mode="synthetic")
    assert ds.imgs.std() > 10
    with np.load(path) as npz:
        assert int(npz["standin_version"]) == standin.STANDIN_VERSION


def test_unknown_flag_is_named():
    with pytest.raises(ValueError, match="No stand-in for 'organmnist3d'"):
        standin.make_standin(INFO["organmnist3d"], 28, 0.01, 0)
