"""The MedMNIST data layer: modes, the stand-in's format, learnability and error cases."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import medmnist
import numpy as np
import pytest
import torch
from medmnist.info import INFO

import dlmi
from dlmi import datasets, standin
from dlmi.train import accuracy, fit, predict


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    """Downloads in real mode retry with back-off: no waiting between attempts in tests."""
    monkeypatch.setenv("DLMI_FETCH_BACKOFF", "0")
    datasets._verified.clear()


def write_fake_real(root: Path, flag: str = "breastmnist") -> Path:
    """A file in the real format with the real split sizes (test data, not a download)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in INFO[flag]["n_samples"].items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{flag}.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("flag", dlmi.FLAGS_2D)
def test_standin_matches_medmnist_format(flag, data_dir, offline):
    ds = dlmi.load_medmnist(flag, "train", mode="synthetic")
    info = INFO[flag]
    assert ds.data_mode == "synthetic"
    assert Path(ds.root) == data_dir / "synthetic", "stand-in must live apart from real files"
    with np.load(Path(ds.root) / f"{flag}_synthetic.npz") as npz:
        assert sorted(npz.files) == sorted([f"{s}_{k}" for s in standin.SPLITS for k in ("images", "labels")]
                                           + ["standin_version"])
        assert int(npz["standin_version"]) == standin.STANDIN_VERSION
        for split in standin.SPLITS:
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
            assert images.dtype == np.uint8 and labels.dtype == np.uint8
            expected = (28, 28, 3) if info["n_channels"] == 3 else (28, 28)
            assert images.shape[1:] == expected
            n_labels = len(info["label"])
            if info["task"].startswith("multi-label"):
                assert labels.shape == (len(images), n_labels) and set(np.unique(labels)) <= {0, 1}
            else:
                assert labels.shape == (len(images), 1)
                assert labels.max() < n_labels
                assert len(np.unique(labels)) == n_labels, "every class must occur"
    assert len(ds) == INFO[f"{flag}_synthetic"]["n_samples"]["train"]
    image, label = ds[0]
    assert image.shape == (info["n_channels"], 28, 28) and image.dtype == torch.float32


@pytest.mark.parametrize("size", [64, 128, 224])
def test_standin_larger_sizes(size, data_dir, offline):
    x, y = dlmi.load_medmnist_tensors("pneumoniamnist", "val", size=size, mode="synthetic")
    assert x.shape[1:] == (1, size, size)
    assert (data_dir / "synthetic" / f"pneumoniamnist_synthetic_{size}.npz").exists()


def test_standin_is_deterministic(data_dir, offline):
    a = standin.make_standin(INFO["dermamnist"], 28, 0.01, seed=3)
    b = standin.make_standin(INFO["dermamnist"], 28, 0.01, seed=3)
    c = standin.make_standin(INFO["dermamnist"], 28, 0.01, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train_images"], c["train_images"])


def test_standin_fraction_scales_split_sizes(data_dir, offline):
    small = standin.split_sizes(INFO["pathmnist"], 0.01, 28)
    large = standin.split_sizes(INFO["pathmnist"], 0.1, 28)
    assert large["train"] == round(INFO["pathmnist"]["n_samples"]["train"] * 0.1)
    assert small["train"] < large["train"]


def test_medmnist_evaluator_and_montage_work_on_standin(data_dir, offline):
    ds = dlmi.load_medmnist("bloodmnist", "test", mode="synthetic")
    evaluator = medmnist.Evaluator("bloodmnist_synthetic", "test", root=ds.root)
    scores = np.eye(8)[ds.labels[:, 0]]
    auc, acc = evaluator.evaluate(scores)
    assert acc == 1.0 and auc == 1.0
    assert ds.montage(length=3).size == (3 * 28, 3 * 28)


def test_standin_is_learnable(data_dir, offline):
    """A tiny CNN beats chance clearly within a few seconds of training."""
    dlmi.seed_everything(0)
    x, y = dlmi.load_medmnist_tensors("pathmnist", "train", mode="synthetic", fraction=0.03)
    xt, yt = dlmi.load_medmnist_tensors("pathmnist", "test", mode="synthetic", fraction=0.03)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 7 * 7, 9))
    fit(model, x, y, epochs=4, lr=2e-3, batch_size=64, device=torch.device("cpu"))
    acc = accuracy(predict(model, xt), yt)
    assert acc > 3 / 9, f"accuracy {acc:.2f} is not clearly above chance (0.11)"


