"""The functionals of WKD (kdzoo.functional.wasserstein) and CAT-KD
(kdzoo.functional.activation_maps) against independent float64 computations written as the
authors' code computes them (per-sample gathers and Python loops, not the vectorised, masked
routes of the implementation), with torch.autograd.gradcheck, and float32 within tolerance."""
import math

import pytest
import torch
import torch.nn.functional as F

from kdzoo.functional import activation_maps as KA
from kdzoo.functional import wasserstein as KW


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def rand(*shape, seed=0, scale=1.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def simplex(batch, n, seed):
    return F.softmax(rand(batch, n, seed=seed, scale=2.0), dim=1)


def class_cost(n, seed=5):
    """A symmetric cost in [0, 1) with a zero diagonal, like 1 - exp(-(1 - cos))."""
    return KW.sharpen_cost(KW.cosine_cost(rand(n, 4, seed=seed)), 1.0)


# ----------------------------------------------------------- reference-style computations
def loop_sinkhorn(p, q, cost, reg, iterations):
    """The reference's ``sinkhorn`` for ONE sample, with Python loops over floats."""
    n = len(p)
    kernel = [[math.exp(-cost[i][j] / reg) for j in range(n)] for i in range(n)]
    u = [1.0 / n] * n
    v = [0.0] * n
    for _ in range(iterations):
        v = [q[j] / (sum(kernel[i][j] * u[i] for i in range(n)) + 1e-8) for j in range(n)]
        u = [p[i] / (sum(kernel[i][j] * v[j] for j in range(n)) + 1e-8) for i in range(n)]
    return [[u[i] * kernel[i][j] * v[j] for j in range(n)] for i in range(n)]


def loop_distance(p, q, cost, reg, iterations):
    plan = loop_sinkhorn(p, q, cost, reg, iterations)
    return sum(plan[i][j] * cost[i][j] for i in range(len(p)) for j in range(len(p)))


def reference_wkd_logit(s_logits, t_logits, labels, cost, temperature, reg, iterations):
    """``wkd_logit_loss_with_speration`` as the authors write it: the target term, then the
    non-target logits and the per-sample (N-1) x (N-1) cost gathered with masks, softmax, and
    the batched Sinkhorn of ``sinkhorn`` (u = 1/dim, bmm), flow * cost summed, batch mean."""
    label = labels.view(-1, 1)
    n, c = s_logits.shape
    s_t = torch.gather(F.log_softmax(s_logits, dim=1), 1, label)
    t_t = torch.gather(F.softmax(t_logits, dim=1), 1, label).detach()
    target = -(t_t * s_t).mean()
    mask = torch.ones_like(s_logits).scatter_(1, label, 0).bool()
    s_rest = s_logits[mask].reshape(n, -1)
    t_rest = t_logits[mask].reshape(n, -1)
    full = cost.repeat(n, 1, 1)
    pair_mask = mask.unsqueeze(1) * mask.unsqueeze(2)
    sub = full[pair_mask].reshape(n, c - 1, c - 1)
    w1 = F.softmax(s_rest / temperature, dim=-1).unsqueeze(-1)
    w2 = F.softmax(t_rest / temperature, dim=-1).unsqueeze(-1)
    sub = F.relu(sub) + 1e-8
    u = torch.ones_like(w1) / (c - 1)
    kernel = torch.exp(-sub / reg)
    for _ in range(iterations):
        v = w2 / (torch.bmm(kernel.transpose(2, 1), u) + 1e-8)
        u = w1 / (torch.bmm(kernel, v) + 1e-8)
    flow = u.reshape(n, -1, 1) * kernel * v.reshape(n, 1, -1)
    return target, (flow * sub).sum(-1).sum(-1).mean()


def loop_mean_std(block, eps):
    """Mean and sqrt(unbiased variance + eps) of a list of floats."""
    mean = sum(block) / len(block)
    var = sum((x - mean) ** 2 for x in block) / (len(block) - 1)
    return mean, math.sqrt(var + eps)


def loop_gaussian(s, t, eps, grid):
    """``wkd_feature_loss``, with the cells of ``adaptive_avg_std_pool2d`` (floor/ceil)."""
    B, C, H, W = s.shape
    mean_total, std_total = 0.0, 0.0
    for b in range(B):
        for c in range(C):
            for gh in range(grid):
                h0, h1 = math.floor(gh * H / grid), math.ceil((gh + 1) * H / grid)
                for gw in range(grid):
                    w0, w1 = math.floor(gw * W / grid), math.ceil((gw + 1) * W / grid)
                    cells = [[x[b][c][h][w] for h in range(h0, h1) for w in range(w0, w1)]
                             for x in (s.tolist(), t.tolist())]
                    (ms, ss), (mt, st) = (loop_mean_std(cell, eps) for cell in cells)
                    mean_total += (ms - mt) ** 2
                    std_total += (ss - st) ** 2
    return mean_total / (B * grid * grid), std_total / (B * grid * grid)


def loop_linear_cka(x, y):
    """``linear_CKA_precenter`` of the authors' generate_cost_matrix.py (D x D products)."""
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    hsic = torch.linalg.matrix_norm(y.t() @ x) ** 2
    return hsic / (torch.linalg.matrix_norm(x.t() @ x) * torch.linalg.matrix_norm(y.t() @ y))


# -------------------------------------------------------------------------------- Sinkhorn
def test_sinkhorn_plan_is_the_reference_iteration():
    p, q, cost = simplex(3, 5, 1), simplex(3, 5, 2), class_cost(5)
    plan = KW.sinkhorn_plan(p, q, cost, reg=0.05, iterations=10)
    for b in range(3):
        expected = loop_sinkhorn(p[b].tolist(), q[b].tolist(), cost.tolist(), 0.05, 10)
        assert torch.allclose(plan[b], torch.tensor(expected, dtype=torch.float64),
                              rtol=1e-10, atol=1e-14)
    # a per-sample (B, N, N) cost gives the same plan
    batched = KW.sinkhorn_plan(p, q, cost.expand(3, 5, 5), reg=0.05, iterations=10)
    assert torch.allclose(plan, batched, rtol=1e-12, atol=0)


def test_sinkhorn_distance_without_support_is_the_plan_cost():
    p, q, cost = simplex(4, 6, 3), simplex(4, 6, 4), class_cost(6)
    distance = KW.sinkhorn_distance(p, q, cost, reg=0.1, iterations=7)
    expected = [loop_distance(p[b].tolist(), q[b].tolist(), cost.tolist(), 0.1, 7)
                for b in range(4)]
    assert torch.allclose(distance, torch.tensor(expected, dtype=torch.float64), rtol=1e-10)


def test_sinkhorn_distance_on_a_support_is_the_reduced_problem():
    n, batch = 6, 4
    support = torch.ones(batch, n, dtype=torch.bool)
    dropped = [0, 3, 5, 3]
    for b, k in enumerate(dropped):
        support[b, k] = False
    p = F.softmax(rand(batch, n, seed=7).masked_fill(~support, -math.inf), dim=1)
    q = F.softmax(rand(batch, n, seed=8).masked_fill(~support, -math.inf), dim=1)
    cost = class_cost(n)
    distance = KW.sinkhorn_distance(p, q, cost, 0.05, 10, support)
    for b, k in enumerate(dropped):
        keep = [i for i in range(n) if i != k]
        sub = [[cost[i, j].item() for j in keep] for i in keep]
        expected = loop_distance(p[b, keep].tolist(), q[b, keep].tolist(), sub, 0.05, 10)
        assert distance[b].item() == pytest.approx(expected, rel=1e-10)


def test_sinkhorn_gradcheck():
    p = simplex(2, 4, 1).requires_grad_()
    q = simplex(2, 4, 2).requires_grad_()
    cost = class_cost(4).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: KW.sinkhorn_plan(a, b, c, 0.5, 5),
                                    (p, q, cost))
    support = torch.tensor([[True, False, True, True], [True, True, True, True]])
    assert torch.autograd.gradcheck(
        lambda a, b, c: KW.sinkhorn_distance(a, b, c, 0.5, 5, support), (p, q, cost))


