"""The relation losses (PKT, RKD, CC, IRG, CRD's NCE) against hand computations in float64:
explicit loops over samples (and pairs, triplets) written from the formulas of the reference zoo's
kd_losses/, not from the implementation; gradchecks where the losses are smooth; dtypes."""
import math

import pytest
import torch

from kdzoo import functional as KF


def randn(*shape, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def rows(x):
    return [list(map(float, r)) for r in x.reshape(x.shape[0], -1).tolist()]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def norm(a):
    return math.sqrt(dot(a, a))


def sub(a, b):
    return [x - y for x, y in zip(a, b, strict=True)]


def smooth_l1(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


# -------------------------------------------------------------------------------------- PKT
def hand_pkt(s, t, eps=1e-6):
    def probabilities(f):
        units = []
        for r in rows(f):
            if any(math.isnan(x) for x in r):
                units.append([0.0] * len(r))  # NaN entries become 0 (the whole row here)
            else:
                n = norm(r)
                units.append([x / (n + eps) for x in r])
        b = len(units)
        kernel = [[(dot(units[i], units[j]) + 1) / 2 for j in range(b)] for i in range(b)]
        return [[kernel[i][j] / sum(kernel[i]) for j in range(b)] for i in range(b)]

    ps, pt = probabilities(s), probabilities(t)
    b = len(ps)
    total = sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps))
                for i in range(b) for j in range(b))
    return total / (b * b)


def test_pkt_equals_hand_computation():
    s, t = randn(5, 3, seed=1), randn(5, 7, seed=2, scale=2.0)  # other widths are fine
    value = KF.probabilistic_knowledge_transfer(s, t)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_pkt(s, t), rel=1e-10, abs=1e-15)


def test_pkt_zero_for_equal_directions_and_nan_rows_zeroed_out_of_place():
    s = randn(4, 3, seed=3)
    assert KF.probabilistic_knowledge_transfer(s, 2.5 * s).item() == pytest.approx(0.0, abs=1e-9)
    with_nan = s.clone()
    with_nan[1, 2] = float("nan")
    t = randn(4, 3, seed=4)
    value = KF.probabilistic_knowledge_transfer(with_nan, t)
    assert math.isfinite(value.item())
    assert value.item() == pytest.approx(hand_pkt(with_nan, t), rel=1e-10)
    assert torch.isnan(with_nan[1, 2])  # the given tensor was not touched


