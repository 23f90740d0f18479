"""Method-level behaviour of logits regression, DML, Sobolev, LwM and BSS."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdzoo
from kdzoo.data.loader import Batch
from kdzoo.engine import RunDir, Trainer, build, evaluate, fit, freeze, read_metrics
from kdzoo.methods import MethodContext, Stage, Step, create_method
from kdzoo.models import FeatureInfo, Features
from feature_points import features_of
from kdzoo.methods.bss import (boundary_attack, bss_epoch_weight, sample_attack_class,
                               select_candidates)
from states import assert_same_state


def context(num_classes=5, image_size=4, in_chans=2):
    info = FeatureInfo(stages=(), pool=0, logits=num_classes)
    return MethodContext(infos={"student": info, "teacher": info}, num_classes=num_classes,
                         image_size=image_size, in_chans=in_chans,
                         train_labels=torch.zeros(1, dtype=torch.long))


def make_step(images, labels, student=None, teacher=None, epoch=1, epochs=1, step_index=0):
    batch = Batch(images, labels, torch.arange(len(labels)))
    networks = {role: net for role, net in (("student", student), ("teacher", teacher))
                if net is not None}
    return Step(batch, Stage("main", epochs), epoch, step_index, seed=0, networks=networks)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------------- logits
def test_logits_method_is_weighted_mse():
    method = create_method("logits", context())
    s, t = randn(3, 5, seed=1), randn(3, 5, seed=2)
    terms = method({"student": Features(logits=s), "teacher": Features(logits=t)},
                   make_step(randn(3, 2, 4, 4), torch.zeros(3)))
    expected = 0.1 * sum((a - b) ** 2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist(),
                                                        strict=True))
    assert terms["logits"].item() == pytest.approx(expected / 15, rel=1e-12)


# ------------------------------------------------------------------------------------ BSS
def test_bss_lambda_schedule_matches_the_reference():
    values = {e: bss_epoch_weight(2.0, e, 200) for e in range(1, 201)}
    assert all(values[e] == 0.0 for e in range(1, 11))  # warm-up
    assert values[11] == pytest.approx(1.875, abs=1e-12)
    assert values[160] == pytest.approx(0.0125, abs=1e-12)
    assert all(values[e] == 0.0 for e in range(161, 201))
    assert all(values[e] > values[e + 1] for e in range(11, 160))  # linear decay
    method = create_method("bss", context())
    assert method.epoch_weight(11, 200) == pytest.approx(1.875, abs=1e-12)
    assert not method.can_use_teacher_cache()  # it runs the teacher on adversarial images


def reference_attack_class(teacher_logits, uniform):
    """The reference's double loop (train_bss.py), transcribed."""
    attack_class = teacher_logits.sort(dim=1, descending=True)[1][:, 1].clone()
    score, index = F.softmax(teacher_logits, 1).sort(dim=1, descending=True)
    score, index = score[:, 1:], index[:, 1:]
    threshold = score.sum(dim=1) * uniform
    prob = score.cumsum(dim=1)
    for k in range(teacher_logits.shape[0]):
        for c in range(prob.shape[1]):
            if prob[k, c] >= threshold[k]:
                attack_class[k] = index[k, c]
                break
    return attack_class


