"""dlmi.conv: the NumPy convolutions equal PyTorch's, and the size formulas hold."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlmi import conv


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("seed", range(6))
def test_conv2d_matches_torch_on_random_shapes(seed):
    rng = np.random.default_rng(seed)
    n, c, o, k = rng.integers(1, 4), rng.integers(1, 5), rng.integers(1, 5), int(rng.choice([1, 2, 3, 5]))
    s, p, d = int(rng.integers(1, 4)), int(rng.integers(0, 3)), int(rng.integers(1, 3))
    h, w = rng.integers(d * (k - 1) + 1, 20, 2)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((o, c, k, k))
    b = rng.standard_normal(o)
    ours = conv.conv2d(x, wt, b, stride=s, padding=p, dilation=d)
    ref = F.conv2d(_t(x), _t(wt), _t(b), stride=s, padding=p, dilation=d).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5)
    loops = conv.conv2d_loops(x[0], wt, b, stride=s, padding=p, dilation=d)
    np.testing.assert_allclose(loops, ref[0], atol=1e-5, rtol=1e-5)


def test_grouped_and_depthwise_conv_match_torch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 9, 9))
    for groups, o in [(2, 4), (3, 6), (6, 6)]:
        w = rng.standard_normal((o, 6 // groups, 3, 3))
        ref = F.conv2d(_t(x), _t(w), padding=1, groups=groups).numpy()
        np.testing.assert_allclose(conv.conv2d(x, w, padding=1, groups=groups), ref, atol=1e-5)


def test_conv2d_is_cross_correlation_and_2d_inputs_work():
    x = np.zeros((5, 5))
    x[2, 2] = 1.0
    k = np.arange(9.0).reshape(3, 3)
    # an impulse reproduces the kernel flipped (that is what cross-correlation does)
    np.testing.assert_array_equal(conv.conv2d(x, k, padding=1)[0, 1:4, 1:4], k[::-1, ::-1])


def test_conv2d_rejects_wrong_channels():
    with pytest.raises(ValueError):
        conv.conv2d(np.zeros((3, 8, 8)), np.zeros((2, 2, 3, 3)))
    with pytest.raises(ValueError):
        conv.conv2d_loops(np.zeros((3, 8, 8)), np.zeros((2, 2, 3, 3)))


def test_output_size_formula_matches_torch_over_a_grid():
    for w, k, s, p, d in itertools.product([7, 8, 13], [1, 2, 3, 5], [1, 2, 3], [0, 1, 2], [1, 2]):
        if w + 2 * p < d * (k - 1) + 1:
            with pytest.raises(ValueError):
                conv.conv_output_size(w, k, s, p, d)
            continue
        out = F.conv2d(torch.zeros(1, 1, w, w), torch.zeros(1, 1, k, k), stride=s, padding=p, dilation=d)
        assert out.shape[-1] == conv.conv_output_size(w, k, s, p, d), (w, k, s, p, d)


def test_lecture_example_and_same_padding():
    assert conv.conv_output_size(7, 3, 1, 0) == 5            # 7×7 image, 3×3 filter → 5×5
    assert conv.conv_output_size(7, 3, 2, 0) == 3
    for k, d in [(3, 1), (5, 1), (7, 1), (3, 2), (3, 4)]:
        p = conv.same_padding(k, d)
        assert conv.conv_output_size(32, k, 1, p, d) == 32
    with pytest.raises(ValueError):
        conv.same_padding(4)


def test_transposed_conv_size_and_values_match_torch():
    rng = np.random.default_rng(3)
    for h, k, s, p, op in [(4, 3, 2, 1, 1), (5, 2, 2, 0, 0), (3, 3, 1, 0, 0), (4, 4, 2, 1, 0), (6, 3, 3, 1, 2)]:
        x = rng.standard_normal((2, h, h))
        w = rng.standard_normal((2, 3, k, k))
        ref = F.conv_transpose2d(_t(x)[None], _t(w), stride=s, padding=p, output_padding=op)[0].numpy()
        assert ref.shape[-1] == conv.conv_transpose_output_size(h, k, s, p, op)
        np.testing.assert_allclose(conv.conv_transpose2d(x, w, s, p, op), ref, atol=1e-5)


def test_pooling_matches_torch():
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9))
    for k, s in [(2, 2), (3, 3), (3, 2)]:
        np.testing.assert_allclose(conv.pool2d(x, k, s, "max"), F.max_pool2d(_t(x), k, s).numpy())
        np.testing.assert_allclose(conv.pool2d(x, k, s, "avg"), F.avg_pool2d(_t(x), k, s).numpy(), atol=1e-12)
    with pytest.raises(ValueError):
        conv.pool2d(x, 2, mode="median")


def test_conv_params_matches_torch():
    for c_in, c_out, k, bias, groups in [(3, 8, 3, True, 1), (16, 32, 5, False, 1), (8, 8, 3, True, 8),
                                         (6, 4, 1, True, 2)]:
        layer = nn.Conv2d(c_in, c_out, k, bias=bias, groups=groups)
        assert conv.conv_params(c_in, c_out, k, bias, groups) == sum(p.numel() for p in layer.parameters())


def _ones_stack(layers):
    mods = []
    for k, s, d in layers:
        c = nn.Conv2d(1, 1, k, stride=s, dilation=d, bias=False)
        nn.init.ones_(c.weight)
        mods.append(c)
    return nn.Sequential(*mods)


@pytest.mark.parametrize("layers", [
    [(3, 1, 1)] * 4,                                   # 9
    [(3, 1, 1), (3, 1, 2), (3, 1, 4), (3, 1, 8)],      # 31: dilation grows it exponentially
    [(5, 1, 1), (2, 2, 1), (5, 1, 1), (2, 2, 1)],      # LeNet-like conv/pool
    [(3, 2, 1), (3, 2, 1), (3, 1, 1)],
])
def test_receptive_field_formula_matches_autograd(layers):
    r, _ = conv.receptive_field(layers)[-1]
    assert conv.empirical_receptive_field(_ones_stack(layers), size=81) == r


def test_receptive_field_known_values():
    assert conv.receptive_field([(3, 1)] * 3)[-1] == (7, 1)
    assert [r for r, _ in conv.receptive_field([(3, 1, 2 ** i) for i in range(4)])] == [3, 7, 15, 31]


def test_relative_change():
    a = np.ones(4)
    assert conv.relative_change(a, a) == 0
    assert conv.relative_change(a, 2 * a) == pytest.approx(1.0)


def test_parse_kernel_and_conv_explorer():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlmi.widgets import conv_explorer, parse_kernel

    np.testing.assert_allclose(parse_kernel("1/9 " * 9), conv.KERNELS["box blur"])
    np.testing.assert_array_equal(parse_kernel("0,-1,0, -1,5,-1, 0,-1,0"), conv.KERNELS["sharpen"])
    with pytest.raises(ValueError, match="9 numbers"):
        parse_kernel("1 2 3")
    w = conv_explorer(np.random.default_rng(0).random((20, 20)))
    assert w.kwargs["kernel"] == "Sobel x"
    # interactive swallows callback errors, so call the callback itself
    for kernel in [*conv.KERNELS, "custom"]:
        w.f(kernel=kernel, custom="1 0 0 0 1 0 0 0 1", stride=2, padding=0, dilation=3)
    w.f(kernel="custom", custom="1 2", stride=1, padding=1, dilation=1)  # prints the error
    plt.close("all")


def test_show_row_wraps_and_fits_the_page():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlmi.widgets import show_row

    fig, axes = show_row([np.zeros((4, 4))] * 5, [str(i) for i in range(5)], ncols=4)
    assert len(axes) == 5 and len(fig.axes) == 8          # two rows of four, three empty
    assert fig.get_size_inches()[0] <= 8.5 + 1e-9
    assert axes[4].get_title() == "4"
    fig, axes = show_row([np.zeros((4, 4))] * 2, size=3.0)
    assert tuple(fig.get_size_inches()) == pytest.approx((6.0, 3.3))
    plt.close("all")
