"""decoupled_kd, dist, normalized_kd, weighted_soft_label_kd, refined_logit_distillation and the
SDD functions against float64 hand computations (plain Python loops), transcriptions of the
reference code, torch.autograd.gradcheck and float32."""
import math

import pytest
import torch
import torch.nn.functional as F

from kdzoo.functional import logit_kd as LK
from kdzoo.functional import soft_target

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- helpers
def rows(x):
    return x.tolist()


def log_softmax_list(values, T=1.0):
    scaled = [v / T for v in values]
    top = max(scaled)
    norm = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - norm for v in scaled]


def softmax_list(values, T=1.0):
    return [math.exp(v) for v in log_softmax_list(values, T)]


def kl_list(p, q):
    """KL(p || q) of two probability lists (terms with p = 0 are 0)."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


def logits(seed=0, shape=(5, 7), scale=3.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(*shape, generator=gen, dtype=dtype) * scale
    t = torch.randn(*shape, generator=gen, dtype=dtype) * scale
    y = torch.randint(0, shape[-1], shape[:1], generator=gen)
    return s, t, y


def check_float32(fn, s, t, *rest, rtol=1e-4, atol=1e-5, **kwargs):
    value64 = fn(s, t, *rest, **kwargs)
    value32 = fn(s.float(), t.float(), *rest, **kwargs)
    assert value64.dtype == torch.float64 and value32.dtype == torch.float32
    assert value32.item() == pytest.approx(value64.item(), rel=rtol, abs=atol)


# ------------------------------------------------------------------------------------ DKD
def hand_dkd(s, t, y, alpha, beta, T):
    total = 0.0
    for zs, zt, label in zip(rows(s), rows(t), y.tolist(), strict=True):
        ps, pt = softmax_list(zs, T), softmax_list(zt, T)
        binary_s = [ps[label], sum(p for k, p in enumerate(ps) if k != label)]
        binary_t = [pt[label], sum(p for k, p in enumerate(pt) if k != label)]
        tckd = kl_list(binary_t, binary_s)
        others = [k for k in range(len(zs)) if k != label]
        qs = softmax_list([zs[k] for k in others], T)
        qt = softmax_list([zt[k] for k in others], T)
        nckd = kl_list(qt, qs)
        total += (alpha * tckd + beta * nckd) * T * T
    return total / len(y)


def mdistiller_dkd(s, t, y, alpha, beta, T):
    """A transcription of mdistiller's ``dkd_loss`` (-1000 masking, log of summed probs)."""
    gt = torch.zeros_like(s).scatter_(1, y.unsqueeze(1), 1).bool()
    other = ~gt
    ps, pt = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)

    def cat(p):
        return torch.cat([(p * gt).sum(1, keepdim=True), (p * other).sum(1, keepdim=True)], 1)

    tckd = F.kl_div(torch.log(cat(ps)), cat(pt), reduction="sum") * T ** 2 / y.shape[0]
    nckd = F.kl_div(F.log_softmax(s / T - 1000.0 * gt, 1), F.softmax(t / T - 1000.0 * gt, 1),
                    reduction="sum") * T ** 2 / y.shape[0]
    return alpha * tckd + beta * nckd


@pytest.mark.parametrize("alpha,beta,T", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_decoupled_kd_equals_hand_computation_and_reference(alpha, beta, T):
    s, t, y = logits(1)
    value = LK.decoupled_kd(s, t, y, alpha=alpha, beta=beta, temperature=T)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_dkd(s, t, y, alpha, beta, T), rel=1e-10)
    assert value.item() == pytest.approx(mdistiller_dkd(s, t, y, alpha, beta, T).item(),
                                         rel=1e-10)


def test_decoupled_kd_defaults_are_mdistiller():
    s, t, y = logits(2)
    assert LK.decoupled_kd(s, t, y).item() == pytest.approx(hand_dkd(s, t, y, 1.0, 8.0, 4.0),
                                                            rel=1e-10)