def test_attack_class_matches_the_reference_loop_and_never_picks_rank_one():
    logits = randn(400, 10, seed=3) * 2
    uniform = torch.rand(400, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    uniform[:3] = torch.tensor([0.0, 1.0, 1.5])  # edges; 1.5: no class reached -> rank 2
    drawn = sample_attack_class(logits, uniform)
    assert torch.equal(drawn, reference_attack_class(logits, uniform))
    assert not (drawn == logits.argmax(1)).any()
    assert drawn[2] == logits.sort(1, descending=True).indices[2, 1]


def test_attack_class_follows_the_teacher_probabilities():
    logits = torch.tensor([[3.0, 1.0, 0.5, 0.0, -1.0, 2.0]], dtype=torch.float64)
    n = 40000
    gen = torch.Generator().manual_seed(5)
    drawn = sample_attack_class(logits.expand(n, -1), torch.rand(n, generator=gen,
                                                                 dtype=torch.float64))
    counts = torch.bincount(drawn, minlength=6).double() / n
    probs = F.softmax(logits[0], 0)
    expected = probs.clone()
    expected[0] = 0.0  # the top class is never drawn
    expected /= expected.sum()
    assert counts[0] == 0
    tolerance = 4 * torch.sqrt(expected * (1 - expected) / n) + 1e-12
    assert ((counts - expected).abs() <= tolerance).all(), (counts, expected)


def test_candidates_match_a_hand_selection():
    t = randn(20, 4, seed=7) * 3
    s = t + randn(20, 4, seed=6) * 2
    labels = t.argmax(1).clone()
    labels[:2] = (labels[:2] + 1) % 4  # two samples the teacher gets wrong
    chosen = select_candidates(s, t, labels, attack_size=3)
    both = [b for b in range(20) if s[b].argmax() == labels[b] and t[b].argmax() == labels[b]]
    assert len(both) > 3

    def score(b):
        diff = (t[b].softmax(0) - s[b].softmax(0)) ** 2
        return diff.sum().item() - diff[labels[b]].item()

    expected = sorted(both, key=score, reverse=True)[:3]
    assert chosen.tolist() == expected
    assert sorted(select_candidates(s, t, labels, attack_size=32).tolist()) == both


class LinearNet(nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x):
        return x.flatten(1) @ self.weight.t()


def test_one_attack_step_equals_the_hand_formula():
    torch.manual_seed(0)
    weight = randn(4, 6, seed=8)
    teacher = freeze(LinearNet(weight))
    x = randn(3, 6, seed=9).view(3, 6, 1, 1) * 0.3
    z = x.flatten(1) @ weight.t()
    target = z.argmax(1)
    attack = z.sort(1, descending=True).indices[:, 1]
    adv = boundary_attack(teacher, x, target, attack, step_alpha=0.3, num_steps=1, eps=1e-4,
                          clamp=2.5)
    for b in range(3):
        p = torch.softmax(z[b], 0)
        t, a = target[b].item(), attack[b].item()
        # d(p_a - p_t)/dz_j = p_a (1[j=a] - p_j) - p_t (1[j=t] - p_j); g = W^T of that
        dz = torch.tensor([p[a] * (float(j == a) - p[j]) - p[t] * (float(j == t) - p[j])
                           for j in range(4)], dtype=torch.float64)
        g = weight.t() @ dz
        step = 0.3 * (p[t] - p[a] + 1e-4) * g / g.norm()
        expected = (x[b].flatten() + step).clamp(-2.5, 2.5)
        assert torch.allclose(adv[b].flatten(), expected, rtol=0, atol=1e-13)


def test_attack_moves_candidates_towards_the_attack_class_and_leaves_the_teacher_alone():
    torch.manual_seed(0)
    teacher = freeze(kdzoo.create_model("resnet8", num_classes=10))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    images = randn(6, 3, 16, 16, seed=10, dtype=torch.float32)
    original = images.clone()
    with torch.no_grad():
        logits = teacher(images)
    target = logits.argmax(1)
    attack = logits.sort(1, descending=True).indices[:, 1]
    adv = boundary_attack(teacher, images, target, attack, step_alpha=0.3, num_steps=10)
    with torch.no_grad():
        p_before, p_after = logits.softmax(1), teacher(adv).softmax(1)
    rows = torch.arange(6)
    gap_before = p_before[rows, attack] - p_before[rows, target]
    gap_after = p_after[rows, attack] - p_after[rows, target]
    assert (gap_after > gap_before).all()
    assert adv.abs().max() <= 2.5 and not adv.requires_grad
    assert torch.equal(images, original)
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def reference_bss_kl(s, t):
    return kdzoo.functional.boundary_supporting_kl(s, t, 3.0, False)


def bss_setup(batch=8):
    torch.manual_seed(0)
    teacher = freeze(kdzoo.create_model("resnet8", num_classes=10))
    student = kdzoo.create_model("resnet8", num_classes=10).train()
    images = randn(batch, 3, 16, 16, seed=11, dtype=torch.float32)
    with torch.no_grad():
        t_logits = teacher(images)
    return teacher, student, images, t_logits, t_logits.argmax(1)


def test_bss_term_is_the_reference_pipeline():
    teacher, student, images, t_logits, labels = bss_setup()
    method = create_method("bss", context(10, 16, 3), warmup_epochs=0, attack_size=5)
    # the student "agrees" with the teacher on the clean batch: every sample is a candidate
    s_logits = t_logits + 0.1 * randn(*t_logits.shape, seed=12, dtype=torch.float32)
    step = make_step(images, labels, student, teacher, epoch=3, epochs=8, step_index=4)
    running_before = student.bn1.running_mean.clone()
    features = {"student": Features(logits=s_logits), "teacher": Features(logits=t_logits)}
    value = method(features, step)["bss"]
    assert not torch.equal(student.bn1.running_mean, running_before)  # saw the adversarial batch
    assert all(p.grad is None for p in teacher.parameters())

    index = select_candidates(s_logits, t_logits, labels, 5)
    uniform = torch.rand(5, generator=step.generator("bss", "cpu"))
    attack_class = sample_attack_class(t_logits[index], uniform)
    adv = boundary_attack(teacher, images[index], labels[index], attack_class)
    with torch.no_grad():
        expected = bss_epoch_weight(2.0, 3, 8, 0) * reference_bss_kl(student(adv), teacher(adv))
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert student.fc.weight.grad is not None and student.fc.weight.grad.abs().sum() > 0
    # same step, same draws: the term is reproducible (resumed runs repeat it exactly)
    again = method(features, step)["bss"]
    assert again.item() == pytest.approx(value.item(), rel=1e-6)


def test_bss_is_a_zero_scalar_without_lambda_or_candidates():
    teacher, student, images, t_logits, labels = bss_setup()
    method = create_method("bss", context(10, 16, 3))
    features = {"student": Features(logits=t_logits), "teacher": Features(logits=t_logits)}
    warm = make_step(images, labels, student, teacher, epoch=10, epochs=200)
    value = method(features, warm)["bss"]
    assert value.dim() == 0 and value.item() == 0.0
    late = make_step(images, labels, student, teacher, epoch=50, epochs=200)
    wrong = (labels + 1) % 10  # nobody is right: no candidates
    value = method(features, make_step(images, wrong, student, teacher, epoch=50,
                                       epochs=200))["bss"]
    assert value.dim() == 0 and value.item() == 0.0
    assert method(features, late)["bss"].item() > 0


def test_bss_squared_temperature_option_scales_by_t_squared():
    teacher, student, images, t_logits, labels = bss_setup()
    student.eval()  # same outputs for both calls
    step = make_step(images, labels, student, teacher, epoch=20, epochs=100)
    features = {"student": Features(logits=t_logits), "teacher": Features(logits=t_logits)}
    terms = [create_method("bss", context(10, 16, 3), squared_temperature=sq)(
        features, step)["bss"].item() for sq in (False, True)]
    assert terms[1] == pytest.approx(9.0 * terms[0], rel=1e-5)


# -------------------------------------------------------------------------------- Sobolev
class TanhNet(nn.Module):
    """z = W2 tanh(W1 x): the input gradient of z_y is W1^T (W2[y] * (1 - h^2))."""

    def __init__(self, w1, w2):
        super().__init__()
        self.w1, self.w2 = nn.Parameter(w1.clone()), nn.Parameter(w2.clone())

    def forward(self, x):
        return torch.tanh(x.flatten(1) @ self.w1.t()) @ self.w2.t()


def hand_input_grad(w1, w2, x, labels):
    h = torch.tanh(x.flatten(1) @ w1.t())
    return ((w2[labels] * (1 - h ** 2)) @ w1).view_as(x)


def hand_sobolev(gs, gt):
    a = gs.flatten(1) / gs.flatten(1).norm(dim=1, keepdim=True)
    b = gt.flatten(1) / gt.flatten(1).norm(dim=1, keepdim=True)
    return ((a - b) ** 2).mean()


@pytest.mark.parametrize("hidden", [None, 3])
def test_sobolev_matches_hand_input_gradients(hidden):
    images = randn(4, 2, 2, 2, seed=13).requires_grad_()
    labels = torch.tensor([0, 2, 1, 2])
    if hidden is None:  # linear: the input gradient of z_y is the row W[y]
        ws, wt = randn(3, 8, seed=14), randn(3, 8, seed=15)
        student, teacher = LinearNet(ws), freeze(LinearNet(wt))
        hand = lambda w: hand_sobolev(w[labels].view(4, 2, 2, 2), wt[labels].view(4, 2, 2, 2))
        student_weight = student.weight
    else:
        s1, s2 = randn(hidden, 8, seed=16), randn(3, hidden, seed=17)
        t1, t2 = randn(hidden, 8, seed=18), randn(3, hidden, seed=19)
        student, teacher = TanhNet(s1, s2), freeze(TanhNet(t1, t2))
        x = images.detach()
        hand = lambda w: hand_sobolev(hand_input_grad(w, student.w2, x, labels),
                                      hand_input_grad(t1, t2, x, labels))
        student_weight = student.w1
    method = create_method("sobolev", context(3, 2, 2))
    step = make_step(images, labels, student, teacher)
    value = method({"student": Features(logits=student(images)),
                    "teacher": Features(logits=teacher(images))}, step)["sobolev"]
    expected = 20.0 * hand(student_weight)
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    # the second-order path gives the student the gradient of the hand formula
    (grad,) = torch.autograd.grad(value, student_weight)
    (hand_grad,) = torch.autograd.grad(expected, student_weight)
    assert torch.allclose(grad, hand_grad, rtol=1e-10, atol=1e-13)
    assert all(p.grad is None for p in teacher.parameters())


def test_sobolev_refuses_images_without_grad():
    net = LinearNet(randn(3, 8, seed=20))
    images = randn(2, 2, 2, 2)
    method = create_method("sobolev", context(3, 2, 2))
    with pytest.raises(RuntimeError, match="needs_input_grad"):
        method({"student": Features(logits=net(images)), "teacher": Features(logits=net(images))},
               make_step(images, torch.tensor([0, 1])))


# ------------------------------------------------------------------------------------ LwM
class PoolNet(nn.Module):
    """stage2 = relu(conv1x1(x)); logits = fc(mean_hw(stage2)): dz_y/dA_c = W_fc[y, c] / HW."""

    def __init__(self, channels, seed):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Parameter(torch.randn(channels, 2, generator=gen, dtype=torch.float64))
        self.fc = nn.Parameter(torch.randn(3, channels, generator=gen, dtype=torch.float64))

    def forward_features(self, x):
        stage2 = torch.relu(torch.einsum("oc,bchw->bohw", self.conv, x))
        return {"stage2": stage2, "logits": stage2.mean((2, 3)) @ self.fc.t()}


@pytest.mark.parametrize("grad_cam", [False, True])
def test_lwm_matches_hand_maps(grad_cam):
    images = randn(3, 2, 2, 3, seed=21).requires_grad_()
    labels = torch.tensor([2, 0, 1])
    student, teacher = PoolNet(4, 22), freeze(PoolNet(6, 23))  # other widths: no connector
    s, t = student.forward_features(images), teacher.forward_features(images)
    method = create_method("lwm", context(3, 3, 2), grad_cam=grad_cam)
    value = method({"student": features_of(s), "teacher": features_of(t)},
                   make_step(images, labels, student, teacher))["lwm"]

    def cam(net, feats):
        weights = net.fc[labels] / 6  # GAP of the (spatially constant) gradient
        maps = feats["stage2"].detach() if grad_cam else weights[:, :, None, None].expand(
            -1, -1, 2, 3)
        c = torch.relu((weights[:, :, None, None] * maps).sum(1)).flatten(1)
        return c / c.norm(dim=1, keepdim=True).clamp_min(1e-12)

    expected = 0.4 * (cam(student, s) - cam(teacher, t)).abs().mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-12, abs=1e-15)
    if not grad_cam:
        # gradient x gradient after a global pool is constant over H, W: nothing to transfer
        # (the reference README's reason for using stage 2 rather than stage 3)
        assert value.item() == pytest.approx(0.0, abs=1e-15)
    else:
        value.backward()
        assert student.conv.grad.abs().sum() > 0 and student.fc.grad.abs().sum() > 0
        assert teacher.conv.grad is None and teacher.fc.grad is None


