"""kdzoo.functional.multilevel: MLKD's class/batch correlation losses and TTM/WTTM, against
explicit loops in Python floats and against another formulation, with gradcheck in float64 and
float32 within tolerance of float64."""
import math

import pytest
import torch
import torch.nn.functional as F

from kdzoo.functional.logits import mutual_learning
from kdzoo.functional.multilevel import (
    batch_correlation,
    class_correlation,
    transformed_teacher_matching,
    weighted_transformed_teacher_matching,
)


def logits_pair(seed=0, shape=(5, 7), scale=(2.0, 3.0)):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale[0]
    b = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale[1]
    return a, b


def softmax_rows(z, T=1.0):
    """Row softmaxes of z / T as lists of Python floats."""
    rows = []
    for row in z.tolist():
        scaled = [x / T for x in row]
        top = max(scaled)
        exps = [math.exp(x - top) for x in scaled]
        total = sum(exps)
        rows.append([e / total for e in exps])
    return rows


def hand_correlation(s, t, T, level):
    """||G_t - G_s||^2 / n with G the (C x C) class Gram P^T P (level "class", n = C) or the
    (B x B) sample Gram P P^T (level "batch", n = B), by explicit loops."""
    ps, pt = softmax_rows(s, T), softmax_rows(t, T)
    batch, classes = len(ps), len(ps[0])
    total = 0.0
    if level == "class":
        for j in range(classes):
            for k in range(classes):
                gs = sum(ps[b][j] * ps[b][k] for b in range(batch))
                gt = sum(pt[b][j] * pt[b][k] for b in range(batch))
                total += (gt - gs) ** 2
        return total / classes
    for a in range(batch):
        for b in range(batch):
            gs = sum(ps[a][k] * ps[b][k] for k in range(classes))
            gt = sum(pt[a][k] * pt[b][k] for k in range(classes))
            total += (gt - gs) ** 2
    return total / batch


def hand_ttm(s, t, exponent, weighted):
    """mean_b [w_b * sum_k q_bk (log q_bk - log p_bk)], q = p_t^l / sum p_t^l, p = softmax(z_s),
    w_b = sum_k p_t,bk^l when weighted (else 1), by explicit loops."""
    ps, pt = softmax_rows(s), softmax_rows(t)
    total = 0.0
    for row_s, row_t in zip(ps, pt, strict=True):
        powered = [p ** exponent for p in row_t]
        norm = sum(powered)
        kl = sum((q / norm) * (math.log(q / norm) - math.log(p))
                 for q, p in zip(powered, row_s, strict=True))
        total += (norm if weighted else 1.0) * kl
    return total / len(ps)


# ------------------------------------------------------------------------- MLKD correlations
@pytest.mark.parametrize("T", [1.0, 4.0, 6.0])
@pytest.mark.parametrize("shape", [(5, 7), (9, 3), (1, 4)])
def test_class_correlation_equals_loops(T, shape):
    s, t = logits_pair(1, shape)
    value = class_correlation(s, t, T)
    assert value.dtype == torch.float64 and value.dim() == 0
    assert value.item() == pytest.approx(hand_correlation(s, t, T, "class"), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("T", [1.0, 4.0, 6.0])
@pytest.mark.parametrize("shape", [(5, 7), (9, 3), (1, 4)])
def test_batch_correlation_equals_loops(T, shape):
    s, t = logits_pair(2, shape)
    value = batch_correlation(s, t, T)
    assert value.dtype == torch.float64 and value.dim() == 0
    assert value.item() == pytest.approx(hand_correlation(s, t, T, "batch"), rel=1e-12, abs=1e-15)


def test_correlations_by_another_formulation_and_zero_on_equal_inputs():
    # The Gram matrices written as einsums instead of transposed matrix products.
    s, t = logits_pair(3, (6, 5))
    ps, pt = F.softmax(s / 3, 1), F.softmax(t / 3, 1)
    by_einsum = ((torch.einsum("bj,bk->jk", pt, pt) - torch.einsum("bj,bk->jk", ps, ps))
                 ** 2).sum() / 5
    assert class_correlation(s, t, 3.0).item() == pytest.approx(by_einsum.item(), rel=1e-13)
    by_einsum = ((torch.einsum("ak,bk->ab", pt, pt) - torch.einsum("ak,bk->ab", ps, ps))
                 ** 2).sum() / 6
    assert batch_correlation(s, t, 3.0).item() == pytest.approx(by_einsum.item(), rel=1e-13)
    assert class_correlation(s, s, 2.0).item() == 0.0
    assert batch_correlation(t, t, 2.0).item() == 0.0


@pytest.mark.parametrize("fn", [class_correlation, batch_correlation])
def test_correlation_gradcheck_including_a_tensor_temperature(fn):
    s, t = logits_pair(4, (4, 5))
    T = torch.tensor(2.5, dtype=torch.float64)
    assert torch.autograd.gradcheck(fn, (s.requires_grad_(), t.requires_grad_(),
                                         T.requires_grad_()))


@pytest.mark.parametrize("fn", [class_correlation, batch_correlation])
def test_correlation_tensor_temperature_equals_float_and_float32_close(fn):
    s, t = logits_pair(5, (8, 10))
    expected = fn(s, t, 4.0)
    assert fn(s, t, torch.tensor(4.0, dtype=torch.float64)).item() == expected.item()
    single = fn(s.float(), t.float(), 4.0)
    assert single.dtype == torch.float32
    assert single.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)