def test_decoupled_kd_gradcheck_and_float32():
    s, t, y = logits(3, (3, 5))
    fn = lambda a, b: LK.decoupled_kd(a, b, y, 1.0, 8.0, 2.0)
    assert torch.autograd.gradcheck(fn, (s.requires_grad_(), t.requires_grad_()))
    check_float32(LK.decoupled_kd, s.detach(), t.detach(), y)


def test_decoupled_kd_two_classes():
    """mdistiller issue #60: NCKD has one non-target class, so it is exactly 0 with zero gradient;
    TCKD is then the whole loss, and a very confident student stays finite."""
    s, t, y = logits(4, (6, 2))
    s.requires_grad_()
    nckd = LK.decoupled_kd(s, t, y, alpha=0.0, beta=1.0)
    assert nckd.item() == 0.0
    nckd.backward()
    assert torch.count_nonzero(s.grad) == 0
    tckd = LK.decoupled_kd(s.detach(), t, y, alpha=1.0, beta=0.0)
    assert tckd.item() == pytest.approx(hand_dkd(s.detach(), t, y, 1.0, 0.0, 4.0), rel=1e-10)
    # with two classes TCKD is KD itself (the binary split is the whole distribution)
    assert tckd.item() == pytest.approx(soft_target(s.detach(), t, 4.0).item(), rel=1e-10)
    assert torch.autograd.gradcheck(lambda a, b: LK.decoupled_kd(a, b, y),
                                    (s.detach().clone().requires_grad_(), t.requires_grad_()))
    # a student 1e4 logits apart: the reference's log(0) makes an infinite loss, kdzoo's doesn't
    extreme = torch.tensor([[1e4, 0.0], [0.0, 1e4]], dtype=torch.float32, requires_grad=True)
    teacher = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([1, 0])
    assert not math.isfinite(mdistiller_dkd(extreme.detach(), teacher, labels, 1, 8, 4).item())
    loss = LK.decoupled_kd(extreme, teacher, labels)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(extreme.grad).all()


# ----------------------------------------------------------------------------------- DIST
def pearson_list(a, b, eps=1e-8):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    da, db = [x - ma for x in a], [x - mb for x in b]
    num = sum(x * z for x, z in zip(da, db, strict=True))
    return num / (math.sqrt(sum(x * x for x in da)) * math.sqrt(sum(z * z for z in db)) + eps)


def hand_dist(s, t, beta, gamma, T):
    ys = [softmax_list(r, T) for r in rows(s)]
    yt = [softmax_list(r, T) for r in rows(t)]
    inter = 1 - sum(pearson_list(a, b) for a, b in zip(ys, yt, strict=True)) / len(ys)
    cols = range(len(ys[0]))
    intra = 1 - sum(pearson_list([r[k] for r in ys], [r[k] for r in yt]) for k in cols) / len(cols)
    return T * T * (beta * inter + gamma * intra)


@pytest.mark.parametrize("beta,gamma,T", [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)])
def test_dist_equals_hand_computation(beta, gamma, T):
    s, t, _ = logits(5)
    value = LK.dist(s, t, beta=beta, gamma=gamma, temperature=T)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_dist(s, t, beta, gamma, T), rel=1e-10)


def test_dist_defaults_and_identical_inputs():
    s, t, _ = logits(6)
    assert LK.dist(s, t).item() == pytest.approx(hand_dist(s, t, 1.0, 1.0, 1.0), rel=1e-10)
    assert LK.dist(s, s).item() == pytest.approx(0.0, abs=1e-5)  # only the eps of rho
    # invariant to a per-sample shift of the logits (the softmax is)
    assert LK.dist(s + 5.0, t).item() == pytest.approx(LK.dist(s, t).item(), rel=1e-10)


def test_dist_gradcheck_and_float32():
    s, t, _ = logits(7, (4, 5))
    fn = lambda a, b: LK.dist(a, b, 1.0, 2.0, 2.0)
    assert torch.autograd.gradcheck(fn, (s.requires_grad_(), t.requires_grad_()))
    check_float32(LK.dist, s.detach(), t.detach(), beta=1.0, gamma=1.0, temperature=4.0)


