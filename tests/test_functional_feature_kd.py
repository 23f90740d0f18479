"""kdzoo.functional.feature_kd against hand computations of the authors' formulas (ReviewKD's
``hcl``, ICKD's ``batch_loss``, mdistiller's ``kdsvd_loss``), written with explicit Python loops
over float64 values, independently of the vectorised implementation; gradcheck in float64; float32
within tolerance of float64."""
import math

import pytest
import torch

from kdzoo.functional.feature_kd import (_right_singular_vectors, hierarchical_context_loss,
                                         inter_channel_correlation, kdsvd)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def rand(*shape, seed=0, scale=1.0, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift


# ------------------------------------------------------------------------------ hand formulas
def hand_adaptive_pool(x, size):
    """Adaptive average pooling by loops: output cell i covers rows floor(i*H/l) to
    ceil((i+1)*H/l) (PyTorch's and the reference's definition)."""
    B, C, H, W = len(x), len(x[0]), len(x[0][0]), len(x[0][0][0])
    out = []
    for b in range(B):
        chans = []
        for c in range(C):
            rows = []
            for i in range(size):
                r0, r1 = (i * H) // size, -(-((i + 1) * H) // size)
                row = []
                for j in range(size):
                    c0, c1 = (j * W) // size, -(-((j + 1) * W) // size)
                    cells = [x[b][c][r][q] for r in range(r0, r1) for q in range(c0, c1)]
                    row.append(sum(cells) / len(cells))
                rows.append(row)
            chans.append(rows)
        out.append(chans)
    return out


def flat(x):
    if isinstance(x, list):
        return [v for item in x for v in flat(item)]
    return [x]


def hand_mse(a, b):
    fa, fb = flat(a), flat(b)
    return sum((x - y) ** 2 for x, y in zip(fa, fb, strict=True)) / len(fa)


def hand_hcl(students, teachers):
    total = 0.0
    for s, t in zip(students, teachers, strict=True):
        s, t = s.tolist(), t.tolist()
        height = len(s[0][0])
        loss, weight, weights = hand_mse(s, t), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= height:
                continue
            weight /= 2
            loss += weight * hand_mse(hand_adaptive_pool(s, size), hand_adaptive_pool(t, size))
            weights += weight
        total += loss / weights
    return total


def hand_icc(s, t):
    def gram_rows(x):
        out = []
        for sample in x.tolist():
            rows = [[v for row in chan for v in row] for chan in sample]
            gram = [[sum(a * b for a, b in zip(u, v, strict=True)) for v in rows] for u in rows]
            normed = []
            for row in gram:
                norm = max(math.sqrt(sum(g * g for g in row)), 1e-12)
                normed.append([g / norm for g in row])
            out.append(normed)
        return out

    gs, gt = gram_rows(s), gram_rows(t)
    B, C = len(gs), len(gs[0])
    total = sum((gs[b][i][j] - gt[b][i][j]) ** 2 for b in range(B) for i in range(C)
                for j in range(C))
    return total / (C * B)


def hand_rsv(feature, count):
    """Per sample: the (C*H) x W matrix built element by element, decomposed by LAPACK (the
    primitive the reference calls), then columns and singular values normalised by loops."""
    x = feature.tolist()
    B, C, H, W = len(x), len(x[0]), len(x[0][0]), len(x[0][0][0])
    vectors, values = [], []
    for b in range(B):
        matrix = torch.tensor([[x[b][c][h][w] for w in range(W)] for c in range(C)
                               for h in range(H)], dtype=torch.float64)
        _, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        v = vh.T.tolist()  # rows: positions w, columns: singular vectors
        n = min(count, len(v[0]))
        cols = []
        for j in range(n):
            col = [v[w][j] for w in range(W)]
            norm = max(math.sqrt(sum(e * e for e in col)), 1e-12)
            cols.append([e / norm for e in col])
        vectors.append(cols)  # [j][w]
        s = s.tolist()[:n]
        norm = max(math.sqrt(sum(e * e for e in s)), 1e-12)
        values.append([e / norm for e in s])
    return vectors, values


def hand_rsv_repdistiller(feature, count):
    """RepDistiller's ``KDSVD.svd``: per sample the (H*W) x C matrix, row h*W + w and column c
    (``feat.view(-1, C, H*H).transpose(-2, -1)``), built element by element and decomposed by
    LAPACK as ``torch.svd`` does; the first ``count`` right singular vectors (over the
    channels) and singular values normalised by loops (``F.normalize(v[:, :, :n], dim=1)``,
    ``F.normalize(s[:, :n], dim=1)``)."""
    x = feature.tolist()
    B, C, H, W = len(x), len(x[0]), len(x[0][0]), len(x[0][0][0])
    vectors, values = [], []
    for b in range(B):
        matrix = torch.tensor([[x[b][c][h][w] for c in range(C)] for h in range(H)
                               for w in range(W)], dtype=torch.float64)
        _, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        v = vh.T.tolist()  # rows: channels c, columns: singular vectors
        n = min(count, len(v[0]))
        cols = []
        for j in range(n):
            col = [v[c][j] for c in range(C)]
            norm = max(math.sqrt(sum(e * e for e in col)), 1e-12)
            cols.append([e / norm for e in col])
        vectors.append(cols)  # [j][c]
        s = s.tolist()[:n]
        norm = max(math.sqrt(sum(e * e for e in s)), 1e-12)
        values.append([e / norm for e in s])
    return vectors, values


def hand_kdsvd(students, teachers, k, rsv=None):
    rsv = rsv or hand_rsv
    previous = None
    total = 0.0
    batch = students[0].shape[0]
    for fs, ft in zip(students, teachers, strict=True):
        vt, st = rsv(ft, k)
        vs, _ = rsv(fs, k + 3)
        aligned_s, scaled_t = [], []
        for b in range(batch):
            cosines = [[sum(a * c for a, c in zip(u, w, strict=True)) for w in vt[b]]
                       for u in vs[b]]
            cols_s, cols_t = [], []
            for j, teacher_col in enumerate(vt[b]):
                best = max(abs(cosines[i][j]) for i in range(len(vs[b])))
                col = [0.0] * len(teacher_col)
                for i, student_col in enumerate(vs[b]):
                    if abs(cosines[i][j]) == best:
                        sign = math.copysign(1.0, cosines[i][j]) if cosines[i][j] else 0.0
                        col = [c + sign * e for c, e in zip(col, student_col, strict=True)]
                cols_s.append([e * st[b][j] for e in col])
                cols_t.append([e * st[b][j] for e in teacher_col])
            aligned_s.append(cols_s)
            scaled_t.append(cols_t)
        if previous is not None:
            prev_s, prev_t = previous
            term = 0.0
            for b in range(batch):
                for j in range(len(scaled_t[b])):
                    for p in range(len(scaled_t[b][j])):
                        for q in range(len(prev_t[b][j])):
                            rs = math.exp(-(aligned_s[b][j][p] - prev_s[b][j][q]) ** 2 / 8)
                            rt = math.exp(-(scaled_t[b][j][p] - prev_t[b][j][q]) ** 2 / 8)
                            term += (rs - rt) ** 2
            total += term / batch
        previous = (aligned_s, scaled_t)
    return total


# ------------------------------------------------------------------------------------ HCL
HCL_SHAPES = [(2, 3, 8, 8), (2, 4, 5, 6), (2, 2, 2, 2), (2, 5, 1, 1)]


def hcl_inputs(dtype=torch.float64):
    students = [rand(*shape, seed=i).to(dtype) for i, shape in enumerate(HCL_SHAPES)]
    teachers = [rand(*shape, seed=10 + i).to(dtype) for i, shape in enumerate(HCL_SHAPES)]
    return students, teachers


def test_hcl_matches_hand_computation():
    students, teachers = hcl_inputs()
    value = hierarchical_context_loss(students, teachers)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_hcl(students, teachers), rel=1e-12)


