"""CRD: sampling of positives and negatives, the memory banks, the normalisers, and the fast
score path against a straightforward gather-based implementation."""
import math

import pytest
import torch
import torch.nn.functional as F

from kdzoo.data.loader import Batch
from kdzoo.errors import ConfigError
from kdzoo.methods import MethodContext, Stage, Step, create_method
from kdzoo.models.features import FeatureInfo, Features
from states import assert_same_state

STAGE = Stage("main", 1)


def make_ctx(labels, s_dim=6, t_dim=10, num_classes=None):
    labels = torch.as_tensor(labels)
    num_classes = num_classes or int(labels.max()) + 1
    info = lambda d: FeatureInfo(stages=(), pool=d, logits=num_classes)  # noqa: E731
    return MethodContext({"student": info(s_dim), "teacher": info(t_dim)}, num_classes, 8, 3,
                         labels)


def make_crd(labels, seed=0, dtype=torch.float32, **params):
    torch.manual_seed(seed)
    method = create_method("crd", make_ctx(labels), **params)
    return method.to(dtype)


def make_step(labels, indices, step=0, seed=0):
    indices = torch.as_tensor(indices)
    batch = Batch(torch.zeros(len(indices), 3, 1, 1), torch.as_tensor(labels)[indices], indices)
    return Step(batch, STAGE, epoch=1, step=step, seed=seed)


def features(batch, seed, dtype=torch.float32, s_dim=6, t_dim=10):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, s_dim, generator=gen, dtype=dtype).requires_grad_()
    t = torch.randn(batch, t_dim, generator=gen, dtype=dtype)
    logits = torch.zeros(batch, 1, dtype=dtype)  # CRD uses the pooled features only
    return Features(logits=logits, pool=s), Features(logits=logits, pool=t)


# ----------------------------------------------------------------------------------- sampling
UNBALANCED = [0] * 30 + [1] * 50 + [2] * 40  # pools 90, 70, 80


@pytest.mark.parametrize("labels", [UNBALANCED, [0, 1, 2] * 40], ids=["unbalanced", "balanced"])
def test_negatives_are_other_classes_and_distinct_when_the_pool_is_large_enough(labels):
    labels = torch.tensor(labels)
    method = make_crd(labels, nce_k=60)
    indices = torch.arange(0, 120, 3)
    sample = method.sample_indices(indices, torch.Generator().manual_seed(1))
    assert sample.shape == (len(indices), 61)
    assert torch.equal(sample[:, 0], indices)  # exact mode: the sample itself
    negatives = sample[:, 1:]
    assert (labels[negatives] != labels[indices].unsqueeze(1)).all()
    for row in negatives:
        assert len(set(row.tolist())) == 60  # without replacement


def test_every_other_class_index_can_be_drawn_uniformly():
    labels = torch.tensor(UNBALANCED)
    method = make_crd(labels, nce_k=20)
    indices = torch.zeros(400, dtype=torch.long)  # class 0: pool of 90 indices 30..119
    sample = method.sample_indices(indices, torch.Generator().manual_seed(2))[:, 1:]
    counts = torch.bincount(sample.flatten(), minlength=120)
    assert counts[:30].sum() == 0
    expected = 400 * 20 / 90  # about 89 draws per index
    assert counts[30:].min() > 0.6 * expected and counts[30:].max() < 1.4 * expected


def test_relax_mode_positive_is_a_random_index_of_the_same_class():
    labels = torch.tensor(UNBALANCED)
    method = make_crd(labels, nce_k=10, mode="relax")
    indices = torch.arange(120)
    sample = method.sample_indices(indices, torch.Generator().manual_seed(3))
    assert torch.equal(labels[sample[:, 0]], labels)
    assert (sample[:, 0] != indices).any()
    assert (labels[sample[:, 1:]] != labels.unsqueeze(1)).all()


def test_replacement_only_when_nce_k_exceeds_the_pool():
    labels = torch.tensor([0] * 2 + [1] * 3 + [2] * 20)  # pools 23, 22, 5
    method = make_crd(labels, nce_k=10)
    indices = torch.arange(25)
    sample = method.sample_indices(indices, torch.Generator().manual_seed(4))
    negatives = sample[:, 1:]
    assert (labels[negatives] != labels.unsqueeze(1)).all()
    for i in range(5):  # classes 0 and 1: 10 distinct of 22-23
        assert len(set(negatives[i].tolist())) == 10
    assert set(negatives[5:].flatten().tolist()) <= set(range(5))  # class 2: the 5 others