# ------------------------------------------------------------------------------------ NKD
def hand_nkd(s, t, y, T, gamma, keep_target=False):
    """NKD by loops: the non-target classes (cls_KD's corrected mask), or every class when
    ``keep_target`` (the mask of SDD's nkd.py and SDD_nkd.py, ``scatter_(1, label, 1)``)."""
    target_part, non_target = 0.0, 0.0
    for zs, zt, label in zip(rows(s), rows(t), y.tolist(), strict=True):
        target_part += -softmax_list(zt)[label] * log_softmax_list(zs)[label]
        others = [k for k in range(len(zs)) if keep_target or k != label]
        qs = log_softmax_list([zs[k] for k in others], T)
        qt = softmax_list([zt[k] for k in others], T)
        non_target += sum(a * b for a, b in zip(qt, qs, strict=True))
    n = len(y)
    return target_part / n - gamma * T * T * non_target / n


def cls_kd_nkd(s, t, y, T, gamma):
    """A transcription of cls_KD's ``NKDLoss.forward`` (corrected mask)."""
    label = y.view(-1, 1)
    n = s.shape[0]
    s_t = torch.gather(F.log_softmax(s, 1), 1, label)
    t_t = torch.gather(F.softmax(t, 1), 1, label)
    loss_t = -(t_t * s_t).mean()
    mask = torch.ones_like(s).scatter_(1, label, 0).bool()
    S = F.log_softmax(s[mask].reshape(n, -1) / T, 1)
    Tq = F.softmax(t[mask].reshape(n, -1) / T, 1)
    return loss_t - gamma * T ** 2 * (Tq * S).sum(1).mean()


@pytest.mark.parametrize("T,gamma", [(1.0, 1.5), (3.0, 3.5)])
def test_normalized_kd_equals_hand_computation_and_reference(T, gamma):
    s, t, y = logits(8)
    value = LK.normalized_kd(s, t, y, temperature=T, gamma=gamma)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_nkd(s, t, y, T, gamma), rel=1e-10)
    assert value.item() == pytest.approx(cls_kd_nkd(s, t, y, T, gamma).item(), rel=1e-10)
    assert LK.normalized_kd(s, t, y).item() == pytest.approx(hand_nkd(s, t, y, 1.0, 1.5),
                                                             rel=1e-10)


def sdd_nkd_reference(s, t, y, T, gamma):
    """A transcription of SDD's ``nkd_loss`` (shicaiwei123/SDD-CVPR2024@e412036
    mdistiller/distillers/nkd.py lines 7-34): its mask ``scatter_(1, label, 1)`` is all ones."""
    label = y.view(-1, 1)
    n = s.shape[0]
    s_t = torch.gather(F.log_softmax(s, dim=1), 1, label)
    t_t = torch.gather(F.softmax(t, dim=1), 1, label)
    loss_t = -(t_t * s_t).mean()
    mask = torch.ones_like(s).scatter_(1, label, 1).bool()
    S = F.log_softmax(s[mask].reshape(n, -1) / T, dim=1)
    Tq = F.softmax(t[mask].reshape(n, -1) / T, dim=1)
    return loss_t - gamma * T ** 2 * (Tq * S).sum(1).mean()


@pytest.mark.parametrize("T,gamma", [(1.0, 1.5), (4.0, 8.0)])
def test_normalized_kd_with_the_target_kept_is_sdds_nkd(T, gamma):
    """mask="all": the normalized softmax over every class, as SDD's re-run of NKD computes it
    (the target class is not removed); a hand computation and a transcription agree, and it
    differs from the corrected mask."""
    s, t, y = logits(23)
    value = LK.normalized_kd(s, t, y, temperature=T, gamma=gamma, mask="all")
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_nkd(s, t, y, T, gamma, keep_target=True),
                                         rel=1e-10)
    assert value.item() == pytest.approx(sdd_nkd_reference(s, t, y, T, gamma).item(), rel=1e-10)
    corrected = LK.normalized_kd(s, t, y, temperature=T, gamma=gamma)
    assert abs(value.item() - corrected.item()) > 1e-3
    fn = lambda a, b: LK.normalized_kd(a, b, y[:3], 2.0, 1.5, mask="all")
    assert torch.autograd.gradcheck(fn, (s[:3].clone().requires_grad_(),
                                         t[:3].clone().requires_grad_()))
    with pytest.raises(ValueError, match="unknown NKD mask"):
        LK.normalized_kd(s, t, y, mask="target")