def test_pkt_gradcheck_and_dtype():
    s = randn(4, 3, seed=5).requires_grad_()
    t = randn(4, 3, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(KF.probabilistic_knowledge_transfer, (s, t))
    assert KF.probabilistic_knowledge_transfer(s.float(), t.float()).dtype == torch.float32


# -------------------------------------------------------------------------------------- RKD
def hand_distance_matrix(f):
    r = rows(f)
    b = len(r)
    return [[0.0 if i == j else norm(sub(r[i], r[j])) for j in range(b)] for i in range(b)]


def hand_rkd_distance(s, t):
    def normalized(f):
        d = hand_distance_matrix(f)
        positive = [x for row in d for x in row if x > 0]
        mean = sum(positive) / len(positive)
        return [[x / mean for x in row] for row in d]

    ds, dt = normalized(s), normalized(t)
    b = len(ds)
    return sum(smooth_l1(ds[i][j] - dt[i][j]) for i in range(b) for j in range(b)) / b**2


def hand_angles(f):
    r = rows(f)
    b = len(r)

    def direction(i, j):  # normalize(f_j - f_i); the zero vector for i == j
        v = sub(r[j], r[i])
        n = max(norm(v), 1e-12)
        return [x / n for x in v]

    return [[[dot(direction(i, j), direction(i, k)) for k in range(b)] for j in range(b)]
            for i in range(b)]


def hand_rkd_angle(s, t):
    a_s, a_t = hand_angles(s), hand_angles(t)
    b = len(a_s)
    return sum(smooth_l1(a_s[i][j][k] - a_t[i][j][k])
               for i in range(b) for j in range(b) for k in range(b)) / b**3


def test_rkd_terms_equal_hand_computation():
    # Teacher scaled up so some differences exceed 1 and both smooth-L1 branches are used.
    s, t = randn(5, 3, seed=7), randn(5, 4, seed=8, scale=3.0)
    assert KF.rkd_distance(s, t).item() == pytest.approx(hand_rkd_distance(s, t), rel=1e-10)
    assert KF.rkd_angle(s, t).item() == pytest.approx(hand_rkd_angle(s, t), rel=1e-10)
    expected = 25 * hand_rkd_distance(s, t) + 50 * hand_rkd_angle(s, t)
    assert KF.relational_kd(s, t).item() == pytest.approx(expected, rel=1e-10)
    expected = 2 * hand_rkd_distance(s, t) + 3 * hand_rkd_angle(s, t)
    assert KF.relational_kd(s, t, 2.0, 3.0).item() == pytest.approx(expected, rel=1e-10)


def test_rkd_angle_uses_cosines_of_triangle_angles():
    # Three points of a right isosceles triangle: the angle at the right-angle corner is 90
    # degrees (cos 0), the other two 45 degrees (cos sqrt(2)/2).
    f = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    angles = hand_angles(f)
    assert angles[0][1][2] == pytest.approx(0.0, abs=1e-15)
    assert angles[1][0][2] == pytest.approx(math.sqrt(0.5), rel=1e-12)
    assert KF.rkd_angle(f, f).item() == 0.0
    assert KF.pairwise_distances(f)[1, 2].item() == pytest.approx(math.sqrt(2), rel=1e-12)


def test_pairwise_distances_zero_diagonal_and_squared():
    f = randn(4, 6, seed=9)
    d = KF.pairwise_distances(f)
    assert torch.equal(torch.diagonal(d), torch.zeros(4, dtype=torch.float64))
    hand = torch.tensor(hand_distance_matrix(f), dtype=torch.float64)
    assert torch.allclose(d, hand, rtol=1e-10, atol=1e-12)
    assert torch.allclose(KF.pairwise_distances(f, squared=True), hand**2, rtol=1e-10,
                          atol=1e-12)


def test_rkd_gradcheck_and_dtype():
    s = randn(4, 3, seed=10).requires_grad_()
    t = randn(4, 3, seed=11, scale=2.0).requires_grad_()
    assert torch.autograd.gradcheck(KF.rkd_distance, (s, t))
    assert torch.autograd.gradcheck(KF.rkd_angle, (s, t))
    assert KF.relational_kd(s.float(), t.float()).dtype == torch.float32


# --------------------------------------------------------------------------------------- CC
def hand_cc(s, t, gamma, order):
    def kernel(f):
        units = [[x / norm(r) for x in r] for r in rows(f)]
        b = len(units)
        out = [[0.0] * b for _ in range(b)]
        for i in range(b):
            for j in range(b):
                sim = dot(units[i], units[j])
                out[i][j] = sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p)
                                * sim**p for p in range(order + 1))
        return out

    ks, kt = kernel(s), kernel(t)
    b = len(ks)
    return sum((ks[i][j] - kt[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


@pytest.mark.parametrize("gamma,order", [(0.4, 2), (1.0, 0), (0.7, 4)])
def test_cc_equals_hand_computation(gamma, order):
    s, t = randn(5, 3, seed=12), randn(5, 8, seed=13)
    value = KF.correlation_congruence(s, t, gamma=gamma, order=order)
    assert value.item() == pytest.approx(hand_cc(s, t, gamma, order), rel=1e-10, abs=1e-16)


def test_cc_high_order_is_the_gaussian_rbf_on_unit_vectors():
    # sum_p e^{-2g} (2g S)^p / p! -> exp(-2g (1 - S)) = exp(-g ||u_i - u_j||^2).
    s, t, gamma = randn(4, 3, seed=14), randn(4, 5, seed=15), 0.4

    def rbf(f):
        units = [[x / norm(r) for x in r] for r in rows(f)]
        return [[math.exp(-gamma * sum(d * d for d in sub(a, b))) for b in units] for a in units]

    ks, kt = rbf(s), rbf(t)
    expected = sum((ks[i][j] - kt[i][j]) ** 2 for i in range(4) for j in range(4)) / 16
    value = KF.correlation_congruence(s, t, gamma=gamma, order=30)
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_cc_gradcheck_and_dtype():
    s = randn(4, 3, seed=16).requires_grad_()
    t = randn(4, 3, seed=17).requires_grad_()
    assert torch.autograd.gradcheck(KF.correlation_congruence, (s, t))
    assert KF.correlation_congruence(s.float(), t.float()).dtype == torch.float32


# -------------------------------------------------------------------------------------- IRG
def hand_edge_matrix(x):
    r = rows(x)
    b = len(r)
    d = [[0.0 if i == j else sum(v * v for v in sub(r[i], r[j])) for j in range(b)]
         for i in range(b)]
    top = max(max(row) for row in d)
    return [[v / top for v in row] for row in d]


def hand_mse_matrix(a, b):
    n = len(a)
    return sum((a[i][j] - b[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2


def hand_mse_vector(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / len(a)


def hand_transformation_vector(fm1, fm2):
    """Reference case: fm1 (B, C, 2H, 2W) averaged over 2x2 blocks, fm2 (B, 2C, H, W) averaged
    over channel pairs (2c, 2c+1)."""
    b, c, h2, w2 = fm1.shape
    h, w = h2 // 2, w2 // 2
    assert fm2.shape == (b, 2 * c, h, w)
    v = []
    for n in range(b):
        total = 0.0
        for ch in range(c):
            for y in range(h):
                for x in range(w):
                    a = sum(float(fm1[n, ch, 2 * y + dy, 2 * x + dx])
                            for dy in range(2) for dx in range(2)) / 4
                    bb = (float(fm2[n, 2 * ch, y, x]) + float(fm2[n, 2 * ch + 1, y, x])) / 2
                    total += (a - bb) ** 2
        v.append(total)
    top = max(v)
    return [x / top for x in v]


def irg_inputs(seed, c1, c2, size1=4, size2=2, emb=5, classes=3, batch=4):
    return (randn(batch, c1, size1, size1, seed=seed).relu(),
            randn(batch, c2, size2, size2, seed=seed + 1).relu(),
            randn(batch, emb, seed=seed + 2).relu(),
            randn(batch, classes, seed=seed + 3))


def test_irg_terms_equal_hand_computation():
    s = irg_inputs(20, 2, 4)
    t = irg_inputs(30, 3, 6, emb=7)  # other widths: every term is width-agnostic
    vertex = hand_mse_vector([x for r in rows(s[3]) for x in r],
                             [x for r in rows(t[3]) for x in r])
    assert KF.irg_vertex(s[3], t[3]).item() == pytest.approx(vertex, rel=1e-10)
    edges = [hand_mse_matrix(hand_edge_matrix(a), hand_edge_matrix(b))
             for a, b in ((s[2], t[2]), (s[0], t[0]), (s[1], t[1]))]
    for (a, b), expected in zip(((s[2], t[2]), (s[0], t[0]), (s[1], t[1])), edges, strict=True):
        assert KF.irg_edge(a, b).item() == pytest.approx(expected, rel=1e-10)
    transformation = hand_mse_vector(hand_transformation_vector(s[0], s[1]),
                                     hand_transformation_vector(t[0], t[1]))
    assert KF.irg_transformation(s[0], s[1], t[0], t[1]).item() == pytest.approx(
        transformation, rel=1e-10)
    total = 0.1 * vertex + 5 * sum(edges) / 3 + 5 * transformation
    assert KF.instance_relation_graph(s, t).item() == pytest.approx(total, rel=1e-10)
    total = 1.0 * vertex + 2 * sum(edges) / 3 + 3 * transformation
    assert KF.instance_relation_graph(s, t, 1.0, 2.0, 3.0).item() == pytest.approx(total,
                                                                                  rel=1e-10)


def hand_group_means(fm, groups):
    """fm (B, C, H, W) -> (B, len(groups), H, W), channel means over each index list."""
    return torch.stack([fm[:, g].mean(dim=1) for g in groups], dim=1)


def hand_vector(a, b):
    d = [sum(v * v for v in sub(x, y)) for x, y in zip(rows(a), rows(b), strict=True)]
    return [x / max(d) for x in d]


@pytest.mark.parametrize("case", ["divisible", "fractional", "first_wider", "second_larger"])
def test_irg_transformation_generalised_shapes(case):
    s1 = randn(3, 2, 4, 4, seed=40)
    t1, t2 = randn(3, 2, 4, 4, seed=42), randn(3, 4, 2, 2, seed=43)  # reference shapes
    pool2x2 = torch.nn.functional.avg_pool2d  # 4x4 -> 2x2 in 2x2 blocks
    if case == "divisible":  # 3x the channels: means of 3 adjacent channels
        s2 = randn(3, 6, 2, 2, seed=41)
        a, b = pool2x2(s1, 2), hand_group_means(s2, [[0, 1, 2], [3, 4, 5]])
    elif case == "fractional":  # 5 channels onto 2: adaptive groups [0, 3) and [2, 5)
        s2 = randn(3, 5, 2, 2, seed=41)
        a, b = pool2x2(s1, 2), hand_group_means(s2, [[0, 1, 2], [2, 3, 4]])
    elif case == "first_wider":  # the first map has more channels: it is the one averaged
        s2 = randn(3, 1, 2, 2, seed=41)
        a, b = hand_group_means(pool2x2(s1, 2), [[0, 1]]), s2
    else:  # the second map is the spatially larger one: it is pooled down
        s2 = randn(3, 4, 8, 8, seed=41)
        s1 = randn(3, 2, 4, 4, seed=40)
        a, b = s1, hand_group_means(pool2x2(s2, 2), [[0, 1], [2, 3]])
    expected = hand_mse_vector(hand_vector(a, b), hand_transformation_vector(t1, t2))
    value = KF.irg_transformation(s1, s2, t1, t2)
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_irg_reference_channel_pairs_are_bit_identical():
    s1, s2 = randn(4, 8, 8, 8, seed=50).float(), randn(4, 16, 4, 4, seed=51).float()
    pooled = torch.nn.functional.adaptive_avg_pool2d(s1, (4, 4))
    pairs = (s2[:, 0::2] + s2[:, 1::2]) / 2.0
    d = ((pooled.flatten(1) - pairs.flatten(1)) ** 2).sum(-1).clamp(min=1e-12)
    t1, t2 = randn(4, 8, 8, 8, seed=52).float(), randn(4, 16, 4, 4, seed=53).float()
    pooled_t = torch.nn.functional.adaptive_avg_pool2d(t1, (4, 4))
    dt = ((pooled_t.flatten(1) - ((t2[:, 0::2] + t2[:, 1::2]) / 2.0).flatten(1)) ** 2).sum(-1)
    expected = torch.nn.functional.mse_loss(d / d.max(), dt.clamp(min=1e-12) / dt.max())
    assert torch.equal(KF.irg_transformation(s1, s2, t1, t2), expected)


def test_irg_gradcheck_and_dtype():
    s = tuple(x.requires_grad_() for x in irg_inputs(60, 2, 4))
    t = irg_inputs(70, 2, 4)
    assert torch.autograd.gradcheck(lambda *a: KF.instance_relation_graph(a, t), s)
    assert KF.instance_relation_graph([x.float() for x in s],
                                      [x.float() for x in t]).dtype == torch.float32


# -------------------------------------------------------------------------------------- CRD
def hand_nce(scores, num_data, eps=1e-7):
    r = rows(scores)
    k = len(r[0]) - 1
    noise = k / num_data
    total = 0.0
    for row in r:
        total += math.log(row[0] / (row[0] + noise + eps))
        total += sum(math.log(noise / (x + noise + eps)) for x in row[1:])
    return -total / len(r)


def test_contrastive_nce_loss_equals_hand_computation():
    scores = randn(3, 6, seed=80).abs() + 0.01
    value = KF.contrastive_nce_loss(scores, num_data=50)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_nce(scores, 50), rel=1e-10)
    one = scores[:1]  # batch size 1 keeps working
    assert KF.contrastive_nce_loss(one, 50).item() == pytest.approx(hand_nce(one, 50), rel=1e-10)


def test_contrastive_memory_scores_equal_hand_computation():
    memory = randn(7, 3, seed=81)
    anchors = randn(2, 3, seed=82)
    sample = torch.tensor([[3, 0, 6, 6], [1, 2, 4, 5]])
    value = KF.contrastive_memory_scores(memory, anchors, sample, temperature=0.5)
    assert value.shape == (2, 4)
    for b in range(2):
        for j in range(4):
            expected = math.exp(dot(rows(memory)[int(sample[b, j])], rows(anchors)[b]) / 0.5)
            assert value[b, j].item() == pytest.approx(expected, rel=1e-12)
    single = KF.contrastive_memory_scores(memory, anchors[:1], sample[:1], 0.5)
    assert single.shape == (1, 4)


def test_crd_functions_gradcheck_and_dtype():
    scores = (randn(2, 5, seed=83).abs() + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: KF.contrastive_nce_loss(x, 20), (scores,))
    memory = randn(6, 3, seed=84)
    anchors = randn(2, 3, seed=85).requires_grad_()
    sample = torch.tensor([[0, 1, 2], [5, 4, 3]])
    assert torch.autograd.gradcheck(
        lambda a: KF.contrastive_memory_scores(memory, a, sample, 0.5), (anchors,))
    assert KF.contrastive_nce_loss(scores.float(), 20).dtype == torch.float32
    assert KF.contrastive_memory_scores(memory.float(), anchors.float(), sample,
                                        0.1).dtype == torch.float32