def test_tiny_dataset_with_default_nce_k_trains():
    labels = torch.arange(32) % 4
    method = make_crd(labels)  # 16384 negatives from pools of 24: with replacement
    s, t = features(8, seed=5, s_dim=6, t_dim=10)
    terms = method({"student": s, "teacher": t}, make_step(labels, torch.arange(8)))
    assert math.isfinite(terms["crd"].item())
    terms["crd"].backward()
    assert s.pool.grad is not None and method.embed_t.linear.weight.grad is not None


def test_single_class_is_refused_and_bad_mode_is_refused():
    with pytest.raises(ConfigError, match="two classes"):
        make_crd(torch.zeros(10, dtype=torch.long))
    with pytest.raises(ConfigError, match="mode"):
        make_crd(torch.arange(10) % 2, mode="approximate")


def test_sampling_is_deterministic_given_the_step():
    labels = torch.tensor(UNBALANCED)
    method = make_crd(labels, nce_k=30)
    indices = torch.arange(10, 20)
    first = method.sample_indices(indices, make_step(labels, indices, step=3).generator("crd"))
    again = method.sample_indices(indices, make_step(labels, indices, step=3).generator("crd"))
    other = method.sample_indices(indices, make_step(labels, indices, step=4).generator("crd"))
    assert torch.equal(first, again) and not torch.equal(first, other)


# ------------------------------------------------------------------------------ memory and Z
def test_memory_banks_are_reference_initialised_buffers_in_order():
    labels = torch.arange(40) % 4
    method = make_crd(labels, seed=7, feat_dim=16)
    torch.manual_seed(7)
    torch.nn.Linear(6, 16), torch.nn.Linear(10, 16)  # embed_s, embed_t come first
    stdv = 1.0 / math.sqrt(16 / 3)
    assert torch.equal(method.memory_t, torch.rand(40, 16).mul_(2 * stdv).add_(-stdv))
    assert torch.equal(method.memory_s, torch.rand(40, 16).mul_(2 * stdv).add_(-stdv))
    state = method.state_dict()
    assert {"memory_t", "memory_s", "z_t", "z_s"} <= set(state)
    assert not {"labels", "class_sorted", "class_start", "class_count"} & set(state)
    assert not any(n.startswith("memory") for n, _ in method.named_parameters())


def test_memory_update_formula_and_untouched_rows():
    labels = torch.arange(40) % 4
    method = make_crd(labels, feat_dim=8, nce_k=12, nce_mom=0.3)
    before_t, before_s = method.memory_t.clone(), method.memory_s.clone()
    indices = torch.tensor([3, 17, 22, 39])
    s, t = features(4, seed=8)
    method({"student": s, "teacher": t}, make_step(labels, indices))
    with torch.no_grad():
        e_t, e_s = method.embed_t(t.pool), method.embed_s(s.pool)
    for memory, before, e in ((method.memory_t, before_t, e_t), (method.memory_s, before_s, e_s)):
        expected = F.normalize(0.3 * before[indices] + 0.7 * e, dim=1)
        assert torch.allclose(memory[indices], expected, atol=1e-6)
        others = torch.ones(40, dtype=torch.bool)
        others[indices] = False
        assert torch.equal(memory[others], before[others])


def test_normalisers_are_fixed_on_the_first_call_and_saved():
    labels = torch.arange(40) % 4
    method = make_crd(labels, feat_dim=8, nce_k=12, dtype=torch.float64)
    assert method.z_t.item() == -1 and method.z_s.item() == -1
    indices = torch.tensor([0, 5, 10, 15, 20])
    step = make_step(labels, indices)
    sample = method.sample_indices(indices, step.generator("crd"))
    s, t = features(5, seed=9, dtype=torch.float64)
    with torch.no_grad():
        e_s, e_t = method.embed_s(s.pool), method.embed_t(t.pool)
        raw_t = torch.exp((method.memory_s[sample] @ e_t.unsqueeze(2)).squeeze(2) / 0.1)
        raw_s = torch.exp((method.memory_t[sample] @ e_s.unsqueeze(2)).squeeze(2) / 0.1)
    method({"student": s, "teacher": t}, step)
    z_t, z_s = method.z_t.item(), method.z_s.item()
    assert z_t == pytest.approx(raw_t.mean().item() * 40, rel=1e-12)
    assert z_s == pytest.approx(raw_s.mean().item() * 40, rel=1e-12)
    s, t = features(5, seed=10, dtype=torch.float64)
    method({"student": s, "teacher": t}, make_step(labels, indices + 1, step=1))
    assert (method.z_t.item(), method.z_s.item()) == (z_t, z_s)
    resumed = make_crd(labels, seed=99, feat_dim=8, nce_k=12, dtype=torch.float64)
    resumed.load_state_dict(method.state_dict())
    assert (resumed.z_t.item(), resumed.z_s.item()) == (z_t, z_s)
    assert torch.equal(resumed.memory_t, method.memory_t)