def test_sinkhorn_float32_within_tolerance():
    p, q, cost = simplex(3, 10, 1), simplex(3, 10, 2), class_cost(10)
    d64 = KW.sinkhorn_distance(p, q, cost)
    d32 = KW.sinkhorn_distance(p.float(), q.float(), cost.float())
    assert d32.dtype == torch.float32
    assert torch.allclose(d32.double(), d64, rtol=1e-4, atol=1e-7)
    assert torch.allclose(KW.sinkhorn_plan(p.float(), q.float(), cost.float()).double(),
                          KW.sinkhorn_plan(p, q, cost), rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------------- WKD-L
@pytest.mark.parametrize("temperature,reg,iterations", [(8.0, 0.05, 10), (4.0, 0.1, 3)])
def test_wkd_logit_is_the_reference_separation_loss(temperature, reg, iterations):
    s, t = rand(5, 7, seed=1, scale=3), rand(5, 7, seed=2, scale=3)
    labels = torch.tensor([0, 6, 3, 3, 1])
    cost = class_cost(7) - 0.05  # negative entries: the reference's ReLU + 1e-8 applies
    target, distance = KW.wkd_logit(s, t, labels, cost, temperature, reg, iterations)
    ref_target, ref_distance = reference_wkd_logit(s, t, labels, cost, temperature, reg,
                                                   iterations)
    assert target.item() == pytest.approx(ref_target.item(), rel=1e-12)
    assert distance.item() == pytest.approx(ref_distance.item(), rel=1e-10)
    # and the distance is the mean of the Python-loop transport costs
    costs = (F.relu(cost) + 1e-8).tolist()
    values = []
    for b, y in enumerate(labels.tolist()):
        keep = [i for i in range(7) if i != y]
        ps = F.softmax(s[b, keep] / temperature, dim=0).tolist()
        qt = F.softmax(t[b, keep] / temperature, dim=0).tolist()
        values.append(loop_distance(ps, qt, [[costs[i][j] for j in keep] for i in keep],
                                    reg, iterations))
    assert distance.item() == pytest.approx(sum(values) / len(values), rel=1e-10)


def test_wkd_logit_gradients_match_the_reference_and_gradcheck():
    s = rand(3, 5, seed=3, scale=2).requires_grad_()
    t = rand(3, 5, seed=4, scale=2)
    labels = torch.tensor([4, 0, 2])
    cost = class_cost(5)
    target, distance = KW.wkd_logit(s, t, labels, cost, 2.0, 0.2, 6)
    (grad,) = torch.autograd.grad(target + 3 * distance, s)
    ref_target, ref_distance = reference_wkd_logit(s, t, labels, cost, 2.0, 0.2, 6)
    (ref_grad,) = torch.autograd.grad(ref_target + 3 * ref_distance, s)
    assert torch.allclose(grad, ref_grad, rtol=1e-9, atol=1e-13)
    assert torch.autograd.gradcheck(
        lambda a: torch.stack(KW.wkd_logit(a, t, labels, cost, 2.0, 0.2, 6)), (s,))
    # the teacher's side: through the distance (its target-class probability is detached)
    assert torch.autograd.gradcheck(
        lambda b: KW.wkd_logit(s, b, labels, cost, 2.0, 0.2, 6)[1], (t.clone().requires_grad_(),))


def test_wkd_logit_float32_within_tolerance():
    s, t = rand(8, 100, seed=5, scale=3), rand(8, 100, seed=6, scale=3)
    labels = torch.arange(8) * 7
    cost = KW.sharpen_cost(KW.cosine_cost(rand(100, 32, seed=9)), 1.0)
    r64 = KW.wkd_logit(s, t, labels, cost)
    r32 = KW.wkd_logit(s.float(), t.float(), labels, cost.float())
    for a, b in zip(r32, r64, strict=True):
        assert a.dtype == torch.float32
        assert a.item() == pytest.approx(b.item(), rel=1e-4, abs=1e-7)


# ------------------------------------------------------------------------------- the costs
def test_cosine_and_sharpened_costs():
    w = rand(5, 3, seed=2)
    cost = KW.cosine_cost(w)
    rows = w.tolist()
    for i in range(5):
        for j in range(5):
            dot = sum(a * b for a, b in zip(rows[i], rows[j], strict=True))
            norms = math.sqrt(sum(a * a for a in rows[i])) * math.sqrt(sum(b * b for b in rows[j]))
            assert cost[i, j].item() == pytest.approx(1 - dot / norms, abs=1e-14)
            sharp = KW.sharpen_cost(cost, 2.5)[i, j].item()
            assert sharp == pytest.approx(1 - math.exp(-2.5 * (1 - dot / norms)), abs=1e-14)
    assert KW.sharpen_cost(cost, 0.0) is cost
    w = w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: KW.sharpen_cost(KW.cosine_cost(a), 1.0), (w,))
    assert torch.allclose(KW.sharpen_cost(KW.cosine_cost(w.detach().float()), 1.0).double(),
                          KW.sharpen_cost(cost, 1.0), atol=1e-6)


