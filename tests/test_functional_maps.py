"""The feature-map losses of kdzoo.functional.maps against hand computations of the reference zoo's
formulas (sections 2.3-2.5, 2.7, 2.11, 2.12), written with explicit Python loops over float64
values, independently of the vectorised implementation."""
import math

import pytest
import torch

from kdzoo import functional as KF


def rand(*shape, seed=0, scale=1.0, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift


def nested(x):
    return x.tolist()


# ------------------------------------------------------------------------------ hand formulas
def hand_attention_transfer(s, t, p):
    def att(x):
        B, C, H, W = len(x), len(x[0]), len(x[0][0]), len(x[0][0][0])
        maps = []
        for b in range(B):
            q = [[sum(abs(x[b][c][h][w]) ** p for c in range(C)) for w in range(W)]
                 for h in range(H)]
            norm = math.sqrt(sum(q[h][w] ** 2 for h in range(H) for w in range(W)))
            maps.append([[q[h][w] / (norm + 1e-6) for w in range(W)] for h in range(H)])
        return maps

    qs, qt = att(nested(s)), att(nested(t))
    B, H, W = len(qs), len(qs[0]), len(qs[0][0])
    total = sum((qs[b][h][w] - qt[b][h][w]) ** 2 for b in range(B) for h in range(H)
                for w in range(W))
    return total / (B * H * W)


def hand_mse(a, b):
    fa, fb = a.flatten().tolist(), b.flatten().tolist()
    return sum((x - y) ** 2 for x, y in zip(fa, fb, strict=True)) / len(fa)


def hand_nst(s, t):
    def unit_channels(x):
        out = []
        for sample in nested(x):
            chans = []
            for chan in sample:
                flat = [v for row in chan for v in row]
                norm = max(math.sqrt(sum(v * v for v in flat)), 1e-12)
                chans.append([v / norm for v in flat])
            out.append(chans)
        return out

    def mean_kernel(a, b):
        total, count = 0.0, 0
        for fa, fb in zip(a, b, strict=True):
            for u in fa:
                for v in fb:
                    total += sum(x * y for x, y in zip(u, v, strict=True)) ** 2
                    count += 1
        return total / count

    us, ut = unit_channels(s), unit_channels(t)
    return mean_kernel(ut, ut) + mean_kernel(us, us) - 2 * mean_kernel(us, ut)


def hand_avg_pool_2x2(x):
    B, C, H, W = x.shape
    v = nested(x)
    return torch.tensor([[[[(v[b][c][2 * i][2 * j] + v[b][c][2 * i + 1][2 * j]
                             + v[b][c][2 * i][2 * j + 1] + v[b][c][2 * i + 1][2 * j + 1]) / 4
                            for j in range(W // 2)] for i in range(H // 2)]
                          for c in range(C)] for b in range(B)], dtype=torch.float64)


def hand_fsp_matrix(first, second):
    if first.shape[2] > second.shape[2]:
        first = hand_avg_pool_2x2(first)  # the test maps halve their size, as CIFAR ResNets do
    a, b = nested(first), nested(second)
    B, Ca, Cb = len(a), len(a[0]), len(b[0])
    H, W = len(a[0][0]), len(a[0][0][0])
    return [[[sum(a[n][i][h][w] * b[n][j][h][w] for h in range(H) for w in range(W)) / (H * W)
              for j in range(Cb)] for i in range(Ca)] for n in range(B)]


def hand_fsp(s1, s2, t1, t2):
    gs, gt = hand_fsp_matrix(s1, s2), hand_fsp_matrix(t1, t2)
    diffs = [(x - y) ** 2 for ms, mt in zip(gs, gt, strict=True)
             for rs, rt in zip(ms, mt, strict=True)
             for x, y in zip(rs, rt, strict=True)]
    return sum(diffs) / len(diffs)


def hand_ab_element(s, t, m):
    if t <= 0:
        return (s + m) ** 2 if s > -m else 0.0
    return (s - m) ** 2 if s <= m else 0.0


def hand_ab(s, t, m):
    fs, ft = s.flatten().tolist(), t.flatten().tolist()
    return sum(hand_ab_element(x, y, m) for x, y in zip(fs, ft, strict=True)) / len(fs)


def hand_sp(s, t):
    def normalised_gram(x):
        rows = [r for r in x.flatten(1).tolist()]
        gram = [[sum(a * b for a, b in zip(u, v, strict=True)) for v in rows] for u in rows]
        out = []
        for row in gram:
            norm = max(math.sqrt(sum(g * g for g in row)), 1e-12)
            out.append([g / norm for g in row])
        return out

    gs, gt = normalised_gram(s), normalised_gram(t)
    B = len(gs)
    return sum((gs[i][j] - gt[i][j]) ** 2 for i in range(B) for j in range(B)) / (B * B)


# ------------------------------------------------------------------------------------ AT
@pytest.mark.parametrize("p", [2.0, 1.0, 3.0])
def test_attention_transfer_equals_hand_computation(p):
    s, t = rand(2, 3, 4, 5, seed=1), rand(2, 6, 4, 5, seed=2)  # channel counts may differ
    value = KF.attention_transfer(s, t, p=p)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_attention_transfer(s, t, p), rel=1e-10, abs=1e-14)


def test_attention_map_by_hand():
    # one sample, one 1x2 map over two channels: Q = (1^2 + 3^2, 2^2 + 0^2) = (10, 4)
    x = torch.tensor([[[[1.0, 2.0]], [[-3.0, 0.0]]]], dtype=torch.float64)
    expected = torch.tensor([10.0, 4.0], dtype=torch.float64) / (math.sqrt(116.0) + 1e-6)
    assert torch.allclose(KF.attention_map(x).flatten(), expected, rtol=0, atol=1e-15)
    assert KF.attention_map(x).shape == (1, 1, 1, 2)


def test_attention_transfer_of_equal_maps_is_zero_and_scale_free():
    x = rand(2, 3, 4, 4).relu()
    assert KF.attention_transfer(x, 7.0 * x).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------- hint
def test_hint_equals_hand_computation():
    s, t = rand(2, 3, 2, 2, seed=3), rand(2, 3, 2, 2, seed=4)
    assert KF.hint(s, t).item() == pytest.approx(hand_mse(s, t), rel=1e-12)
    small = torch.tensor([[[[1.0, -1.0]]]], dtype=torch.float64)
    assert KF.hint(small, torch.zeros_like(small)).item() == pytest.approx(1.0, rel=1e-15)


def test_hint_refuses_other_shapes():
    with pytest.raises(ValueError, match="connector"):
        KF.hint(rand(2, 3, 2, 2), rand(2, 4, 2, 2))


# ----------------------------------------------------------------------------------- NST
@pytest.mark.parametrize("student_channels", [3, 5])
def test_nst_equals_hand_computation(student_channels):
    s, t = rand(2, student_channels, 3, 3, seed=5), rand(2, 4, 3, 3, seed=6)
    value = KF.neuron_selectivity_transfer(s, t)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_nst(s, t), rel=1e-10, abs=1e-14)


def test_nst_by_hand_on_orthonormal_channels():
    # student channels e1, e2; teacher channel e1 (unit spatial maps, 2 positions):
    # mean k(t,t) = 1; mean k(s,s) = (1 + 0 + 0 + 1) / 4 = 1/2; mean k(s,t) = (1 + 0) / 2 = 1/2
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 3.0]]]], dtype=torch.float64)
    t = torch.tensor([[[[2.0, 0.0]]]], dtype=torch.float64)
    assert KF.neuron_selectivity_transfer(s, t).item() == pytest.approx(0.5, abs=1e-15)
    assert KF.neuron_selectivity_transfer(t, t).item() == pytest.approx(0.0, abs=1e-15)


