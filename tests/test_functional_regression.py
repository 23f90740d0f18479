"""kdzoo.functional.regression (FT, VID, OFD, AFD) against hand computations in float64."""
import math

import pytest
import torch

from kdzoo import functional as KF


def rand(*shape, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


# ---------------------------------------------------------------------------------- factor transfer
def hand_factor_transfer(s, t):
    batch = s.shape[0]
    total, count = 0.0, 0
    for b in range(batch):
        xs, xt = s[b].flatten().tolist(), t[b].flatten().tolist()
        ns = max(math.sqrt(sum(x * x for x in xs)), 1e-12)
        nt = max(math.sqrt(sum(x * x for x in xt)), 1e-12)
        for a, c in zip(xs, xt, strict=True):
            total += abs(a / ns - c / nt)
            count += 1
    return total / count


def test_factor_transfer_by_hand():
    # phi(s) = (3, 4)/5, phi(t) = (1, 0): |0.6 - 1| + |0.8 - 0| = 1.2, averaged over 2 elements
    s = torch.tensor([3.0, 4.0], dtype=torch.float64).view(1, 2, 1, 1)
    t = torch.tensor([2.0, 0.0], dtype=torch.float64).view(1, 2, 1, 1)
    assert KF.factor_transfer(s, t).item() == pytest.approx(0.6, abs=1e-15)


def test_factor_transfer_equals_loops():
    s, t = rand(3, 4, 2, 3, seed=1), rand(3, 4, 2, 3, seed=2, scale=5)
    value = KF.factor_transfer(s, t)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_factor_transfer(s, t), abs=1e-12)
    assert KF.factor_transfer(s.float(), t.float()).dtype == torch.float32


def test_factor_transfer_of_a_zero_factor_uses_eps():
    # F.normalize divides by max(norm, 1e-12): a zero factor stays zero instead of NaN
    s = torch.zeros(2, 3, 1, 1, dtype=torch.float64)
    t = rand(2, 3, 1, 1, seed=3)
    assert KF.factor_transfer(s, t).item() == pytest.approx(hand_factor_transfer(s, t), abs=1e-12)


def test_factor_transfer_is_scale_invariant_and_accepts_channels_last():
    s, t = rand(2, 4, 3, 3, seed=4), rand(2, 4, 3, 3, seed=5)
    base = KF.factor_transfer(s, t)
    assert KF.factor_transfer(7.0 * s, 0.1 * t).item() == pytest.approx(base.item(), abs=1e-12)
    channels_last = s.contiguous(memory_format=torch.channels_last)
    assert KF.factor_transfer(channels_last, t).item() == pytest.approx(base.item(), abs=1e-15)


def test_factor_transfer_gradcheck():
    s = rand(2, 3, 2, 2, seed=6).requires_grad_()
    t = rand(2, 3, 2, 2, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(KF.factor_transfer, (s, t))


# ---------------------------------------------------------------------------------------------- VID
def hand_vid(mu, t, var):
    batch, channels, height, width = mu.shape
    total = 0.0
    for b in range(batch):
        for c in range(channels):
            v = var[c].item()
            for h in range(height):
                for w in range(width):
                    diff = mu[b, c, h, w].item() - t[b, c, h, w].item()
                    total += 0.5 * (math.log(v) + diff * diff / v)
    return total / (batch * channels * height * width)


def test_vid_by_hand():
    # one element: 0.5 * (log 4 + (3 - 1)^2 / 4) = 0.5 * (log 4 + 1)
    mu = torch.full((1, 1, 1, 1), 3.0, dtype=torch.float64)
    t = torch.full((1, 1, 1, 1), 1.0, dtype=torch.float64)
    var = torch.tensor([4.0], dtype=torch.float64)
    expected = 0.5 * (math.log(4.0) + 1.0)
    assert KF.variational_information_loss(mu, t, var).item() == pytest.approx(expected, abs=1e-15)


def test_vid_equals_loops():
    mu, t = rand(2, 3, 2, 2, seed=8), rand(2, 3, 2, 2, seed=9)
    var = torch.tensor([0.5, 5.0, 2.0], dtype=torch.float64)
    value = KF.variational_information_loss(mu, t, var)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_vid(mu, t, var), abs=1e-12)
    assert KF.variational_information_loss(mu.float(), t.float(), var.float()).dtype == \
        torch.float32


