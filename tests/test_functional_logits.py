"""mutual_learning and boundary_supporting_kl against hand computations in float64."""
import math

import pytest
import torch

from kdzoo import functional as KF


def hand_kl_batchmean(z, z_target, T=1.0):
    """(1/B) sum_b sum_k q_bk (log q_bk - log p_bk), q = softmax(z_target/T), p = softmax(z/T),
    with plain Python floats."""
    total = 0.0
    for row, row_target in zip(z.tolist(), z_target.tolist(), strict=True):
        a = [x / T for x in row]
        b = [x / T for x in row_target]
        log_norm_a = math.log(sum(math.exp(x) for x in a))
        log_norm_b = math.log(sum(math.exp(x) for x in b))
        for k in range(len(a)):
            log_q = b[k] - log_norm_b
            log_p = a[k] - log_norm_a
            total += math.exp(log_q) * (log_q - log_p)
    return total / z.shape[0]


def logits_pair(seed=0, shape=(4, 6)):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2
    b = torch.randn(*shape, generator=gen, dtype=torch.float64) * 3
    return a, b


def test_mutual_learning_equals_hand_computation():
    z, z_peer = logits_pair()
    value = KF.mutual_learning(z, z_peer)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_kl_batchmean(z, z_peer), rel=1e-12, abs=1e-14)


def test_mutual_learning_two_class_closed_form():
    # K=2, B=1: KL(q||p) = q log(q/p) + (1-q) log((1-q)/(1-p)), q = sigmoid(1), p = sigmoid(-1)
    z = torch.tensor([[0.0, -1.0]], dtype=torch.float64)       # p(class 0) = sigmoid(1)
    z_peer = torch.tensor([[-0.5, 0.5]], dtype=torch.float64)  # q(class 0) = sigmoid(-1)
    p, q = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))
    expected = q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
    assert KF.mutual_learning(z, z_peer).item() == pytest.approx(expected, rel=1e-12)


def test_mutual_learning_is_asymmetric_zero_on_equal_and_keeps_dtype():
    z, z_peer = logits_pair(1)
    assert KF.mutual_learning(z, z).item() == pytest.approx(0.0, abs=1e-14)
    assert KF.mutual_learning(z, z_peer).item() != pytest.approx(
        KF.mutual_learning(z_peer, z).item(), rel=1e-6)
    assert KF.mutual_learning(z.float(), z_peer.float()).dtype == torch.float32


def test_mutual_learning_gradcheck():
    z, z_peer = logits_pair(2, (3, 4))
    assert torch.autograd.gradcheck(KF.mutual_learning,
                                    (z.requires_grad_(), z_peer.requires_grad_()))


def test_mutual_learning_gradient_is_softmax_difference():
    # d/dz of KL(q || softmax(z)) with batchmean is (softmax(z) - q) / B
    z, z_peer = logits_pair(3)
    z.requires_grad_()
    KF.mutual_learning(z, z_peer).backward()
    expected = (torch.softmax(z.detach(), 1) - torch.softmax(z_peer, 1)) / z.shape[0]
    assert torch.allclose(z.grad, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("T", [1.0, 3.0])
@pytest.mark.parametrize("squared", [False, True])
def test_boundary_supporting_kl_equals_hand_computation(T, squared):
    s, t = logits_pair(4, (5, 7))
    value = KF.boundary_supporting_kl(s, t, temperature=T, squared_temperature=squared)
    expected = hand_kl_batchmean(s, t, T) * (T * T if squared else 1.0)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_boundary_supporting_kl_defaults_are_reference():
    # T = 3 and no T^2 factor (commented out in the reference's kd_losses/bss.py)
    s, t = logits_pair(5)
    assert KF.boundary_supporting_kl(s, t).item() == pytest.approx(hand_kl_batchmean(s, t, 3.0),
                                                                   rel=1e-12)
    assert KF.boundary_supporting_kl(s.float(), t.float()).dtype == torch.float32


@pytest.mark.parametrize("squared", [False, True])
def test_boundary_supporting_kl_gradcheck(squared):
    s, t = logits_pair(6, (3, 5))
    fn = lambda a, b: KF.boundary_supporting_kl(a, b, 3.0, squared)
    assert torch.autograd.gradcheck(fn, (s.requires_grad_(), t.requires_grad_()))


def test_public_functional_api_is_complete():
    """The names and signatures the documentation promises, and every topic module's exports."""
    import importlib
    import inspect
    import pkgutil

    import kdzoo.functional as KF

    promised = {
        "logits_mse": ["student_logits", "teacher_logits"],
        "soft_target": ["student_logits", "teacher_logits", "temperature"],
        "attention_transfer": ["student_feat", "teacher_feat", "p"],
        "hint": ["student_feat", "teacher_feat"],
        "neuron_selectivity_transfer": ["student_feat", "teacher_feat"],
        "probabilistic_knowledge_transfer": ["student_emb", "teacher_emb"],
        "fsp": ["student_first", "student_second", "teacher_first", "teacher_second"],
        "factor_transfer": ["student_factor", "teacher_factor"],
        "mutual_learning": ["logits", "peer_logits"],
        "relational_kd": ["student_emb", "teacher_emb", "distance_weight", "angle_weight"],
        "activation_boundary": ["student_preact", "teacher_preact", "margin"],
        "similarity_preserving": ["student_feat", "teacher_feat"],
        "correlation_congruence": ["student_emb", "teacher_emb", "gamma", "order"],
    }
    for name, params in promised.items():
        signature = list(inspect.signature(getattr(KF, name)).parameters)
        assert signature[: len(params)] == params, name
    exported = set()
    for module in pkgutil.iter_modules(KF.__path__):
        exported |= set(importlib.import_module(f"kdzoo.functional.{module.name}").__all__)
    assert exported == set(KF.__all__)