def test_hcl_level_weights():
    """An 8x8 level weighs 1, 1/2, 1/4, 1/8 (sum 1.875); a 1x1 level is the plain MSE; levels
    are summed, not averaged."""
    s, t = rand(1, 1, 8, 8, seed=1), rand(1, 1, 8, 8, seed=2)
    pool = torch.nn.functional.adaptive_avg_pool2d
    pooled = [((s - t) ** 2).mean().item()] + [
        ((pool(s, size) - pool(t, size)) ** 2).mean().item() for size in (4, 2, 1)]
    expected = (pooled[0] + pooled[1] / 2 + pooled[2] / 4 + pooled[3] / 8) / 1.875
    assert hierarchical_context_loss([s], [t]).item() == pytest.approx(expected, rel=1e-12)
    p, q = rand(3, 4, 1, 1, seed=3), rand(3, 4, 1, 1, seed=4)
    both = hierarchical_context_loss([s, p], [t, q]).item()
    assert both == pytest.approx(expected + ((p - q) ** 2).mean().item(), rel=1e-12)


def test_hcl_gradcheck():
    students, teachers = hcl_inputs()
    inputs = [x.clone().requires_grad_() for x in students + teachers]
    n = len(students)
    assert torch.autograd.gradcheck(
        lambda *xs: hierarchical_context_loss(xs[:n], xs[n:]), inputs)


