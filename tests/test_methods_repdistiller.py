"""``variant="repdistiller"`` of crd, fitnet, at, nst, sp and pkt: RepDistiller's values where they
differ from the reference zoo's, the stages it uses, and its loss formulas, checked in float64
against independent computations written as RepDistiller's distiller_zoo/*.py, helper/loops.py
and crd/*.py compute them on its feature list [stem, stage 1, ..., stage K, pooled feature];
and what happens on networks with fewer or other numbers of stages."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdzoo
from kdzoo.spec import method_params
from kdzoo.data.loader import Batch
from kdzoo.errors import ConfigError
from kdzoo.methods import (MethodContext, Stage, Step, create_method, method_defaults)
from kdzoo.models.features import FeatureInfo, Features, StageInfo, select

METHODS = ("crd", "fitnet", "at", "nst", "sp", "pkt")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def pair(teacher="resnet8x4", student="resnet8", batch=6, image=16):
    """Both networks in float64, one batch through them, RepDistiller's feature lists."""
    torch.manual_seed(0)
    s_net = kdzoo.create_model(student, num_classes=10).double()
    t_net = kdzoo.create_model(teacher, num_classes=10).double().eval()
    images = torch.randn(batch, 3, image, image, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1))
    s_raw = s_net.forward_features(images)
    with torch.no_grad():
        t_raw = t_net.forward_features(images)
    ctx = MethodContext({"student": s_net.feature_info, "teacher": t_net.feature_info}, 10,
                        image, 3, torch.arange(40) % 10)
    return ctx, s_raw, t_raw


def feats(raw):
    """RepDistiller's ``feat`` list (``is_feat=True``, ``preact=False``)."""
    return [raw["stem"], *raw["stages"], raw["pool"]]


def step(batch=6):
    return Step(Batch(torch.zeros(batch, 3, 2, 2), torch.zeros(batch, dtype=torch.long),
                      torch.arange(batch)), Stage("main", 1), 1, 0)


def run(name, ctx, s_raw, t_raw, **params):
    method = create_method(name, ctx, **params).double()
    student = select(s_raw, method.requests["student"])
    teacher = select(t_raw, method.requests["teacher"])
    return method, method({"student": student, "teacher": teacher},
                          step(s_raw["logits"].shape[0]))


# ----------------------------------------- RepDistiller's code, written out independently
def rep_match(f_s, f_t):
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        return F.adaptive_avg_pool2d(f_s, (t_h, t_h)), f_t
    if s_h < t_h:
        return f_s, F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t


def rep_at_loss(f_s, f_t, p=2):
    f_s, f_t = rep_match(f_s, f_t)

    def at(f):
        q = (f ** p).sum(dim=1).flatten(1) / f.shape[1]
        return q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)

    return ((at(f_s) - at(f_t)) ** 2).mean()


def rep_nst_loss(f_s, f_t):
    f_s, f_t = rep_match(f_s, f_t)
    f_s = F.normalize(f_s.reshape(f_s.shape[0], f_s.shape[1], -1), dim=2)
    f_t = F.normalize(f_t.reshape(f_t.shape[0], f_t.shape[1], -1), dim=2)

    def poly(a, b):
        return (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2)

    return poly(f_t, f_t).mean().detach() + poly(f_s, f_s).mean() - 2 * poly(f_s, f_t).mean()


def rep_sp_loss(f_s, f_t):
    bsz = f_s.shape[0]
    g_s = f_s.reshape(bsz, -1) @ f_s.reshape(bsz, -1).t()
    g_t = f_t.reshape(bsz, -1) @ f_t.reshape(bsz, -1).t()
    g_s = g_s / g_s.norm(dim=1, keepdim=True).clamp_min(1e-12)
    g_t = g_t / g_t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return ((g_t - g_s) ** 2).sum() / (bsz * bsz)


def rep_pkt_loss(out, target, eps=1e-7):
    out = out / (out.pow(2).sum(1, keepdim=True).sqrt() + eps)
    target = target / (target.pow(2).sum(1, keepdim=True).sqrt() + eps)
    sim_s = (out @ out.t() + 1) / 2
    sim_t = (target @ target.t() + 1) / 2
    sim_s = sim_s / sim_s.sum(1, keepdim=True)
    sim_t = sim_t / sim_t.sum(1, keepdim=True)
    return (sim_t * torch.log((sim_t + eps) / (sim_s + eps))).mean()