def test_nst_zero_map_does_not_divide_by_zero():
    s = rand(2, 3, 2, 2)
    s[:, 1] = 0.0
    assert torch.isfinite(KF.neuron_selectivity_transfer(s, rand(2, 3, 2, 2, seed=1)))


# ----------------------------------------------------------------------------------- FSP
def test_fsp_matrix_equals_hand_computation():
    first, second = rand(2, 3, 4, 4, seed=7), rand(2, 5, 2, 2, seed=8)  # first pooled to 2x2
    expected = torch.tensor(hand_fsp_matrix(first, second), dtype=torch.float64)
    got = KF.fsp_matrix(first, second)
    assert got.shape == (2, 3, 5)
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_fsp_matrix_by_hand():
    a = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    b = torch.tensor([[[[3.0, -1.0]]]], dtype=torch.float64)                 # (1, 1, 1, 2)
    # G = [[(1*3 + 2*-1) / 2], [(0*3 + 1*-1) / 2]]
    assert KF.fsp_matrix(a, b).flatten().tolist() == [0.5, -0.5]


@pytest.mark.parametrize("sizes", [(4, 2), (2, 2)])
def test_fsp_equals_hand_computation(sizes):
    big, small = sizes
    s1, s2 = rand(2, 3, big, big, seed=9), rand(2, 4, small, small, seed=10)
    t1, t2 = rand(2, 3, big, big, seed=11), rand(2, 4, small, small, seed=12)
    value = KF.fsp(s1, s2, t1, t2)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_fsp(s1, s2, t1, t2), rel=1e-10)


