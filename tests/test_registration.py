"""dlmi.registration and dlmi.denoising: warps against known transforms, affine registration, fields, denoising."""
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dlmi import denoising as den
from dlmi import registration as reg


def smooth_image(h=32, w=40):
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return (torch.exp(-((x - 0.2) ** 2 + (y + 0.1) ** 2) / 0.2)
            + 0.5 * torch.exp(-((x + 0.4) ** 2 + y**2) / 0.05))[None, None]


def test_identity_warps_change_nothing():
    img = smooth_image()
    assert torch.allclose(reg.affine_warp(img, reg.affine_matrix()), img, atol=1e-5)
    assert torch.allclose(reg.warp(img, torch.zeros(1, 2, 32, 40)), img, atol=1e-5)


def test_integer_flow_is_a_shift():
    img = torch.rand(1, 1, 10, 12)
    flow = torch.zeros(1, 2, 10, 12)
    flow[:, 0] = 2.0  # sample two columns to the right
    out = reg.warp(img, flow)
    assert torch.allclose(out[..., :-2], img[..., 2:], atol=1e-6)


def test_dense_warp_matches_affine_warp():
    img = smooth_image(33, 33)
    theta = reg.affine_matrix(angle=10, scale=1.05, tx=0.1)
    # the affine map as a pixel displacement field (align_corners=True coordinates)
    base = reg._base_grid(33, 33)
    norm = base / 16 - 1
    mapped = torch.einsum("ij,jhw->ihw", theta[:, :2], norm) + theta[:, 2, None, None]
    flow = ((mapped + 1) * 16 - base)[None]
    grid = F.affine_grid(theta[None], [1, 1, 33, 33], align_corners=True)
    ref = F.grid_sample(img, grid, align_corners=True, padding_mode="border")
    assert torch.allclose(reg.warp(img, flow), ref, atol=1e-5)


def test_register_affine_recovers_a_known_transform():
    fixed = smooth_image(48, 48)
    truth = reg.affine_matrix(angle=8, scale=1.05, tx=0.08, ty=-0.05)
    moving = reg.affine_warp(fixed, truth)
    theta, losses = reg.register_affine(moving, fixed, steps=300, lr=0.01, blur=1.0)
    assert losses[-1] < 0.05 * losses[0]
    # warping moving by theta composes to ~identity on the fixed grid
    full = torch.cat([truth, torch.tensor([[0.0, 0, 1]])])
    est = torch.cat([theta, torch.tensor([[0.0, 0, 1]])])
    assert torch.allclose(full @ est, torch.eye(3), atol=0.06)


def test_random_flow_and_smoothness():
    g = torch.Generator().manual_seed(0)
    flow = reg.random_flow(3, (24, 32), max_disp=3.0, generator=g)
    assert flow.shape == (3, 2, 24, 32) and flow.abs().max() <= 3.0 * 1.3
    assert reg.smoothness_loss(torch.ones(1, 2, 5, 5)).item() == 0
    rough = torch.randn(1, 2, 24, 32, generator=g)
    assert reg.smoothness_loss(rough) > 10 * reg.smoothness_loss(flow / flow.abs().max())


def test_jacobian_determinant():
    assert torch.allclose(reg.jacobian_determinant(torch.zeros(1, 2, 6, 6)), torch.ones(1, 5, 5))
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij")
    expand = torch.stack([xs, ys])[None] * 0.5  # scale by 1.5 → det 2.25
    assert torch.allclose(reg.jacobian_determinant(expand), torch.full((1, 5, 5), 2.25))
    fold = torch.stack([-2 * xs, 0 * ys])[None]  # x → -x: folds
    assert (reg.jacobian_determinant(fold) < 0).all()


def test_regnet_starts_at_identity_and_learns():
    torch.manual_seed(0)
    imgs = torch.cat([smooth_image(32, 32), smooth_image(32, 32).flip(-1), smooth_image(32, 32).flip(-2)])
    model = reg.RegNet(base=4, depth=2)
    with torch.no_grad():
        assert model(imgs, imgs).abs().max() < 1e-3
    losses = reg.train_registration(model, imgs, steps=60, batch_size=4, max_disp=2.0, lr=1e-2,
                                    device=torch.device("cpu"))
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_noise_models():
    g = torch.Generator().manual_seed(0)
    x = torch.full((1, 1, 64, 64), 0.5)
    for kind in ("gaussian", "speckle", "poisson"):
        y = den.add_noise(x, kind, 0.1, generator=g)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        assert 0.02 < (y - x).std() < 0.2
    assert den.add_noise(torch.zeros(1, 1, 8, 8), "speckle", 0.5).abs().max() == 0  # multiplicative
    with pytest.raises(ValueError):
        den.add_noise(x, "salt")
    levels = torch.tensor([0.0, 0.2]).view(2, 1, 1, 1)
    y = den.add_noise(x.repeat(2, 1, 1, 1), "gaussian", levels, generator=g)
    assert torch.equal(y[0], x[0]) and (y[1] - x[0]).std() > 0.1


def test_quality_matches_definition():
    a = torch.zeros(16, 16)
    b = a + 0.1
    q = den.quality(a, b)
    assert q["psnr"] == pytest.approx(20.0, abs=1e-6)  # 10·log10(1 / 0.01)
    assert den.quality(a + 0.5, a + 0.501)["ssim"] == pytest.approx(1.0, abs=1e-3)


def test_dncnn_is_residual_and_denoises():
    torch.manual_seed(0)
    m = den.DnCNN(1, 8, 3)
    assert m(torch.zeros(1, 1, 8, 8)).shape == (1, 1, 8, 8)
    g = torch.Generator().manual_seed(1)
    clean = den.random_patches([smooth_image(64, 64)[0, 0].numpy()], 64, 16, generator=g)
    noisy = den.add_noise(clean, "gaussian", 0.1, generator=g)
    from dlmi.train import fit, predict
    fit(m, noisy, clean, epochs=40, lr=1e-2, batch_size=16, loss_fn=torch.nn.MSELoss(), device=torch.device("cpu"))
    assert F.mse_loss(predict(m, noisy), clean) < 0.5 * F.mse_loss(noisy, clean)


def test_grid_image_and_normalise():
    g = reg.grid_image((10, 10), step=5)
    assert g.shape == (1, 1, 10, 10) and g[0, 0, 0].sum() == 10 and g[0, 0, 1, 1] == 0
    n = reg.normalise(np.arange(100.0).reshape(10, 10))
    assert n.min() == 0 and n.max() == 1


def test_register_deformable_reduces_the_mismatch():
    fixed = smooth_image(32, 32)
    g = torch.Generator().manual_seed(0)
    moving = reg.warp(fixed, reg.random_flow(1, (32, 32), 2.0, generator=g))
    flow, losses = reg.register_deformable(moving, fixed, steps=80, lr=0.1)
    assert flow.shape == (1, 2, 32, 32)
    assert F.mse_loss(reg.warp(moving, flow), fixed) < 0.3 * F.mse_loss(moving, fixed)


def test_denoise_explorer_builds():
    w = den.denoise_explorer(den.DnCNN(1, 4, 3), smooth_image(16, 16))
    assert len(w.children) >= 3