def rep_conv_reg(regressor, x):
    """ConvReg's forward with its parameters: conv, train-mode BatchNorm, ReLU."""
    conv = regressor.conv
    if isinstance(conv, nn.ConvTranspose2d):
        y = F.conv_transpose2d(x, conv.weight, conv.bias, stride=2, padding=1)
    else:
        y = F.conv2d(x, conv.weight, conv.bias, stride=conv.stride, padding=conv.padding)
    bn = regressor.bn
    return F.relu(F.batch_norm(y, None, None, bn.weight, bn.bias, training=True, eps=bn.eps))


# --------------------------------------------------------------- values and the default
@pytest.mark.parametrize("name,values", [
    ("crd", {"weight": 0.8, "nce_t": 0.07, "feat_dim": 128, "nce_k": 16384, "nce_mom": 0.5,
             "mode": "exact"}),
    ("fitnet", {"weight": 100.0}), ("at", {"weight": 1000.0, "p": 2.0}),
    ("nst", {"weight": 50.0}), ("sp", {"weight": 3000.0}), ("pkt", {"weight": 30000.0})])
def test_repdistiller_values_are_given_when_unset(name, values):
    assert method_defaults(name)["variant"] == "reference"
    effective = method_params(name, {"variant": "repdistiller"}).to_dict()
    assert effective == {**values, "variant": "repdistiller"}
    assert method_params(name, {"variant": "repdistiller", "weight": 2.5}).weight == 2.5
    reference = method_params(name, {}).to_dict()
    assert reference == {**method_defaults(name)}  # the reference defaults are untouched


@pytest.mark.parametrize("name", METHODS)
def test_reference_variant_is_the_unchanged_default(name):
    ctx, s_raw, t_raw = pair(teacher="resnet8x4", student="resnet8")
    torch.manual_seed(3)
    default, default_terms = run(name, ctx, s_raw, t_raw)
    torch.manual_seed(3)
    explicit, explicit_terms = run(name, ctx, s_raw, t_raw, variant="reference")
    assert default.requests == explicit.requests
    assert list(default.state_dict()) == list(explicit.state_dict())
    assert {k: v.item() for k, v in default_terms.items()} == \
        {k: v.item() for k, v in explicit_terms.items()}


# ------------------------------------------------------------------- stages and formulas
@pytest.mark.parametrize("teacher,student", [("resnet8x4", "resnet8"), ("vgg13", "vgg8")])
def test_at_sums_all_stages_with_repdistillers_attention(teacher, student):
    ctx, s_raw, t_raw = pair(teacher, student)
    method, terms = run("at", ctx, s_raw, t_raw, variant="repdistiller")
    depth = len(ctx.infos["student"].stages)
    assert method.requests["student"].positions == tuple(range(-depth, 0))
    g_s, g_t = feats(s_raw)[1:-1], feats(t_raw)[1:-1]
    expected = 1000 * sum(rep_at_loss(a, b) for a, b in zip(g_s, g_t, strict=True))
    assert terms["at"].item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("teacher,student", [("resnet8x4", "resnet8"), ("wrn_40_2", "ShuffleV1")])
def test_nst_sums_all_stages(teacher, student):
    ctx, s_raw, t_raw = pair(teacher, student)
    method, terms = run("nst", ctx, s_raw, t_raw, variant="repdistiller")
    assert method.requests["teacher"].positions == (-3, -2, -1)
    g_s, g_t = feats(s_raw)[1:-1], feats(t_raw)[1:-1]
    expected = 50 * sum(rep_nst_loss(a, b) for a, b in zip(g_s, g_t, strict=True))
    assert terms["nst"].item() == pytest.approx(expected.item(), rel=1e-10)


def test_sp_uses_the_last_stage_only():
    ctx, s_raw, t_raw = pair()
    method, terms = run("sp", ctx, s_raw, t_raw, variant="repdistiller")
    assert method.requests["student"].positions == (-1,)
    expected = 3000 * rep_sp_loss(feats(s_raw)[-2], feats(t_raw)[-2])
    assert terms["sp"].item() == pytest.approx(expected.item(), rel=1e-10)