def test_hcl_float32_close_to_float64():
    s64, t64 = hcl_inputs()
    s32, t32 = hcl_inputs(torch.float32)
    v32 = hierarchical_context_loss(s32, t32)
    assert v32.dtype == torch.float32
    assert v32.item() == pytest.approx(hierarchical_context_loss(s64, t64).item(), rel=1e-5)


def test_hcl_refuses_mismatched_levels():
    s, t = rand(2, 3, 4, 4), rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="levels"):
        hierarchical_context_loss([s, s], [t])
    with pytest.raises(ValueError, match="same shape"):
        hierarchical_context_loss([s], [rand(2, 3, 2, 2)])


# ------------------------------------------------------------------------------------ ICKD
def test_icc_matches_hand_computation_with_other_spatial_sizes():
    s, t = rand(3, 4, 3, 5, seed=1), rand(3, 4, 2, 2, seed=2, shift=0.5)
    value = inter_channel_correlation(s, t)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_icc(s, t), rel=1e-12)


def test_icc_zero_for_equal_correlations():
    s = rand(2, 3, 4, 4, seed=3)
    assert inter_channel_correlation(s, 2.0 * s).item() == pytest.approx(0.0, abs=1e-14)


def test_icc_gradcheck():
    s = rand(2, 3, 3, 4, seed=4).requires_grad_()
    t = rand(2, 3, 2, 3, seed=5).requires_grad_()
    assert torch.autograd.gradcheck(inter_channel_correlation, (s, t))


def test_icc_float32_close_to_float64():
    s, t = rand(4, 6, 4, 4, seed=6), rand(4, 6, 4, 4, seed=7)
    v32 = inter_channel_correlation(s.float(), t.float())
    assert v32.dtype == torch.float32
    assert v32.item() == pytest.approx(inter_channel_correlation(s, t).item(), rel=1e-5)


def test_icc_refuses_other_channel_counts():
    with pytest.raises(ValueError, match="channel count"):
        inter_channel_correlation(rand(2, 3, 4, 4), rand(2, 5, 4, 4))


# ------------------------------------------------------------------------------------ KDSVD
#: three stages of other widths W (and channel counts), as a network's stages
KDSVD_STUDENT = [(2, 3, 5, 6), (2, 4, 3, 5), (2, 6, 4, 4)]
KDSVD_TEACHER = [(2, 5, 5, 6), (2, 2, 4, 5), (2, 3, 3, 4)]


def kdsvd_inputs(dtype=torch.float64):
    students = [rand(*shape, seed=20 + i).to(dtype) for i, shape in enumerate(KDSVD_STUDENT)]
    teachers = [rand(*shape, seed=30 + i).to(dtype) for i, shape in enumerate(KDSVD_TEACHER)]
    return students, teachers


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_matches_hand_computation(k):
    students, teachers = kdsvd_inputs()
    value = kdsvd(students, teachers, k=k)
    assert value.dtype == torch.float64
    assert value.item() > 0
    assert value.item() == pytest.approx(hand_kdsvd(students, teachers, k), rel=1e-10)