# --------------------------------------------------------------------- the fast score path
def gather_reference_loss(method, student, teacher, indices, sample):
    """CRD computed the straightforward (reference) way: gather (B, 1+K, D) memory rows, bmm,
    exp, normalise by Z = mean * N (first call), NCE Eq. 18 on both sides."""
    e_s, e_t = method.embed_s(student), method.embed_t(teacher)
    batch, k1 = sample.shape
    n_data = method.memory_s.shape[0]
    w_s = method.memory_s.index_select(0, sample.view(-1)).view(batch, k1, -1)
    w_t = method.memory_t.index_select(0, sample.view(-1)).view(batch, k1, -1)
    out_t = torch.exp(torch.bmm(w_s, e_t.view(batch, -1, 1)).view(batch, k1) / 0.1)
    out_s = torch.exp(torch.bmm(w_t, e_s.view(batch, -1, 1)).view(batch, k1) / 0.1)
    out_t = out_t / (out_t.mean() * n_data).item()
    out_s = out_s / (out_s.mean() * n_data).item()
    noise = (k1 - 1) / n_data

    def nce(x):
        positive = torch.log(x[:, 0] / (x[:, 0] + noise + 1e-7)).sum()
        negative = torch.log(noise / (x[:, 1:] + noise + 1e-7)).sum()
        return -(positive + negative) / batch

    return nce(out_s) + nce(out_t)


@pytest.mark.parametrize("batch", [5, 1])
def test_fast_scores_equal_the_gather_reference(batch):
    labels = torch.arange(60) % 3
    method = make_crd(labels, feat_dim=8, nce_k=25, dtype=torch.float64, weight=1.0)
    indices = torch.arange(batch) * 7
    step = make_step(labels, indices)
    sample = method.sample_indices(indices, step.generator("crd"))
    s, t = features(batch, seed=11, dtype=torch.float64)
    s_ref = s.pool.detach().clone().requires_grad_()

    expected = gather_reference_loss(method, s_ref, t.pool, indices, sample)
    expected.backward()
    grads_ref = {n: p.grad.clone() for n, p in method.named_parameters()}
    method.zero_grad()

    # also updates the banks: backward must still work
    value = method({"student": s, "teacher": t}, step)["crd"]
    value.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.allclose(s.pool.grad, s_ref.grad, rtol=1e-10, atol=1e-14)
    for name, param in method.named_parameters():
        assert torch.allclose(param.grad, grads_ref[name], rtol=1e-10, atol=1e-14), name


def test_same_step_gives_the_same_loss_and_banks():
    labels = torch.arange(50) % 5
    results = []
    for _ in range(2):
        method = make_crd(labels, seed=3, feat_dim=8, nce_k=20)
        s, t = features(6, seed=12)
        step = make_step(labels, torch.arange(6) * 8, step=2, seed=5)
        loss = method({"student": s, "teacher": t}, step)["crd"]
        results.append((loss.item(), method.memory_t.clone(), method.memory_s.clone()))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1]) and torch.equal(results[0][2],
                                                                      results[1][2])


def test_defaults_are_the_reference_example():
    method = make_crd(torch.arange(40) % 4)
    assert (method.params.weight, method.nce_k, method.nce_t, method.nce_mom, method.mode) == \
        (0.2, 16384, 0.1, 0.5, "exact")
    assert method.memory_t.shape == (40, 128)
    assert method.embed_s.linear.in_features == 6 and method.embed_t.linear.in_features == 10


def test_resumed_run_equals_uninterrupted_run(make_config, tmp_path, crashed_and_resumed):
    """Negatives come from the step's generator and Z and the banks are buffers: a run resumed
    after epoch 1 ends bit-identical to one that never stopped."""
    from kdzoo.engine import fit

    def config(out):
        return make_config(method={"name": "crd", "nce_k": 20, "feat_dim": 16},
                           data={"name": "synthetic", "train_size": 48, "test_size": 16,
                                 "image_size": 16},
                           optim={"epochs": 2, "batch_size": 16}, out=str(tmp_path / out))

    whole = fit(config("whole"))
    resumed = crashed_and_resumed(config("broken"), crash_at=2)
    assert_same_state(whole.student.state_dict(), resumed.student.state_dict())
    # The run checkpoint holds the method's state: banks, normalisers and embeddings.
    saved = torch.load(resumed.path / "checkpoint.pt", weights_only=False)["method"]
    reference = torch.load(whole.path / "checkpoint.pt", weights_only=False)["method"]
    assert saved["z_t"].item() > 0
    for key in ("memory_t", "memory_s", "z_t", "z_s", "embed_s.linear.weight"):
        assert torch.equal(saved[key], reference[key]), key