def test_linear_cka_cost_is_one_minus_the_authors_linear_cka():
    feats = rand(4, 6, 3, seed=3)
    cost = KW.linear_cka_cost(feats)
    for i in range(4):
        for j in range(4):
            expected = 1 - loop_linear_cka(feats[i], feats[j]).item()
            assert cost[i, j].item() == pytest.approx(expected, abs=1e-12)
    assert torch.allclose(torch.diagonal(cost), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.autograd.gradcheck(KW.linear_cka_cost, (feats.clone().requires_grad_(),))
    assert torch.allclose(KW.linear_cka_cost(feats.float()).double(), cost, atol=1e-5)


# ----------------------------------------------------------------------------------- WKD-F
@pytest.mark.parametrize("shape,grid", [((3, 4, 5, 5), 1), ((2, 3, 4, 4), 2),
                                        ((2, 2, 5, 7), 3)])
def test_gaussian_wasserstein_is_the_reference_feature_loss(shape, grid):
    s, t = rand(*shape, seed=1), rand(*shape, seed=2, scale=2)
    mean_term, std_term = KW.gaussian_wasserstein(s, t, eps=1e-5, grid=grid)
    expected_mean, expected_std = loop_gaussian(s, t, 1e-5, grid)
    assert mean_term.item() == pytest.approx(expected_mean, rel=1e-11)
    assert std_term.item() == pytest.approx(expected_std, rel=1e-11)


def test_gaussian_wasserstein_gradcheck_float32_and_shape_check():
    s = rand(2, 3, 4, 4, seed=3).requires_grad_()
    t = rand(2, 3, 4, 4, seed=4).requires_grad_()
    for grid in (1, 2):
        assert torch.autograd.gradcheck(
            lambda a, b, g=grid: torch.stack(KW.gaussian_wasserstein(a, b, 1e-5, g)), (s, t))
        r32 = KW.gaussian_wasserstein(s.detach().float(), t.detach().float(), 1e-5, grid)
        r64 = KW.gaussian_wasserstein(s.detach(), t.detach(), 1e-5, grid)
        for a, b in zip(r32, r64, strict=True):
            assert a.dtype == torch.float32 and a.item() == pytest.approx(b.item(), rel=1e-5)
    with pytest.raises(ValueError, match="one shape"):
        KW.gaussian_wasserstein(s, t[:, :2])


# ------------------------------------------------------------------------------------ CAT-KD
def test_class_activation_maps_are_a_bias_free_1x1_convolution():
    feat, weight = rand(2, 3, 4, 5, seed=1), rand(6, 3, seed=2)
    cams = KA.class_activation_maps(feat, weight)
    f, w = feat.tolist(), weight.tolist()
    for b in range(2):
        for k in range(6):
            for h in range(4):
                for x in range(5):
                    expected = sum(w[k][c] * f[b][c][h][x] for c in range(3))
                    assert cams[b, k, h, x].item() == pytest.approx(expected, abs=1e-13)
    # the reference's conv_test, and its spatial mean is the bias-free logits
    conv = F.conv2d(feat, weight.view(6, 3, 1, 1))
    assert torch.allclose(cams, conv, atol=1e-13)
    assert torch.allclose(cams.mean(dim=(2, 3)), feat.mean(dim=(2, 3)) @ weight.t(), atol=1e-13)
    assert torch.autograd.gradcheck(KA.class_activation_maps,
                                    (feat.clone().requires_grad_(),
                                     weight.clone().requires_grad_()))
    assert torch.allclose(KA.class_activation_maps(feat.float(), weight.float()).double(), cams,
                          atol=1e-5)


def loop_cat_loss(s, t, resolution, normalize):
    """Pool each map to resolution x resolution by block means (sizes divisible here),
    L2-normalise each map over its positions, mean squared difference."""
    def pooled(x):
        B, K, H, W = x.shape
        kh, kw = H // resolution, W // resolution
        out = []
        for b in range(B):
            maps = []
            for k in range(K):
                cells = [sum(x[b, k, i * kh + a, j * kw + c].item() for a in range(kh)
                             for c in range(kw)) / (kh * kw)
                         for i in range(resolution) for j in range(resolution)]
                if normalize:
                    norm = max(math.sqrt(sum(v * v for v in cells)), 1e-12)
                    cells = [v / norm for v in cells]
                maps.append(cells)
            out.append(maps)
        return out

    ps, pt = pooled(s), pooled(t)
    diffs = [(a - b) ** 2 for ms, mt in zip(ps, pt, strict=True)
             for cs, ct in zip(ms, mt, strict=True)
             for a, b in zip(cs, ct, strict=True)]
    return sum(diffs) / len(diffs)


@pytest.mark.parametrize("resolution,normalize", [(2, True), (2, False), (1, True), (4, False)])
def test_cat_loss_against_a_hand_computation(resolution, normalize):
    s, t = rand(2, 3, 8, 8, seed=1), rand(2, 3, 4, 4, seed=2)  # other spatial sizes
    loss = KA.cat_loss(s, t, resolution, normalize)
    assert loss.item() == pytest.approx(loop_cat_loss(s, t, resolution, normalize), rel=1e-11)


def test_cat_loss_gradcheck_and_float32():
    s = rand(2, 3, 4, 4, seed=3).requires_grad_()
    t = rand(2, 3, 2, 2, seed=4).requires_grad_()
    for normalize in (True, False):
        assert torch.autograd.gradcheck(lambda a, b, n=normalize: KA.cat_loss(a, b, 2, n), (s, t))
        r32 = KA.cat_loss(s.detach().float(), t.detach().float(), 2, normalize)
        assert r32.dtype == torch.float32
        assert r32.item() == pytest.approx(KA.cat_loss(s, t, 2, normalize).item(), rel=1e-5)