def test_normalized_kd_two_classes_has_no_non_target_term():
    s, t, y = logits(9, (5, 2))
    with_gamma = LK.normalized_kd(s, t, y, temperature=2.0, gamma=7.0)
    without = LK.normalized_kd(s, t, y, temperature=2.0, gamma=0.0)
    assert with_gamma.item() == pytest.approx(without.item(), rel=1e-12)


def test_normalized_kd_gradcheck_and_float32():
    s, t, y = logits(10, (3, 6))
    fn = lambda a, b: LK.normalized_kd(a, b, y, 2.0, 1.5)
    assert torch.autograd.gradcheck(fn, (s.requires_grad_(), t.requires_grad_()))
    check_float32(LK.normalized_kd, s.detach(), t.detach(), y)


# ----------------------------------------------------------------------------------- WSLD
def hand_wsld(s, t, y, T, alpha):
    total = 0.0
    for zs, zt, label in zip(rows(s), rows(t), y.tolist(), strict=True):
        soft = -sum(p * q for p, q in zip(softmax_list(zt, T), log_softmax_list(zs, T),
                                          strict=True))
        ce_s, ce_t = -log_softmax_list(zs)[label], -log_softmax_list(zt)[label]
        weight = 1 - math.exp(-max(ce_s / (ce_t + 1e-7), 0.0))
        total += weight * soft
    return alpha * T * T * total / len(y)


@pytest.mark.parametrize("T,alpha", [(4.0, 2.25), (2.0, 2.5)])
def test_weighted_soft_label_kd_equals_hand_computation(T, alpha):
    s, t, y = logits(11)
    value = LK.weighted_soft_label_kd(s, t, y, temperature=T, alpha=alpha)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_wsld(s, t, y, T, alpha), rel=1e-10)
    assert LK.weighted_soft_label_kd(s, t, y).item() == pytest.approx(
        hand_wsld(s, t, y, 4.0, 2.25), rel=1e-10)


def test_weighted_soft_label_kd_gradcheck_with_the_weights_held(monkeypatch):
    """The sample weights carry no gradient (both references detach them): gradcheck the
    function with the weights frozen at their values, and check the real function's gradient is
    that one."""
    s, t, y = logits(12, (4, 5))
    frozen = LK._wsld_sample_weights(s, t, y)
    s_grad = s.clone().requires_grad_()
    t_grad = t.clone().requires_grad_()
    LK.weighted_soft_label_kd(s_grad, t_grad, y, 3.0, 2.0).backward()
    monkeypatch.setattr(LK, "_wsld_sample_weights", lambda *args: frozen)
    fn = lambda a, b: LK.weighted_soft_label_kd(a, b, y, 3.0, 2.0)
    a, b = s.clone().requires_grad_(), t.clone().requires_grad_()
    assert torch.autograd.gradcheck(fn, (a, b))
    fn(a, b).backward()
    assert torch.allclose(s_grad.grad, a.grad, rtol=0, atol=1e-14)
    assert torch.allclose(t_grad.grad, b.grad, rtol=0, atol=1e-14)


def test_weighted_soft_label_kd_float32():
    s, t, y = logits(13)
    check_float32(LK.weighted_soft_label_kd, s, t, y)


# ------------------------------------------------------------------------------------ RLD
def hand_rld(s, t, y, alpha, beta, T, T_a):
    scd, mcd = 0.0, 0.0
    for zs, zt, label in zip(rows(s), rows(t), y.tolist(), strict=True):
        ps, pt = softmax_list(zs, T_a), softmax_list(zt, T_a)
        top = max(range(len(zt)), key=lambda k: (zt[k], -k))  # first maximum, as argmax
        binary_s = [ps[label], sum(p for k, p in enumerate(ps) if k != label)]
        binary_t = [pt[top], sum(p for k, p in enumerate(pt) if k != top)]
        scd += kl_list(binary_t, binary_s)
        kept = [k for k in range(len(zt)) if zt[k] < zt[label]]
        if kept:
            mcd += kl_list(softmax_list([zt[k] for k in kept], T),
                           softmax_list([zs[k] for k in kept], T))
    n = len(y)
    return alpha * T_a * T_a * scd / n + beta * T * T * mcd / n


