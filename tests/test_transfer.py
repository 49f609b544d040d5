"""dlmi.transfer: backbone/head split, freezing, checkpoints, partial loading, Grad-CAM."""
import pytest
import torch

from dlmi import transfer
from dlmi.models import SmallCNN, count_params
from dlmi.train import fit


def test_embed_and_head_of_small_cnn():
    m = SmallCNN(3, 5, width=8)
    assert transfer.embed(m.features, torch.rand(2, 3, 28, 28)).shape == (2, 32)
    assert transfer.head_name(m) == "classifier.2"
    with pytest.raises(ValueError):
        transfer.head_name(torch.nn.Conv2d(1, 1, 1))


def test_freeze_stops_updates():
    torch.manual_seed(0)
    m = SmallCNN(1, 2, width=4)
    transfer.freeze(m.features)
    before = {k: v.clone() for k, v in m.features.state_dict().items()
              if "running" not in k and "num_batches" not in k}
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 2, (16,))
    head_before = m.classifier[-1].weight.clone()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    fit(m, x, y, epochs=2, optimizer=opt, device=torch.device("cpu"))
    after = m.features.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert not torch.equal(head_before, m.classifier[-1].weight)
    head = m.classifier[-1]
    assert count_params(m, trainable_only=True) == head.weight.numel() + head.bias.numel()


def test_checkpoint_roundtrip_and_partial_load(tmp_path):
    src = SmallCNN(1, 11, width=8)
    path = transfer.save_checkpoint(src, tmp_path / "src.pt", source="organamnist", epochs=1)
    state, meta = transfer.load_checkpoint(path)
    assert meta == {"source": "organamnist", "epochs": 1}
    dst = SmallCNN(1, 2, width=8)
    report = transfer.load_partial(dst, state)
    assert set(report.skipped) == {"classifier.2.weight", "classifier.2.bias"}
    assert set(report.missing) == {"classifier.2.weight", "classifier.2.bias"}
    for k, v in dst.features.state_dict().items():
        assert torch.equal(v, src.features.state_dict()[k])


def test_param_groups_have_their_learning_rates():
    m = SmallCNN(1, 2, width=4)
    opt = torch.optim.Adam(transfer.param_groups(m, 1e-4, 1e-2))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"features": 1e-4, "head": 1e-2}
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == count_params(m)


def test_reset_head():
    m = transfer.reset_head(SmallCNN(1, 9, width=4), 3)
    assert m(torch.rand(1, 1, 28, 28)).shape == (1, 3)


def test_transfer_trial_strategies_run():
    torch.manual_seed(0)
    x, y = torch.rand(40, 1, 28, 28), torch.randint(0, 2, (40,))
    pre = SmallCNN(1, 4, width=4).state_dict()
    for s in transfer.STRATEGIES:
        acc = transfer.transfer_trial(s, pre, (x, y), (x, y), num_classes=2, in_channels=1, steps=3,
                                      width=4, device=torch.device("cpu"))
        assert 0 <= acc <= 1
    with pytest.raises(ValueError):
        transfer.transfer_trial("frozen", None, (x, y), (x, y), num_classes=2, in_channels=1)


def test_imagenet_model_says_what_it_used(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    m, used = transfer.imagenet_model(3, weights="none")
    assert "random" in used and m.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 3)

    def offline(*_a, **_k):
        raise OSError("network unreachable")

    import torchvision
    monkeypatch.setattr(torchvision.models.ResNet18_Weights.DEFAULT.__class__, "get_state_dict",
                        lambda self, *a, **k: offline())
    with pytest.raises(transfer.PretrainedUnavailableError):
        transfer.imagenet_model(3, weights="imagenet")
    m, used = transfer.imagenet_model(3, weights="auto")
    assert "RANDOM" in used and "ImageNet weights unavailable" in used


def test_imagenet_input():
    x = transfer.imagenet_input(torch.full((2, 1, 28, 28), 0.485), size=32)
    assert x.shape == (2, 3, 32, 32) and x[:, 0].abs().max() < 1e-5


def test_grad_cam_weights_the_channel_the_class_uses():
    class Toy(torch.nn.Module):  # class 1 = mean of channel 0, class 0 = mean of channel 1
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 2, 1, bias=False)
            with torch.no_grad():
                self.conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))

        def forward(self, x):
            f = self.conv(x).mean((2, 3))
            return torch.stack([f[:, 1], f[:, 0]], 1)

    x = torch.zeros(1, 2, 8, 8)
    x[0, 0, :, :4] = 1.0  # channel 0 lights up the left half
    x[0, 1, :, 4:] = 1.0  # channel 1 the right half
    model = Toy()
    cam1 = transfer.grad_cam(model, model.conv, x, torch.tensor([1]))
    cam0 = transfer.grad_cam(model, model.conv, x, torch.tensor([0]))
    assert cam1.shape == (1, 8, 8)
    assert cam1[0, :, :3].min() > 0.99 and cam1[0, :, 5:].max() < 0.01
    assert cam0[0, :, 5:].min() > 0.99 and cam0[0, :, :3].max() < 0.01