# ------------------------------------------------------------------------------------ DML
def dml_config(make_config, **optim):
    return make_config(method={"name": "dml"}, teacher={"name": "resnet8"},
                       optim={"epochs": 2, **optim})


def test_dml_summed_backward_equals_the_reference_two_backwards(make_config, tmp_path):
    parts = build(dml_config(make_config))
    trainer = Trainer(parts, RunDir.prepare(tmp_path / "steps"), progress=False)
    stage = parts.stages[0]
    trainer.begin_epoch(stage, parts.config.optim.lr)  # both networks in training mode
    batch = next(parts.loader.train_batches(0, 1))
    terms, _ = trainer.step_terms(batch, stage, 1, 0)
    assert set(terms) == {"ce", "peer_ce", "dml", "peer_dml"}
    student_params = list(parts.student.parameters())
    peer_params = list(parts.networks["peer"].parameters())
    net1_loss = terms["ce"] + terms["dml"]
    net2_loss = terms["peer_ce"] + terms["peer_dml"]
    total = torch.stack(list(terms.values())).sum()
    both = student_params + peer_params
    summed = torch.autograd.grad(total, both, retain_graph=True)
    net1 = torch.autograd.grad(net1_loss, both, retain_graph=True, allow_unused=True)
    net2 = torch.autograd.grad(net2_loss, both, allow_unused=True)
    n = len(student_params)
    assert all(g is None for g in net1[n:]) and all(g is None for g in net2[:n])
    assert all(torch.equal(a, b) for a, b in zip(summed[:n], net1[:n], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(summed[n:], net2[n:], strict=True))
    # the mutual terms are the KL of each net towards the other
    s, p = terms["dml"], terms["peer_dml"]
    assert s.item() > 0 and p.item() > 0 and s.item() != pytest.approx(p.item())


def test_dml_optimisers_are_two_with_the_same_settings(make_config, tmp_path):
    parts = build(dml_config(make_config))
    trainer = Trainer(parts, RunDir.prepare(tmp_path / "steps"), progress=False)
    main, peer = trainer.stage_optimizers(parts.stages[0])
    assert {id(p) for g in peer.param_groups for p in g["params"]} == \
        {id(p) for p in parts.networks["peer"].parameters()}
    keys = ("lr", "momentum", "weight_decay", "nesterov")
    assert [main.param_groups[0][k] for k in keys] == [peer.param_groups[0][k] for k in keys]


def test_dml_fit_trains_evaluates_and_exports_both_nets(make_config):
    config = dml_config(make_config)
    initial = build(config)
    student0 = {k: v.clone() for k, v in initial.student.state_dict().items()}
    peer0 = {k: v.clone() for k, v in initial.networks["peer"].state_dict().items()}
    # same architecture, different starting weights (else the two nets would stay identical)
    assert not torch.equal(student0["conv1.weight"], peer0["conv1.weight"])
    assert not torch.equal(student0["fc.weight"], peer0["fc.weight"])

    result = fit(config)
    metrics = read_metrics(result.path)
    assert len(metrics) == 2
    for record in metrics:
        for key in ("ce", "peer_ce", "dml", "peer_dml"):
            assert math.isfinite(record["terms"][key]), key
        for scores in (record["test"], record["peers"]["peer"]["test"]):
            assert all(math.isfinite(scores[k]) for k in ("top1", "top5", "loss"))
    assert result.summary["peer_best_top1"] is not None

    peer_file = result.path / "peer.pt"
    assert peer_file.is_file()
    peer = kdzoo.create_model("resnet8", num_classes=10, checkpoint=str(peer_file))
    assert not torch.equal(peer.conv1.weight, peer0["conv1.weight"])  # trained
    assert not torch.equal(result.student.conv1.weight.cpu(), student0["conv1.weight"])
    assert not torch.equal(peer.conv1.weight, result.student.conv1.weight.cpu())
    # peer.pt is the final peer: it reproduces the last epoch's peer evaluation
    last = metrics[-1]
    assert evaluate(peer, initial.loader)["top1"] == pytest.approx(
        last["peers"]["peer"]["test"]["top1"])


# ------------------------------------------------------------------ resume (DML peer, BSS draws)
@pytest.mark.parametrize("method", [{"name": "dml"}, {"name": "bss", "warmup_epochs": 0}])
def test_resume_equals_uninterrupted(make_config, tmp_path, crashed_and_resumed, method):
    settings = dict(method=method, teacher={"name": "resnet8", "untrained": True},
                    optim={"epochs": 3})
    whole = fit(make_config(out=str(tmp_path / "whole"), **settings))
    broken = make_config(out=str(tmp_path / "broken"), **settings)
    resumed = crashed_and_resumed(broken, crash_at=3)
    assert_same_state(whole.student.state_dict(), resumed.student.state_dict())
    if method["name"] == "dml":
        a = torch.load(whole.path / "peer.pt", weights_only=True)["state_dict"]
        b = torch.load(resumed.path / "peer.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    else:
        assert read_metrics(resumed.path)[-1]["terms"]["bss"] > 0  # the attack really ran
        assert read_metrics(resumed.path)[-1]["terms"]["bss"] == \
            read_metrics(whole.path)[-1]["terms"]["bss"]