#: RepDistiller's KDSVD: equal channel counts per stage pair, square maps of any sizes
KDSVD_RD_STUDENT = [(2, 4, 3, 3), (2, 5, 4, 4), (2, 6, 2, 2)]
KDSVD_RD_TEACHER = [(2, 4, 4, 4), (2, 5, 3, 3), (2, 6, 3, 3)]


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_repdistiller_matches_hand_computation_of_its_formula(k):
    """variant="repdistiller" against RepDistiller's formula (HobbitLong/RepDistiller@b84f547
    distiller_zoo/KDSVD.py) computed by loops in float64: the (H*W) x C matrix, teacher k and
    student k + 3 right singular vectors (over channels), alignment by |cos| with its sign,
    scaling by the teacher's normalised singular values, RBF exp(-d^2 / 8) between consecutive
    stages, sum of squared differences / B, summed over the pairs (helper/loops.py)."""
    students = [rand(*shape, seed=40 + i) for i, shape in enumerate(KDSVD_RD_STUDENT)]
    teachers = [rand(*shape, seed=50 + i) for i, shape in enumerate(KDSVD_RD_TEACHER)]
    value = kdsvd(students, teachers, k=k, variant="repdistiller")
    assert value.dtype == torch.float64 and value.item() > 0
    assert value.item() == pytest.approx(
        hand_kdsvd(students, teachers, k, rsv=hand_rsv_repdistiller), rel=1e-10)
    # the same maps seen as mdistiller's (C*H) x W matrices give another loss
    square = [rand(2, 4, 4, 4, seed=60 + i) for i in range(2)]
    other = [rand(2, 4, 4, 4, seed=70 + i) for i in range(2)]
    assert kdsvd(square, other, variant="repdistiller").item() != pytest.approx(
        kdsvd(square, other).item(), rel=1e-3)
    # RepDistiller's matrix is mdistiller's of the maps permuted to (B, H, W, C)
    permuted = [x.permute(0, 2, 3, 1) for x in square]
    assert kdsvd(square, other, variant="repdistiller").item() == pytest.approx(
        kdsvd(permuted, [x.permute(0, 2, 3, 1) for x in other]).item(), rel=1e-10)


def test_kdsvd_repdistiller_gradcheck_and_refusals():
    students = [rand(*shape, seed=40 + i) for i, shape in enumerate(KDSVD_RD_STUDENT)]
    teachers = [rand(*shape, seed=50 + i) for i, shape in enumerate(KDSVD_RD_TEACHER)]
    inputs = [x.clone().requires_grad_() for x in students]
    assert torch.autograd.gradcheck(
        lambda *xs: kdsvd(list(xs), teachers, variant="repdistiller"), inputs)
    with pytest.raises(ValueError, match="same batch size and channel count"):
        kdsvd(students, [rand(2, 3, 4, 4)] + teachers[1:], variant="repdistiller")
    with pytest.raises(ValueError, match="unknown variant"):
        kdsvd(students, teachers, variant="tensorflow")


def test_kdsvd_singular_vectors_solve_the_eigenproblem():
    """The right singular vectors are unit eigenvectors of M^T M, M = the (C*H) x W view of
    each sample, for its largest eigenvalues, in order (an independent check of the
    decomposition itself)."""
    feature = rand(2, 3, 4, 5, seed=8)
    vectors, values = _right_singular_vectors(feature, 5)
    for b in range(2):
        matrix = feature[b].reshape(12, 5)
        gram = matrix.T @ matrix
        eigen = torch.linalg.eigvalsh(gram).flip(0)
        for j in range(5):
            v = vectors[b, :, j]
            assert torch.allclose(gram @ v, eigen[j] * v, atol=1e-10)
        assert torch.allclose(values[b], eigen.sqrt() / eigen.sum().sqrt(), atol=1e-12)


def test_kdsvd_invariant_to_the_student_sign_and_scale():
    """The student's vectors are aligned to the teacher's with their sign, and normalised: a
    negated or rescaled student gives the same loss."""
    students, teachers = kdsvd_inputs()
    value = kdsvd(students, teachers).item()
    assert kdsvd([-s for s in students], teachers).item() == pytest.approx(value, rel=1e-10)
    assert kdsvd([3.0 * s for s in students], teachers).item() == pytest.approx(value, rel=1e-10)


def test_kdsvd_gradcheck_and_constant_teacher():
    students, teachers = kdsvd_inputs()
    inputs = [s.clone().requires_grad_() for s in students]
    assert torch.autograd.gradcheck(lambda *xs: kdsvd(list(xs), teachers), inputs)
    teacher = [t.clone().requires_grad_() for t in teachers]
    loss = kdsvd(inputs, teacher)
    loss.backward()
    assert all(t.grad is None for t in teacher)  # the reference's detach()


def test_kdsvd_float32_close_to_float64():
    s64, t64 = kdsvd_inputs()
    s32, t32 = kdsvd_inputs(torch.float32)
    v32 = kdsvd(s32, t32)
    assert v32.dtype == torch.float32
    assert v32.item() == pytest.approx(kdsvd(s64, t64).item(), rel=1e-4)


def test_kdsvd_refusals():
    s, t = kdsvd_inputs()
    with pytest.raises(ValueError, match="at least two"):
        kdsvd(s[:1], t[:1])
    with pytest.raises(ValueError, match="k must be"):
        kdsvd(s, t, k=0)
    with pytest.raises(ValueError, match="width"):
        kdsvd([s[0], s[1]], [t[0], rand(2, 2, 4, 7)])