def rld_reference(s, t, y, alpha, beta, T, T_a):
    """A transcription of zju-SWJ/RLD's ``rld_loss`` (without logit standardization)."""
    gt = torch.zeros_like(s).scatter_(1, y.unsqueeze(1), 1).bool()
    top = torch.zeros_like(t).scatter_(1, t.argmax(1).unsqueeze(1), 1).bool()
    ps, pt = F.softmax(s / T_a, 1), F.softmax(t / T_a, 1)
    ps = torch.cat([(ps * gt).sum(1, keepdim=True), (ps * ~gt).sum(1, keepdim=True)], 1)
    pt = torch.cat([(pt * top).sum(1, keepdim=True), (pt * ~top).sum(1, keepdim=True)], 1)
    scd = F.kl_div(torch.log(ps), pt, reduction="batchmean") * T_a ** 2
    mask = t >= torch.gather(t, 1, y.unsqueeze(1))
    log_s = F.log_softmax((s / T).masked_fill(mask, -1e9), 1)
    p_t = F.softmax((t / T).masked_fill(mask, -1e9), 1)
    mcd = F.kl_div(log_s, p_t, reduction="batchmean") * T ** 2
    return alpha * scd + beta * mcd


@pytest.mark.parametrize("alpha,beta,T,T_a", [(1.0, 8.0, 4.0, 1.0), (1.0, 8.0, 4.0, 4.0),
                                              (2.0, 0.5, 2.0, 3.0)])
def test_refined_logit_distillation_equals_hand_computation_and_reference(alpha, beta, T, T_a):
    s, t, y = logits(14, (8, 6))
    value = LK.refined_logit_distillation(s, t, y, alpha=alpha, beta=beta, temperature=T,
                                          alpha_temperature=T_a)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_rld(s, t, y, alpha, beta, T, T_a), rel=1e-10)
    assert value.item() == pytest.approx(rld_reference(s, t, y, alpha, beta, T, T_a).item(),
                                         rel=1e-10)