def test_auto_falls_back_loudly_when_offline(data_dir, offline, capsys):
    datasets._noticed.clear()
    ds = dlmi.load_medmnist("breastmnist", "train", mode="auto")
    assert ds.data_mode == "synthetic"
    err = capsys.readouterr().err
    assert "SYNTHETIC" in err and "breastmnist" in err and len(err.strip().splitlines()) == 1
    assert not (data_dir / "breastmnist.npz").exists()
    assert not [p for p in data_dir.iterdir() if p.name.startswith(".download")], "no partial download left"


def test_env_selects_mode(data_dir, offline, monkeypatch):
    monkeypatch.setenv("DLMI_DATA", "synthetic")
    assert dlmi.resolve_mode("organamnist") == "synthetic"
    monkeypatch.setenv("DLMI_DATA", "real")
    with pytest.raises(dlmi.DataUnavailableError):
        dlmi.resolve_mode("organamnist")


def test_real_mode_offline_is_an_error_not_a_standin(data_dir, offline):
    with pytest.raises(dlmi.DataUnavailableError, match="mode='synthetic'"):
        dlmi.load_medmnist("pneumoniamnist", "train", mode="real")
    assert not (data_dir / "synthetic").exists(), "real mode must never make a stand-in"
    assert list(data_dir.glob("*.npz")) == []


def test_real_file_is_used_through_medmnist(data_dir, offline):
    write_fake_real(data_dir)
    ds = dlmi.load_medmnist("breastmnist", "val", mode="real")
    assert ds.data_mode == "real" and type(ds) is medmnist.BreastMNIST and len(ds) == 78
    x, y = dlmi.load_medmnist_tensors("breastmnist", "val", mode="auto")
    assert x.shape == (78, 1, 28, 28) and y.dtype == torch.int64


def test_download_goes_through_medmnist_and_lands_atomically(data_dir, monkeypatch, tmp_path):
    source = write_fake_real(tmp_path / "server")
    calls = []

    def fake_download_url(url, root, filename, md5):
        calls.append(url)
        shutil.copy(source, Path(root) / filename)

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download_url)
    monkeypatch.setitem(INFO["breastmnist"], "MD5", hashlib.md5(source.read_bytes()).hexdigest())
    ds = dlmi.load_medmnist("breastmnist", "test", mode="real")
    assert calls == [INFO["breastmnist"]["url"]]
    assert ds.data_mode == "real" and (data_dir / "breastmnist.npz").exists()


def test_failed_download_leaves_no_partial_file(data_dir, monkeypatch):
    def broken_download_url(url, root, filename, md5):
        (Path(root) / filename).write_bytes(b"PK\x03\x04 half a file")
        raise ConnectionResetError("connection reset mid-transfer")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", broken_download_url)
    with pytest.raises(dlmi.DataUnavailableError):
        dlmi.load_medmnist("breastmnist", "train", mode="real")
    assert [p.name for p in data_dir.iterdir()] == []


@pytest.mark.parametrize("content", [b"", b"not a zip file", None])
def test_corrupt_file_is_named_and_left_untouched(content, data_dir, offline):
    path = write_fake_real(data_dir)
    if content is None:  # truncated
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(dlmi.CorruptDataError) as err:
        dlmi.load_medmnist("breastmnist", "train", mode="auto")
    assert str(path) in str(err.value) and "re-fetch" in str(err.value)
    assert path.read_bytes() == content


@pytest.mark.parametrize("kwargs, match", [
    ({"flag": "pathmnist3d"}, "valid 2D flags: bloodmnist"),
    ({"flag": "nosuchmnist"}, "valid 2D flags"),
    ({"size": 32}, "valid sizes: 28, 64, 128, 224"),
    ({"split": "training"}, "valid splits: train, val, test"),
    ({"mode": "fake"}, "valid modes: real, synthetic, auto"),
])
def test_bad_arguments_name_the_valid_choices(kwargs, match, data_dir, offline):
    args = {"flag": "pathmnist", "split": "train", "mode": "synthetic", **kwargs}
    with pytest.raises(ValueError, match=match):
        dlmi.load_medmnist(**args)


def test_tensors_layout_multilabel_and_device(data_dir, offline):
    x, y = dlmi.load_medmnist_tensors("chestmnist", "val", mode="synthetic", device="cpu")
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert y.dtype == torch.float32 and y.shape == (len(x), 14)