def test_pkt_uses_the_pooled_feature_and_repdistillers_eps():
    ctx, s_raw, t_raw = pair()
    _, terms = run("pkt", ctx, s_raw, t_raw, variant="repdistiller")
    expected = 30000 * rep_pkt_loss(feats(s_raw)[-1], feats(t_raw)[-1])
    assert terms["pkt"].item() == pytest.approx(expected.item(), rel=1e-10)
    # and the eps is what differs from the reference's formula at the same weight
    _, reference = run("pkt", ctx, s_raw, t_raw, weight=30000.0)
    assert reference["pkt"].item() != pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("teacher,student,conv", [
    ("resnet8x4", "resnet8", nn.Conv2d),              # 32@8x8 -> 128@8x8: 1x1 conv
    ("wrn_40_2", "ShuffleV1", nn.ConvTranspose2d),    # 480@4x4 -> 64@8x8: transposed conv
    ("vgg13", "MobileNetV2", nn.Conv2d),              # four stages each: their second
])
def test_fitnet_hints_at_feat_2_through_convreg(teacher, student, conv):
    ctx, s_raw, t_raw = pair(teacher, student)
    method, terms = run("fitnet", ctx, s_raw, t_raw, variant="repdistiller")
    f_s, f_t = feats(s_raw)[2], feats(t_raw)[2]  # --hint_layer 2
    assert isinstance(method.regressor.conv, conv)
    assert method.regressor.conv.bias is not None and not hasattr(method, "connectors")
    expected = 100 * F.mse_loss(rep_conv_reg(method.regressor, f_s), f_t)
    assert terms["fitnet"].item() == pytest.approx(expected.item(), rel=1e-10)
    terms["fitnet"].backward()
    assert all(p.grad is not None for p in method.regressor.parameters())


def test_fitnet_counts_the_hint_layer_from_the_start_in_each_network():
    ctx, _, _ = pair(teacher="vgg8", student="resnet8")  # four stages vs three
    method = create_method("fitnet", ctx, variant="repdistiller")
    assert method.requests["teacher"].positions == (-3,)  # vgg8's second stage (256 channels)
    assert method.requests["student"].positions == (-2,)  # resnet8's second stage (32)
    assert method.regressor.conv.in_channels == 32 and method.regressor.conv.out_channels == 256


def test_fitnet_refuses_single_stage_networks_in_one_line():
    stage = StageInfo(8, 1)
    one = FeatureInfo(stages=(stage,), pool=8, logits=10, stem=stage)
    two = FeatureInfo(stages=(stage, stage), pool=8, logits=10, stem=stage)
    ctx = MethodContext({"student": one, "teacher": two}, 10, 16, 3, torch.arange(8) % 2)
    with pytest.raises(ConfigError) as caught:
        create_method("fitnet", ctx, variant="repdistiller")
    assert str(caught.value) == ("method fitnet with variant=repdistiller hints at RepDistiller's "
                                 "feat[2], the second stage, and the student has 1 stage; use "
                                 "variant=reference")
    create_method("fitnet", ctx)  # the reference variant's last stage is there


def test_other_stage_counts_pair_as_many_stages_as_both_have():
    ctx, s_raw, t_raw = pair(teacher="vgg8", student="resnet8")  # four stages vs three
    for name in ("at", "nst"):
        method, terms = run(name, ctx, s_raw, t_raw, variant="repdistiller")
        assert method.requests["teacher"].positions == (-3, -2, -1)  # aligned from the end
        assert torch.isfinite(terms[name])
    stage = StageInfo(8, 1)
    one = FeatureInfo(stages=(stage,), pool=8, logits=10, stem=stage)
    ctx = MethodContext({"student": one, "teacher": one}, 10, 16, 3, torch.arange(8) % 2)
    for name in ("at", "nst", "sp"):
        method = create_method(name, ctx, variant="repdistiller")
        assert method.requests["student"].positions == (-1,)