def test_fsp_teacher_maps_may_have_other_sizes_but_not_other_widths():
    s1, s2 = rand(2, 3, 4, 4), rand(2, 4, 2, 2)
    t1, t2 = rand(2, 3, 8, 8), rand(2, 4, 4, 4)  # FSP matrices are still 3x4
    assert torch.isfinite(KF.fsp(s1, s2, t1, t2))
    with pytest.raises(ValueError):
        KF.fsp(s1, s2, rand(2, 6, 4, 4), t2)


# ------------------------------------------------------------------------------------ AB
@pytest.mark.parametrize(
    "s,t,expected",
    [
        (1.0, -1.0, 9.0),    # teacher off, student above -m: pushed below -m, (s + m)^2
        (-2.5, -1.0, 0.0),   # teacher off, student already below -m
        (0.5, 1.0, 2.25),    # teacher on, student below m: pushed above m, (s - m)^2
        (2.5, 1.0, 0.0),     # teacher on, student already above m
        (-1.0, 0.0, 1.0),    # t = 0 counts as off: (s + m)^2
        (-2.0, -1.0, 0.0),   # s = -m is not > -m
        (2.0, 1.0, 0.0),     # s = m is <= m, but (s - m)^2 = 0
    ],
)
def test_activation_boundary_indicator_cases(s, t, expected):
    value = KF.activation_boundary(torch.tensor([s], dtype=torch.float64),
                                   torch.tensor([t], dtype=torch.float64), margin=2.0)
    assert value.item() == pytest.approx(expected, abs=1e-15)


def test_activation_boundary_four_cases_in_one_mean():
    s = torch.tensor([1.0, -2.5, 0.5, 2.5], dtype=torch.float64).view(1, 4, 1, 1)
    t = torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64).view(1, 4, 1, 1)
    assert KF.activation_boundary(s, t).item() == pytest.approx((9.0 + 2.25) / 4, abs=1e-15)


@pytest.mark.parametrize("margin", [2.0, 1.0])
def test_activation_boundary_equals_hand_computation(margin):
    s, t = rand(2, 3, 3, 3, seed=13, scale=2.0), rand(2, 3, 3, 3, seed=14)
    value = KF.activation_boundary(s, t, margin)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_ab(s, t, margin), rel=1e-12)


def test_activation_boundary_gives_the_teacher_no_gradient():
    s = rand(2, 3, 2, 2, seed=1).requires_grad_()
    t = rand(2, 3, 2, 2, seed=2).requires_grad_()
    KF.activation_boundary(s, t).backward()
    assert t.grad is None  # the indicators are comparisons: not differentiable
    assert torch.count_nonzero(s.grad) > 0


