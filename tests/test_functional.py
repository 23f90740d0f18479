import math

import pytest
import torch

from kdzoo import functional as KF


def hand_soft_target(s, t, T):
    total = 0.0
    for b in range(s.shape[0]):
        zs = [x / T for x in s[b].tolist()]
        zt = [x / T for x in t[b].tolist()]
        log_norm_s = math.log(sum(math.exp(z) for z in zs))
        norm_t = sum(math.exp(z) for z in zt)
        for k in range(len(zs)):
            p_t = math.exp(zt[k]) / norm_t
            total += p_t * (math.log(p_t) - (zs[k] - log_norm_s))
    return T * T * total / s.shape[0]


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_soft_target_equals_hand_computation(T):
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    t = torch.randn(3, 5, generator=gen, dtype=torch.float64) * 3
    value = KF.soft_target(s, t, temperature=T)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_soft_target(s, t, T), rel=1e-12)
    assert KF.soft_target(s.float(), t.float(), T).dtype == torch.float32


def test_soft_target_is_zero_for_equal_logits():
    z = torch.randn(4, 10, dtype=torch.float64)
    assert KF.soft_target(z, z).item() == pytest.approx(0.0, abs=1e-12)


def test_soft_target_gradcheck():
    s = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: KF.soft_target(a, b, 4.0), (s, t))


def test_logits_mse_equals_hand_computation():
    s = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 2.5], [1.5, 1.0]], dtype=torch.float64)
    expected = (1.0 + 0.25 + 1.0 + 4.0) / 4
    assert KF.logits_mse(s, t).item() == pytest.approx(expected, rel=1e-12)
    assert torch.autograd.gradcheck(KF.logits_mse, (s.requires_grad_(), t.requires_grad_()))