def test_a_real_file_is_validated_once(data_dir, offline, monkeypatch):
    path = write_fake_real(data_dir)
    before = datasets.validations
    for _ in range(3):
        dlmi.resolve_mode("breastmnist", mode="real")
        dlmi.load_medmnist("breastmnist", "val", mode="real")
    assert datasets.validations == before + 1
    assert (data_dir / ".verified" / "breastmnist.npz.json").exists()
    datasets._verified.clear()  # another process (kernel) trusts the stamp
    dlmi.resolve_mode("breastmnist", mode="real")
    assert datasets.validations == before + 1
    st = path.stat()  # the file changes on disk: validated again, and a damaged one is caught
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2] + bytes(len(content) - len(content) // 2))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(dlmi.CorruptDataError):
        dlmi.resolve_mode("breastmnist", mode="real")
    assert datasets.validations == before + 2


def test_stamp_of_older_checks_is_not_trusted(data_dir, offline, monkeypatch):
    write_fake_real(data_dir)
    dlmi.resolve_mode("breastmnist", mode="real")
    datasets._verified.clear()
    monkeypatch.setattr(datasets, "CHECKS_VERSION", datasets.CHECKS_VERSION + 1)
    before = datasets.validations
    dlmi.resolve_mode("breastmnist", mode="real")
    assert datasets.validations == before + 1


def _write_arrays(root: Path, flag: str, change) -> Path:
    """A real-format file with one array changed by ``change(arrays)``."""
    path = write_fake_real(root, flag)
    with np.load(path) as npz:
        arrays = dict(npz)
    change(arrays)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("change, match", [
    (lambda a: a.update(val_images=a["val_images"][:50], val_labels=a["val_labels"][:50]),
     r"its val split has 50 images and 50 labels, but medmnist.INFO\['breastmnist'\] expects 78"),
    (lambda a: a.update(train_labels=a["train_labels"].astype(np.float32)),
     r"train labels are float32 \(1,\), expected integer class labels"),
    (lambda a: a.update(test_images=np.zeros((156, 32, 32), np.uint8)),
     r"test images are uint8 \(32, 32\), expected uint8 \(28, 28\) for breastmnist at size 28"),
    (lambda a: a.update(test_labels=np.full((156, 1), 7, np.uint8)),
     r"test labels run from 7 to 7, expected 0 to 1"),
    (lambda a: a.pop("val_labels"), r"no array 'val_labels'"),
])
def test_nonstandard_real_file_is_a_clear_error(change, match, data_dir, offline):
    path = _write_arrays(data_dir, "breastmnist", change)
    with pytest.raises(dlmi.CorruptDataError, match=match) as err:
        dlmi.load_medmnist("breastmnist", "val", mode="auto")
    message = str(err.value)
    assert str(path) in message and "dlmi-data fetch breastmnist" in message
    assert INFO["breastmnist"]["MD5"] in message
    assert not (data_dir / ".verified" / "breastmnist.npz.json").exists()


def test_size_error_says_how_to_load_a_subset(data_dir, offline):
    _write_arrays(data_dir, "breastmnist", lambda a: a.update(train_images=a["train_images"][:100],
                                                             train_labels=a["train_labels"][:100]))
    with pytest.raises(dlmi.CorruptDataError, match="allow_nonstandard=True") as err:
        dlmi.load_medmnist_tensors("breastmnist", "train", mode="real")
    assert "train split has 100 images and 100 labels" in str(err.value)
    assert not isinstance(err.value, AssertionError)


def _subset(arrays: dict) -> None:
    for split, n in (("train", 100), ("val", 20), ("test", 30)):
        arrays[f"{split}_images"] = arrays[f"{split}_images"][:n]
        arrays[f"{split}_labels"] = arrays[f"{split}_labels"][:n]


def test_allow_nonstandard_loads_a_subset_under_a_flag_of_its_own(data_dir, offline):
    path = _write_arrays(data_dir, "breastmnist", _subset)
    ds = dlmi.load_medmnist("breastmnist", "val", mode="real", allow_nonstandard=True)
    assert ds.flag == "breastmnist_nonstandard" and ds.data_mode == "real"
    assert len(ds) == 20 and "Number of datapoints: 20" in repr(ds)
    assert INFO["breastmnist"]["n_samples"]["val"] == 78, "the real flag's entry is untouched"
    assert len(list(torch.utils.data.DataLoader(ds, batch_size=8))) == 3
    with np.load(path) as npz:
        assert np.array_equal(ds.imgs, npz["val_images"]), "the subset itself, not a copy of anything else"
    x, y = dlmi.load_medmnist_tensors("breastmnist", "test", mode="auto", allow_nonstandard=True)
    assert x.shape == (30, 1, 28, 28) and y.shape == (30,)
    evaluator = medmnist.Evaluator("breastmnist_nonstandard", "test", root=ds.root)
    assert evaluator.evaluate(np.eye(2)[y.numpy()])[1] == 1.0
    with pytest.raises(dlmi.CorruptDataError, match="has 100 images and 100 labels, but .* expects 546"):
        dlmi.load_medmnist("breastmnist", "val", mode="real")


def test_allow_nonstandard_still_checks_everything_else(data_dir, offline):
    def subset_with_float_labels(arrays):
        _subset(arrays)
        arrays["val_labels"] = arrays["val_labels"].astype(np.float32)

    _write_arrays(data_dir, "breastmnist", subset_with_float_labels)
    with pytest.raises(dlmi.CorruptDataError, match=r"val labels are float32 \(1,\), expected integer"):
        dlmi.load_medmnist("breastmnist", "val", mode="real", allow_nonstandard=True)
    _write_arrays(data_dir, "breastmnist", lambda a: (_subset(a), a.update(test_labels=a["test_labels"][:5])))
    with pytest.raises(dlmi.CorruptDataError, match="test split has 30 images and 5 labels, but every image"):
        dlmi.load_medmnist("breastmnist", "test", mode="real", allow_nonstandard=True)


def test_allow_nonstandard_on_a_standard_file_uses_the_real_flag(data_dir, offline):
    write_fake_real(data_dir)
    ds = dlmi.load_medmnist("breastmnist", "val", mode="real", allow_nonstandard=True)
    assert type(ds) is medmnist.BreastMNIST and len(ds) == 78
    assert not (data_dir / "nonstandard").exists()


def test_uint8_tensors_match_float_ones(data_dir, offline):
    x, y = dlmi.load_medmnist_tensors("dermamnist", "val", mode="synthetic")
    xu, yu = dlmi.load_medmnist_tensors("dermamnist", "val", mode="synthetic", dtype=torch.uint8)
    assert xu.dtype == torch.uint8 and xu.shape == x.shape and xu.is_contiguous()
    assert torch.equal(datasets.to_float(xu), x) and torch.equal(y, yu)
    with pytest.raises(ValueError, match="dtype"):
        dlmi.load_medmnist_tensors("dermamnist", "val", mode="synthetic", dtype=torch.float16)


BOOK = Path(__file__).resolve().parents[1] / "book"


def test_book_keeps_no_float_copy_of_a_whole_large_train_split():
    """At real size PathMNIST's train split is 807 MiB as float32 (203 MiB as uint8): chapters
    load it as uint8 and convert only the subset they train on."""
    calls = []
    for page in sorted(BOOK.glob("*.md")):
        text = page.read_text()
        for match in re.finditer(r"load_medmnist_tensors\(([^)]*)\)", text):
            args = match.group(1)
            if re.search(r"\"pathmnist\"|FLAG", args) and "\"train\"" in args:
                calls.append(page.name)
                assert "dtype=torch.uint8" in args, f"{page.name}: {match.group(0)}"
    assert calls, "the book loads PathMNIST's train split somewhere"


def test_no_sentence_claims_how_the_book_was_built():
    """Published pages are built online with real data: no page may state that the book is
    built offline (a condition such as "when this book is built offline" is fine)."""
    claim = re.compile(r"(?<!when )\bthis\s+book\s+is\s+built\s+offline", re.I)
    assert claim.search("This\nbook is built offline, so the code below"), "the check can fail"
    assert not claim.search("(as when this book is built offline)")
    for page in sorted(BOOK.glob("*.md")):
        assert not claim.search(page.read_text()), page.name


def test_register_flag_is_idempotent_and_leaves_real_flags_alone():
    real = dict(INFO["breastmnist"])
    sizes = {"train": 10, "val": 4, "test": 6}
    name = datasets.register_flag("breastmnist", "nonstandard", sizes, "a subset")
    entry = INFO[name]
    assert datasets.register_flag("breastmnist", "nonstandard", sizes, "a subset") == name
    assert INFO[name] is entry  # the same entry: nothing replaced
    assert INFO[name]["n_samples"] == sizes and INFO[name]["url"] is None
    assert getattr(medmnist, INFO[name]["python_class"]).flag == name
    assert INFO["breastmnist"] == real
    other = {"train": 12, "val": 4, "test": 6}
    datasets.register_flag("breastmnist", "nonstandard", other, "a subset")
    assert INFO[name]["n_samples"] == other