def test_refined_logit_distillation_masks():
    # the label is the teacher's lowest class: every class is masked and MCD is 0
    s = torch.tensor([[0.3, -1.0, 2.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([0])
    mcd_only = LK.refined_logit_distillation(s, t, y, alpha=0.0, beta=1.0)
    assert mcd_only.item() == 0.0
    # the label is the teacher's top class: SCD is the DKD's TCKD at T_a, MCD is NCKD
    y = torch.tensor([2])
    scd = LK.refined_logit_distillation(s, t, y, alpha=1.0, beta=0.0, alpha_temperature=4.0)
    mcd = LK.refined_logit_distillation(s, t, y, alpha=0.0, beta=1.0, temperature=4.0)
    assert scd.item() == pytest.approx(LK.decoupled_kd(s, t, y, 1.0, 0.0, 4.0).item(), rel=1e-12)
    assert mcd.item() == pytest.approx(LK.decoupled_kd(s, t, y, 0.0, 1.0, 4.0).item(), rel=1e-12)


def test_refined_logit_distillation_gradcheck_and_float32():
    s, t, y = logits(15, (4, 6))
    fn = lambda a, b: LK.refined_logit_distillation(a, b, y, 1.0, 8.0, 4.0, 2.0)
    assert torch.autograd.gradcheck(fn, (s.requires_grad_(), t.requires_grad_()))
    check_float32(LK.refined_logit_distillation, s.detach(), t.detach(), y)
    s2, t2, y2 = logits(16, (5, 2))  # two classes
    assert torch.autograd.gradcheck(lambda a, b: LK.refined_logit_distillation(a, b, y2),
                                    (s2.requires_grad_(), t2.requires_grad_()))


# ------------------------------------------------------------------------------------ SDD
def adaptive_windows(size, out):
    """AdaptiveAvgPool's windows: [floor(i*size/out), ceil((i+1)*size/out))."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def hand_pool(grid, out):
    """Adaptive average pooling of a list-of-lists map to out x out (row-major list)."""
    h, w = len(grid), len(grid[0])
    cells = []
    for r0, r1 in adaptive_windows(h, out):
        for c0, c1 in adaptive_windows(w, out):
            vals = [grid[r][c] for r in range(r0, r1) for c in range(c0, c1)]
            cells.append(sum(vals) / len(vals))
    return cells


def hand_pyramid(x, scales):
    """(B, N, C) nested lists: each channel pooled to 4 x 4, then to each scale."""
    out = []
    for sample in x.tolist():
        per_channel = []
        for channel in sample:
            g = hand_pool(channel, 4)
            g = [g[i * 4:(i + 1) * 4] for i in range(4)]
            per_channel.append([v for s in scales for v in hand_pool(g, s)])
        out.append([list(region) for region in zip(*per_channel, strict=True)])
    return out


@pytest.mark.parametrize("size", [8, 6, 2])  # divisible, uneven windows, a map smaller than 4
@pytest.mark.parametrize("scales", [(1, 2, 4), (1, 2), (1,)])
def test_spatial_pyramid_pool_equals_hand_pooling(size, scales):
    x = torch.randn(2, 3, size, size, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(size))
    pooled = LK.spatial_pyramid_pool(x, scales)
    assert pooled.shape == (2, sum(s * s for s in scales), 3)
    expected = torch.tensor(hand_pyramid(x, scales), dtype=torch.float64)
    assert torch.allclose(pooled, expected, rtol=1e-12, atol=1e-14)
    if size % 4 == 0:  # region 0 is the global average pool
        assert torch.allclose(pooled[:, 0], x.mean((2, 3)), rtol=1e-12, atol=0)


def test_spatial_pyramid_pool_gradcheck_and_float32():
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(LK.spatial_pyramid_pool, (x,))
    x = x.detach()
    assert torch.allclose(LK.spatial_pyramid_pool(x.float()).double(),
                          LK.spatial_pyramid_pool(x), rtol=1e-5, atol=1e-6)


def hand_region_weights(t_regions, y):
    weights = []
    for sample, label in zip(t_regions.tolist(), y.tolist(), strict=True):
        right = [max(range(len(r)), key=lambda k: (r[k], -k)) == label for r in sample]
        weights.append([1.0 if ok == right[0] else 2.0 for ok in right])
    return weights


def test_sdd_region_weights():
    _, t, y = logits(17, (6, 21, 4))
    # make the global prediction right for some samples and wrong for others
    t[:3, 0, :] = -5.0
    t[torch.arange(3), 0, y[:3]] = 5.0
    weights = LK.sdd_region_weights(t, y)
    assert weights.tolist() == hand_region_weights(t, y)
    assert (weights[:, 0] == 1).all() and set(weights.unique().tolist()) <= {1.0, 2.0}


def hand_sdd(s, t, y, base, T, alpha, beta, keep_target=False):
    weights = hand_region_weights(t, y)
    total, count = 0.0, 0
    for zs_rows, zt_rows, w_row, label in zip(s.tolist(), t.tolist(), weights, y.tolist(),
                                              strict=True):
        for zs, zt, w in zip(zs_rows, zt_rows, w_row, strict=True):
            one_s = torch.tensor([zs], dtype=torch.float64)
            one_t = torch.tensor([zt], dtype=torch.float64)
            lab = torch.tensor([label])
            if base == "kd":
                row = kl_list(softmax_list(zt, T), softmax_list(zs, T)) * T * T
            elif base == "dkd":
                row = hand_dkd(one_s, one_t, lab, alpha, beta, T)
            else:
                row = hand_nkd(one_s, one_t, lab, T, beta, keep_target)
            total += w * row
            count += 1
    return total / count


@pytest.mark.parametrize("base", ["kd", "dkd", "nkd"])
def test_scale_decoupled_kd_equals_hand_computation(base):
    s, t, y = logits(18, (4, 5, 6))
    t[:2, 0] = s[:2, 0] * 0.0  # a few teacher globals that are wrong
    value = LK.scale_decoupled_kd(s, t, y, base=base, temperature=3.0, alpha=0.5, beta=2.0)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_sdd(s, t, y, base, 3.0, 0.5, 2.0), rel=1e-10)


def test_scale_decoupled_nkd_with_sdds_mask_equals_hand_computation():
    """nkd_mask="all": SD-NKD as SDD_nkd.py computes it (the target class kept in the
    normalized softmax, line 53)."""
    s, t, y = logits(24, (4, 5, 6))
    t[:2, 0] = s[:2, 0] * 0.0
    value = LK.scale_decoupled_kd(s, t, y, base="nkd", temperature=3.0, beta=2.0,
                                  nkd_mask="all")
    assert value.item() == pytest.approx(
        hand_sdd(s, t, y, "nkd", 3.0, 1.0, 2.0, keep_target=True), rel=1e-10)
    assert value.item() != pytest.approx(
        LK.scale_decoupled_kd(s, t, y, base="nkd", temperature=3.0, beta=2.0).item(), rel=1e-4)


@pytest.mark.parametrize("base", ["kd", "dkd", "nkd"])
def test_scale_decoupled_kd_on_one_region_is_the_base_loss(base):
    s, t, y = logits(19, (6, 1, 7))
    value = LK.scale_decoupled_kd(s, t, y, base=base)
    g_s, g_t = s[:, 0], t[:, 0]
    expected = {"kd": lambda: soft_target(g_s, g_t, 4.0),
                "dkd": lambda: LK.decoupled_kd(g_s, g_t, y, 1.0, 8.0, 4.0),
                "nkd": lambda: LK.normalized_kd(g_s, g_t, y, 4.0, 8.0)}[base]()
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)


def sdd_kd_reference(s, t, y, T):
    """A transcription of SDD's ``sdd_kd_loss`` (inputs B x C x N as the reference's)."""
    out_s = s.permute(2, 0, 1).reshape(-1, s.shape[1])
    out_t = t.permute(2, 0, 1).reshape(-1, t.shape[1])
    target_r = y.repeat(s.shape[2])
    loss = F.kl_div(F.log_softmax(out_s / T, 1), F.softmax(out_t / T, 1),
                    reduction="none") * T ** 2
    loss = loss.sum(1)
    pred = out_t.argmax(1)
    glob = pred[: len(y)] == y
    glob_r = glob.repeat(s.shape[2])
    local = pred == target_r
    index = torch.where(local == glob_r, 1.0, 2.0).to(loss.dtype)
    index[: len(y)] = 1.0
    return (loss * index).sum() / target_r.shape[0]


def test_scale_decoupled_kd_matches_the_reference_layout():
    s, t, y = logits(20, (5, 21, 8))
    value = LK.scale_decoupled_kd(s, t, y, base="kd", temperature=4.0)
    expected = sdd_kd_reference(s.transpose(1, 2), t.transpose(1, 2), y, 4.0)
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("base", ["kd", "dkd", "nkd"])
def test_scale_decoupled_kd_gradcheck_and_float32(base):
    s, t, y = logits(21, (3, 5, 4))
    fn = lambda a, b: LK.scale_decoupled_kd(a, b, y, base, 2.0, 1.0, 3.0)
    assert torch.autograd.gradcheck(fn, (s.requires_grad_(), t.requires_grad_()))
    check_float32(LK.scale_decoupled_kd, s.detach(), t.detach(), y, base=base)


def test_scale_decoupled_kd_refuses_an_unknown_base():
    s, t, y = logits(22, (2, 1, 3))
    with pytest.raises(ValueError, match="unknown SDD base loss"):
        LK.scale_decoupled_kd(s, t, y, base="mse")


def test_module_exports():
    assert set(LK.__all__) == {
        "decoupled_kd", "dist", "normalized_kd", "weighted_soft_label_kd",
        "refined_logit_distillation", "spatial_pyramid_pool", "sdd_region_weights",
        "scale_decoupled_kd"}