# ------------------------------------------------------------------------------------ SP
def test_similarity_preserving_equals_hand_computation():
    s, t = rand(3, 2, 2, 2, seed=15), rand(3, 5, 1, 1, seed=16)  # any widths and sizes
    value = KF.similarity_preserving(s, t)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_sp(s, t), rel=1e-10)


def test_similarity_preserving_by_hand():
    # x1 = (1, 0), x2 = (1, 1): G = [[1, 1], [1, 2]], rows / (sqrt 2, sqrt 5); teacher G = I
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64).view(2, 2, 1, 1)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64).view(2, 2, 1, 1)
    r2, r5 = math.sqrt(2.0), math.sqrt(5.0)
    expected = ((1 / r2 - 1) ** 2 + (1 / r2) ** 2 + (1 / r5) ** 2 + (2 / r5 - 1) ** 2) / 4
    assert KF.similarity_preserving(s, t).item() == pytest.approx(expected, rel=1e-14)


# ------------------------------------------------------------------- shared helpers, dtypes
def test_match_spatial_size_pools_the_larger_map():
    a, b = rand(2, 3, 4, 4), rand(2, 5, 2, 2)
    pa, pb = KF.match_spatial_size(a, b)
    assert pb is b and torch.allclose(pa, hand_avg_pool_2x2(a), atol=1e-15)
    qb, qa = KF.match_spatial_size(b, a)
    assert qb is b and torch.allclose(qa, pa, atol=1e-15)
    same = rand(1, 2, 3, 3)
    assert KF.match_spatial_size(same, same) == (same, same)


LOSSES = {
    "attention_transfer": lambda s, t: KF.attention_transfer(s, t, 2.0),
    "attention_transfer_p3": lambda s, t: KF.attention_transfer(s, t, 3.0),
    "hint": KF.hint,
    "neuron_selectivity_transfer": KF.neuron_selectivity_transfer,
    "fsp": lambda s, t: KF.fsp(s, s[:, :2], t, t[:, 1:3]),
    "activation_boundary": KF.activation_boundary,
    "similarity_preserving": KF.similarity_preserving,
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_float32_in_float32_out_and_close_to_float64(name):
    s, t = rand(2, 3, 4, 4, seed=17, scale=2.0), rand(2, 3, 4, 4, seed=18)
    loss = LOSSES[name]
    value32 = loss(s.float(), t.float())
    assert value32.dtype == torch.float32 and value32.dim() == 0
    assert value32.item() == pytest.approx(loss(s, t).item(), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradcheck(name):
    s = rand(2, 3, 3, 3, seed=19, scale=2.0).requires_grad_()
    t = rand(2, 3, 3, 3, seed=20).requires_grad_()
    if name == "activation_boundary":
        # piecewise smooth (C^1); keep every value clear of the kinks at s = +-m and t = 0
        s = (s.detach() + 0.5 * torch.sign(s.detach())).clamp(-1.5, 1.5).requires_grad_()
        t = (t.detach() + 0.5 * torch.sign(t.detach())).requires_grad_()
    assert torch.autograd.gradcheck(LOSSES[name], (s, t))


def test_inputs_are_not_modified():
    s, t = rand(2, 3, 4, 4, seed=21), rand(2, 3, 4, 4, seed=22)
    s_copy, t_copy = s.clone(), t.clone()
    for loss in LOSSES.values():
        loss(s, t)
    assert torch.equal(s, s_copy) and torch.equal(t, t_copy)


def test_channels_last_inputs_give_the_same_values():
    s, t = rand(2, 3, 4, 4, seed=23), rand(2, 3, 4, 4, seed=24)
    s_cl, t_cl = (x.contiguous(memory_format=torch.channels_last) for x in (s, t))
    for name, loss in LOSSES.items():
        assert loss(s_cl, t_cl).item() == pytest.approx(loss(s, t).item(), rel=1e-12), name