def test_vid_gradcheck():
    mu = rand(2, 3, 2, 2, seed=10).requires_grad_()
    t = rand(2, 3, 2, 2, seed=11).requires_grad_()
    var = torch.tensor([0.5, 5.0, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(KF.variational_information_loss, (mu, t, var))


# ---------------------------------------------------------------------------------------------- OFD
def test_ofd_margin_from_batch_by_hand():
    t = torch.zeros(2, 3, 1, 2, dtype=torch.float64)
    t[:, 0] = torch.tensor([[[-1.0, -3.0]], [[2.0, 0.0]]], dtype=torch.float64)  # negatives -1, -3
    t[:, 1] = 1.0                                                                # no negative
    t[:, 2] = torch.tensor([[[-0.5, 4.0]], [[5.0, 6.0]]], dtype=torch.float64)  # one negative
    margin = KF.ofd_margin_from_batch(t)
    assert margin.shape == (3,)
    expected = [-4.0 / (2 + 1e-6), 0.0, -0.5 / (1 + 1e-6)]
    assert margin.tolist() == pytest.approx(expected, abs=1e-15)
    assert KF.ofd_margin_from_batch(t.float()).dtype == torch.float32


def test_ofd_margin_from_batch_equals_loops():
    t = rand(3, 4, 2, 2, seed=12)
    expected = []
    for c in range(4):
        values = [t[b, c, h, w].item() for b in range(3) for h in range(2) for w in range(2)]
        negatives = [v for v in values if v < 0]
        expected.append(sum(negatives) / (len(negatives) + 1e-6))
    assert KF.ofd_margin_from_batch(t).tolist() == pytest.approx(expected, abs=1e-12)


def hand_bn_margin(weight, bias):
    """The official get_margin_from_BN, with Phi written through erfc."""
    out = []
    for w, m in zip(weight, bias, strict=True):
        s = abs(w)
        cdf = 0.5 * math.erfc((m / s) / math.sqrt(2))  # Phi(-m/s)
        if cdf > 0.001:
            out.append(-s * math.exp(-(m / s) ** 2 / 2) / math.sqrt(2 * math.pi) / cdf + m)
        else:
            out.append(-3 * s)
    return out


def test_ofd_margin_from_bn_by_hand():
    # mean 0, std 1: E[x | x < 0] = -sqrt(2/pi); mean 4 (Phi(-4) = 3e-5 < 0.001): -3 * std
    weight = torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=torch.float64)
    bias = torch.tensor([0.0, 4.0 * 2.0, -1.0, 0.7], dtype=torch.float64)
    margin = KF.ofd_margin_from_bn(weight, bias)
    assert margin[0].item() == pytest.approx(-math.sqrt(2 / math.pi), abs=1e-12)
    assert margin[1].item() == pytest.approx(-6.0, abs=1e-15)
    assert margin.tolist() == pytest.approx(hand_bn_margin(weight.tolist(), bias.tolist()),
                                            abs=1e-12)
    assert (margin < 0).all()
    assert KF.ofd_margin_from_bn(weight.float(), bias.float()).dtype == torch.float32


def test_ofd_margin_from_bn_with_zero_weight_is_finite():
    margin = KF.ofd_margin_from_bn(torch.zeros(3), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.isfinite(margin).all()
    assert margin[0].item() == pytest.approx(-1.0)  # a point mass at -1: its negative part is -1


def hand_ofd(s, t, margin):
    """Official form of the mask: keep (s > t') or (t' > 0)."""
    batch, channels, height, width = s.shape
    total = 0.0
    for b in range(batch):
        for c in range(channels):
            for h in range(height):
                for w in range(width):
                    target = max(t[b, c, h, w].item(), margin[c].item())
                    student = s[b, c, h, w].item()
                    if student > target or target > 0:
                        total += (student - target) ** 2
    return total / (batch * channels * height * width)


def test_overhaul_distillation_by_hand():
    # channel margin -1: t = (-3, -0.5, 2, -2) -> t' = (-1, -0.5, 2, -1)
    # s = (-2, 0, 1, -1): kept where s > t' or t' > 0 -> (no, yes, yes, no): 0.25 + 1 = 1.25 / 4
    t = torch.tensor([-3.0, -0.5, 2.0, -2.0], dtype=torch.float64).view(1, 1, 2, 2)
    s = torch.tensor([-2.0, 0.0, 1.0, -1.0], dtype=torch.float64).view(1, 1, 2, 2)
    margin = torch.tensor([-1.0], dtype=torch.float64)
    assert KF.overhaul_distillation(s, t, margin).item() == pytest.approx(1.25 / 4, abs=1e-15)


def test_overhaul_distillation_equals_loops():
    s, t = rand(2, 3, 3, 2, seed=13), rand(2, 3, 3, 2, seed=14, scale=2)
    margin = KF.ofd_margin_from_batch(t)
    value = KF.overhaul_distillation(s, t, margin)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_ofd(s, t, margin), abs=1e-12)
    # a (1, C, 1, 1) margin works the same
    assert KF.overhaul_distillation(s, t, margin.view(1, -1, 1, 1)).item() == value.item()
    assert KF.overhaul_distillation(s.float(), t.float(), margin.float()).dtype == torch.float32


def test_overhaul_distillation_gradcheck():
    s = rand(2, 3, 2, 2, seed=15).requires_grad_()
    t = rand(2, 3, 2, 2, seed=16).requires_grad_()
    margin = torch.tensor([-0.4, -0.9, -0.2], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: KF.overhaul_distillation(a, b, margin), (s, t))


# ---------------------------------------------------------------------------------------------- AFD
def hand_afd(s, t, rho):
    batch, channels, height, width = s.shape
    total = 0.0
    for b in range(batch):
        for c in range(channels):
            xs = s[b, c].flatten().tolist()
            xt = t[b, c].flatten().tolist()
            ns = math.sqrt(sum(x * x for x in xs)) + 1e-6
            nt = math.sqrt(sum(x * x for x in xt)) + 1e-6
            mse = sum((a / ns - d / nt) ** 2 for a, d in zip(xs, xt, strict=True)) / len(xs)
            total += rho[b, c].item() * mse
    return total / batch


def test_afd_by_hand():
    # channel 0: s~ = (1, 0)/(1 + 1e-6), t~ = (0, 1)/(1 + 1e-6): mse = 1/(1 + 1e-6)^2
    # channel 1: identical maps: 0. rho = (0.25, 0.75)
    s = torch.tensor([[1.0, 0.0], [2.0, 2.0]], dtype=torch.float64).view(1, 2, 1, 2)
    t = torch.tensor([[0.0, 1.0], [2.0, 2.0]], dtype=torch.float64).view(1, 2, 1, 2)
    rho = torch.tensor([[0.25, 0.75]], dtype=torch.float64)
    expected = 0.25 / (1 + 1e-6) ** 2
    assert KF.attention_feature_distillation(s, t, rho).item() == pytest.approx(expected,
                                                                              abs=1e-15)


def test_afd_equals_loops():
    s, t = rand(3, 4, 2, 3, seed=17), rand(3, 4, 2, 3, seed=18, scale=3)
    raw = rand(3, 4, seed=19).sigmoid()
    rho = raw / raw.sum(dim=1, keepdim=True)
    value = KF.attention_feature_distillation(s, t, rho)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_afd(s, t, rho), abs=1e-12)
    assert KF.attention_feature_distillation(s.float(), t.float(), rho.float()).dtype == \
        torch.float32


def test_afd_gradcheck():
    s = rand(2, 3, 2, 2, seed=20).requires_grad_()
    t = rand(2, 3, 2, 2, seed=21).requires_grad_()
    rho = rand(2, 3, seed=22).softmax(dim=1).requires_grad_()
    assert torch.autograd.gradcheck(KF.attention_feature_distillation, (s, t, rho))


def test_every_function_is_exported():
    for name in ("factor_transfer", "variational_information_loss", "ofd_margin_from_batch",
                 "ofd_margin_from_bn", "overhaul_distillation", "attention_feature_distillation"):
        assert name in KF.__all__