# ---------------------------------------------------------------------------------- CRD
def test_crd_first_step_is_repdistillers_loss_at_its_temperature():
    labels = torch.arange(40) % 4
    s_info = FeatureInfo(stages=(StageInfo(6, 1),), pool=6, logits=4)
    t_info = FeatureInfo(stages=(StageInfo(10, 1),), pool=10, logits=4)
    ctx = MethodContext({"student": s_info, "teacher": t_info}, 4, 8, 3, labels)
    torch.manual_seed(0)
    method = create_method("crd", ctx, variant="repdistiller", nce_k=7).double()
    assert (method.params.weight, method.nce_t) == (0.8, 0.07)
    gen = torch.Generator().manual_seed(2)
    pool_s = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    pool_t = torch.randn(5, 10, generator=gen, dtype=torch.float64)
    indices = torch.tensor([3, 17, 22, 8, 39])
    the_step = Step(Batch(torch.zeros(5, 3, 2, 2), labels[indices], indices), Stage("main", 1),
                    1, 0)
    memory_s, memory_t = method.memory_s.clone(), method.memory_t.clone()
    sample = method.sample_indices(indices, the_step.generator("crd", "cpu"))
    student = Features(logits=torch.zeros(5, 4), pool=pool_s)
    teacher = Features(logits=torch.zeros(5, 4), pool=pool_t)
    loss = method({"student": student, "teacher": teacher}, the_step)["crd"]

    def embed(linear, x):
        y = x @ linear.weight.t() + linear.bias
        return y / y.pow(2).sum(1, keepdim=True).pow(0.5)  # RepDistiller's Normalize

    v1, v2 = embed(method.embed_s.linear, pool_s), embed(method.embed_t.linear, pool_t)
    out_v2 = torch.exp(torch.bmm(memory_s[sample], v2.unsqueeze(2)).squeeze(2) / 0.07)
    out_v1 = torch.exp(torch.bmm(memory_t[sample], v1.unsqueeze(2)).squeeze(2) / 0.07)
    out_v1, out_v2 = out_v1 / (out_v1.mean() * 40), out_v2 / (out_v2.mean() * 40)

    def contrast(x):
        m, noise = x.shape[1] - 1, (x.shape[1] - 1) / 40
        log_d1 = torch.log(x[:, 0] / (x[:, 0] + noise + 1e-7))
        log_d0 = torch.log(noise / (x[:, 1:] + noise + 1e-7))
        assert m == 7
        return -(log_d1.sum() + log_d0.sum()) / x.shape[0]

    expected = 0.8 * (contrast(out_v1) + contrast(out_v2))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)


# ------------------------------------------------- kdzoo.functional.repdistiller itself
def loop_attention_transfer(f_s, f_t):
    """RepDistiller's at_loss for maps of one size, with Python loops over floats (p = 2)."""
    def at(x):
        B, C, H, W = len(x), len(x[0]), len(x[0][0]), len(x[0][0][0])
        maps = []
        for b in range(B):
            q = [sum(x[b][c][h][w] ** 2 for c in range(C)) / C for h in range(H)
                 for w in range(W)]
            norm = max(sum(v * v for v in q) ** 0.5, 1e-12)
            maps.append([v / norm for v in q])
        return maps

    a_s, a_t = at(f_s.tolist()), at(f_t.tolist())
    diffs = [(u - v) ** 2 for ms, mt in zip(a_s, a_t, strict=True)
             for u, v in zip(ms, mt, strict=True)]
    return sum(diffs) / len(diffs)


def test_repdistiller_functionals_float64_gradcheck_float32():
    from kdzoo.functional import repdistiller as KR

    gen = torch.Generator().manual_seed(4)
    f_s = torch.randn(3, 4, 6, 6, generator=gen, dtype=torch.float64)
    f_t = torch.randn(3, 5, 3, 3, generator=gen, dtype=torch.float64)
    # the taller map is pooled to the other's height by 2x2 block means
    pooled, same = KR.repdistiller_match_size(f_s, f_t)
    assert same is f_t
    blocks = f_s.reshape(3, 4, 3, 2, 3, 2).mean(dim=(3, 5))
    assert torch.allclose(pooled, blocks, atol=1e-14)
    assert KR.repdistiller_match_size(f_t, f_s)[1].shape == (3, 4, 3, 3)
    loss = KR.repdistiller_attention_transfer(f_s, f_t)
    assert loss.item() == pytest.approx(loop_attention_transfer(blocks, f_t), rel=1e-11)
    # p = 3 on post-ReLU maps: the channel mean of x^3
    pos_s = f_s.relu()
    q = (pos_s ** 3).mean(dim=1).flatten(1)
    assert torch.allclose(KR.repdistiller_attention_map(pos_s, 3.0),
                          q / q.norm(dim=1, keepdim=True), atol=1e-14)
    a = f_s.clone().requires_grad_()
    b = f_t.clone().requires_grad_()
    assert torch.autograd.gradcheck(KR.repdistiller_attention_transfer, (a, b))
    assert torch.autograd.gradcheck(lambda x, y: KR.repdistiller_match_size(x, y)[0], (a, b))
    assert torch.autograd.gradcheck(KR.repdistiller_attention_map, (a,))
    r32 = KR.repdistiller_attention_transfer(f_s.float(), f_t.float())
    assert r32.dtype == torch.float32 and r32.item() == pytest.approx(loss.item(), rel=1e-5)
    assert torch.allclose(KR.repdistiller_attention_map(pos_s.float(), 3.0).double(),
                          KR.repdistiller_attention_map(pos_s, 3.0), atol=1e-6)