# ---------------------------------------------------------------------------------- TTM/WTTM
@pytest.mark.parametrize("exponent", [0.1, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_ttm_and_wttm_equal_loops(exponent, weighted):
    s, t = logits_pair(6, (5, 7))
    fn = weighted_transformed_teacher_matching if weighted else transformed_teacher_matching
    value = fn(s, t, exponent)
    assert value.dtype == torch.float64 and value.dim() == 0
    assert value.item() == pytest.approx(hand_ttm(s, t, exponent, weighted), rel=1e-12)


def test_ttm_is_kd_with_the_temperature_on_the_teacher_only():
    # p_t^l / sum p_t^l = softmax(l z_t): the target is the teacher at temperature T = 1/l.
    s, t = logits_pair(7, (6, 9))
    exponent = 0.25
    target = F.softmax(t * exponent, dim=1)
    expected = (target * (target.log() - F.log_softmax(s, dim=1))).sum(1).mean()
    assert transformed_teacher_matching(s, t, exponent).item() == pytest.approx(
        expected.item(), rel=1e-12)
    # l = 1 is plain KL(p_t || p_s), the mutual-learning divergence
    assert transformed_teacher_matching(s, t, 1.0).item() == pytest.approx(
        mutual_learning(s, t).item(), rel=1e-12)


def test_wttm_weight_is_the_power_sum_and_one_at_exponent_one():
    s, t = logits_pair(8, (6, 9))
    exponent = 0.2
    # sum_k p_k^l = exp(logsumexp(l * log p)): another formulation of the weight
    weight = torch.logsumexp(exponent * F.log_softmax(t, 1), dim=1).exp()
    target = F.softmax(t * exponent, dim=1)
    kl = (target * (target.log() - F.log_softmax(s, dim=1))).sum(1)
    assert weighted_transformed_teacher_matching(s, t, exponent).item() == pytest.approx(
        (weight * kl).mean().item(), rel=1e-12)
    assert weighted_transformed_teacher_matching(s, t, 1.0).item() == pytest.approx(
        transformed_teacher_matching(s, t, 1.0).item(), rel=1e-12)


@pytest.mark.parametrize("fn", [transformed_teacher_matching,
                                weighted_transformed_teacher_matching])
def test_ttm_gradcheck_including_a_tensor_exponent(fn):
    s, t = logits_pair(9, (3, 5))
    exponent = torch.tensor(0.3, dtype=torch.float64)
    assert torch.autograd.gradcheck(fn, (s.requires_grad_(), t.requires_grad_(),
                                         exponent.requires_grad_()))


@pytest.mark.parametrize("fn", [transformed_teacher_matching,
                                weighted_transformed_teacher_matching])
def test_ttm_student_gradient_is_the_softmax_difference(fn):
    # d/dz_s of w_b KL(q_b || softmax(z_s,b)) / B is w_b (softmax(z_s) - q) / B
    s, t = logits_pair(10, (4, 6))
    s.requires_grad_()
    fn(s, t, 0.2).backward()
    powered = F.softmax(t, 1) ** 0.2
    norm = powered.sum(1, keepdim=True)
    weight = norm if fn is weighted_transformed_teacher_matching else torch.ones_like(norm)
    expected = weight * (F.softmax(s.detach(), 1) - powered / norm) / 4
    assert torch.allclose(s.grad, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("fn", [transformed_teacher_matching,
                                weighted_transformed_teacher_matching])
def test_ttm_float32_close_to_float64_and_tensor_exponent_equal(fn):
    s, t = logits_pair(11, (16, 100))
    expected = fn(s, t, 0.1)
    assert fn(s, t, torch.tensor(0.1, dtype=torch.float64)).item() == expected.item()
    single = fn(s.float(), t.float(), 0.1)
    assert single.dtype == torch.float32
    assert single.item() == pytest.approx(expected.item(), rel=1e-5)
