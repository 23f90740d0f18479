"""The logit methods kd, dkd, dist, nkd, wsld, rld and sdd: the references' defaults, terms equal
to the functional values, warm-up schedules per epoch, cross-entropy weights, refusals of bad
hyper-parameters, DKD on two classes, and SDD's pyramid on real networks."""
import math

import pytest
import torch
import torch.nn.functional as F

import kdzoo
from kdzoo.spec import method_params
from kdzoo import functional as KF
from kdzoo.data.loader import Batch
from kdzoo.engine import build
from kdzoo.errors import ConfigError
from kdzoo.functional import logit_kd as LK
from kdzoo.methods import (MethodContext, Stage, Step, create_method, get_method_class,
                           method_defaults)
from kdzoo.models import Features

torch.set_num_threads(1)

LOGIT_OPTIONS = {"standardize": False, "ctkd": False}
DEFAULTS = {
    # mdistiller CFG.KD
    "kd": {"ce_weight": 0.1, "weight": 0.9, "temperature": 4.0},
    # mdistiller CFG.DKD (CIFAR-100)
    "dkd": {"ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20},
    # DIST's CIFAR-100 setting: kd dist_t4, ori_loss_weight 1, kd_loss_weight 2
    "dist": {"ce_weight": 1.0, "weight": 2.0, "beta": 1.0, "gamma": 1.0, "temperature": 4.0},
    # cls_KD NKDLoss (variant cls_kd: the corrected mask, no warm-up)
    "nkd": {"variant": "cls_kd", "ce_weight": 1.0, "temperature": 1.0, "gamma": 1.5,
            "warmup": 0, "mask": "non_target"},
    # cls_KD WSLDLoss / the paper's CIFAR-100 setting
    "wsld": {"ce_weight": 1.0, "temperature": 4.0, "alpha": 2.25},
    # zju-SWJ/RLD CFG.RLD with --same-t
    "rld": {"ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "same_t": True,
            "alpha_temperature": 1.0, "warmup": 20},
    # SDD-CVPR2024: SD-DKD with M = [1, 2, 4] on mdistiller's CFG.DKD, --warmup 20
    "sdd": {"base": "dkd", "scales": "1,2,4", "ce_weight": 1.0, "weight": 1.0,
            "temperature": 4.0, "alpha": 1.0, "beta": 8.0, "nkd_mask": "non_target",
            "warmup": 20},
}
METHODS = tuple(DEFAULTS)
LOGIT_ONLY = ("kd", "dkd", "dist", "nkd", "wsld", "rld")


def context(student="resnet8", teacher="resnet8", num_classes=10):
    s = kdzoo.create_model(student, num_classes=num_classes)
    t = kdzoo.create_model(teacher, num_classes=num_classes)
    return MethodContext(infos={"student": s.feature_info, "teacher": t.feature_info},
                         num_classes=num_classes, image_size=16, in_chans=3,
                         train_labels=torch.zeros(8, dtype=torch.long))


def step(labels, epoch=1, student=None, teacher=None, images=None):
    images = torch.zeros(len(labels), 3, 1, 1) if images is None else images
    batch = Batch(images, labels, torch.arange(len(labels)))
    networks = {"student": student, "teacher": teacher} if student is not None else {}
    return Step(batch, Stage("main", 240), epoch, 0, networks=networks)


def logit_features(seed=0, batch=8, classes=10):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, classes, generator=gen) * 3
    t = torch.randn(batch, classes, generator=gen) * 3
    labels = torch.randint(0, classes, (batch,), generator=gen)
    return Features(logits=s), Features(logits=t), labels


def functional_value(name, s, t, y, params):
    p = params
    if name == "kd":
        return p["weight"] * KF.soft_target(s, t, p["temperature"])
    if name == "dkd":
        return LK.decoupled_kd(s, t, y, p["alpha"], p["beta"], p["temperature"])
    if name == "dist":
        return p["weight"] * LK.dist(s, t, p["beta"], p["gamma"], p["temperature"])
    if name == "nkd":
        return LK.normalized_kd(s, t, y, p["temperature"], p["gamma"], p["mask"])
    if name == "wsld":
        return LK.weighted_soft_label_kd(s, t, y, p["temperature"], p["alpha"])
    scd_t = p["temperature"] if p["same_t"] else p["alpha_temperature"]
    return LK.refined_logit_distillation(s, t, y, p["alpha"], p["beta"], p["temperature"],
                                         scd_t)


# ------------------------------------------------------------------------- the defaults
@pytest.mark.parametrize("method", METHODS)
def test_defaults_are_the_references(method):
    assert method_defaults(method) == {**DEFAULTS[method], **LOGIT_OPTIONS}


@pytest.mark.parametrize("method", METHODS)
def test_the_cross_entropy_weight_is_the_references(method):
    m = create_method(method, context())
    (stage,) = m.stages(Stage("main", 240))
    assert stage.ce_weight == DEFAULTS[method]["ce_weight"]
    m = create_method(method, context(), ce_weight=0.5)
    assert m.stages(Stage("main", 240))[0].ce_weight == 0.5


@pytest.mark.parametrize("method", METHODS)
def test_methods_are_documented_with_paper_and_reference(method):
    cls = get_method_class(method)
    assert cls.paper and cls.url.startswith("https://github.com/")
    assert "Reference" in cls.__doc__


# ------------------------------------------------------ terms equal the functional values
@pytest.mark.parametrize("method", LOGIT_ONLY)
@pytest.mark.parametrize("overrides", [{}, {"temperature": 2.0}])
def test_terms_equal_the_functional_values(method, overrides):
    student, teacher, labels = logit_features(1)
    params = {**DEFAULTS[method], **overrides}
    m = create_method(method, context(), **overrides)
    terms = m({"student": student, "teacher": teacher}, step(labels, epoch=100))  # no warm-up
    assert list(terms) == [method]
    expected = functional_value(method, student.logits, teacher.logits, labels, params)
    assert terms[method].item() == pytest.approx(expected.item(), rel=1e-6)
    assert math.isfinite(terms[method].item()) and terms[method].item() > 0


def test_rld_same_t_switch():
    student, teacher, labels = logit_features(2)
    m = create_method("rld", context(), same_t=False, alpha_temperature=2.0)
    term = m({"student": student, "teacher": teacher}, step(labels, epoch=30))["rld"]
    expected = LK.refined_logit_distillation(student.logits, teacher.logits, labels, 1.0, 8.0,
                                             4.0, 2.0)
    assert term.item() == pytest.approx(expected.item(), rel=1e-6)
    same = create_method("rld", context())({"student": student, "teacher": teacher},
                                           step(labels, epoch=30))["rld"]
    assert same.item() != pytest.approx(term.item(), rel=1e-3)


@pytest.mark.parametrize("method", ["dkd", "nkd", "rld"])
def test_standardize_compares_z_scores(method):
    student, teacher, labels = logit_features(3)
    m = create_method(method, context(), standardize=True)
    term = m({"student": student, "teacher": teacher}, step(labels, epoch=100))[method]
    z_s, z_t = KF.standardize_logits(student.logits), KF.standardize_logits(teacher.logits)
    expected = functional_value(method, z_s, z_t, labels, DEFAULTS[method])
    assert term.item() == pytest.approx(expected.item(), rel=1e-6)


# ------------------------------------------------------------------------- warm-up schedules
@pytest.mark.parametrize("method", ["dkd", "rld"])
def test_warmup_is_linear_over_the_first_20_epochs(method):
    student, teacher, labels = logit_features(4)
    m = create_method(method, context())
    full = functional_value(method, student.logits, teacher.logits, labels, DEFAULTS[method])
    for epoch in range(1, 26):
        term = m({"student": student, "teacher": teacher}, step(labels, epoch=epoch))[method]
        assert term.item() == pytest.approx(min(epoch / 20, 1.0) * full.item(), rel=1e-6), epoch
    m = create_method(method, context(), warmup=5)
    features = {"student": student, "teacher": teacher}
    assert m(features, step(labels, epoch=2))[method].item() == pytest.approx(
        0.4 * full.item(), rel=1e-6)
    m = create_method(method, context(), warmup=0)  # kdzoo: no warm-up
    assert m(features, step(labels, epoch=1))[method].item() == pytest.approx(
        full.item(), rel=1e-6)


@pytest.mark.parametrize("method", ["kd", "dist", "nkd", "wsld"])
def test_methods_without_warmup_are_full_from_the_first_epoch(method):
    student, teacher, labels = logit_features(5)
    m = create_method(method, context())
    first = m({"student": student, "teacher": teacher}, step(labels, epoch=1))[method]
    later = m({"student": student, "teacher": teacher}, step(labels, epoch=200))[method]
    assert first.item() == later.item()


def test_nkd_variants_are_the_authors_and_sdds_protocols():
    """variant "cls_kd": yzd-v/cls_KD@1e5d48f NKDLoss (temp 1, gamma 1.5, corrected mask, no
    warm-up), and its CIFAR-100 config (temp 3, gamma 3.5) as a recipe; variant "sdd":
    shicaiwei123/SDD-CVPR2024@e412036 mdistiller/distillers/nkd.py (temp 1, gamma 1.5, warm-up
    cfg.DKD.WARMUP 20, the target class kept in the normalized softmax)."""
    sdd = method_params("nkd", {"variant": "sdd"})
    assert (sdd.temperature, sdd.gamma, sdd.warmup, sdd.mask, sdd.ce_weight) == (
        1.0, 1.5, 20, "all", 1.0)
    assert method_params("nkd", {"variant": "sdd", "mask": "non_target"}).mask == "non_target"
    student, teacher, labels = logit_features(6)
    features = {"student": student, "teacher": teacher}
    m = create_method("nkd", context(), variant="sdd")
    full = LK.normalized_kd(student.logits, teacher.logits, labels, 1.0, 1.5, mask="all")
    for epoch in (1, 5, 20, 21, 200):
        assert m(features, step(labels, epoch=epoch))["nkd"].item() == pytest.approx(
            min(epoch / 20, 1.0) * full.item(), rel=1e-6), epoch
    default = create_method("nkd", context())(features, step(labels, epoch=1))["nkd"]
    assert default.item() == pytest.approx(
        LK.normalized_kd(student.logits, teacher.logits, labels, 1.0, 1.5).item(), rel=1e-6)
    assert default.item() != pytest.approx(full.item(), rel=1e-3)
    from kdzoo.spec import resolve_config
    base = {"preset": "repdistiller", "teacher": {"name": "resnet32x4", "untrained": True},
            "student": {"name": "resnet8x4"}, "data": {"name": "cifar100"}}
    cifar = resolve_config(overrides={**base, "method": {"name": "nkd"}}).method.params
    assert (cifar.temperature, cifar.gamma, cifar.mask, cifar.warmup) == (3.0, 3.5,
                                                                          "non_target", 0)
    rerun = resolve_config(overrides={**base, "method": {"name": "nkd", "variant": "sdd"}})
    assert (rerun.method.params.temperature, rerun.method.params.gamma) == (1.0, 1.5)


# ------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("method,values,message", [
    ("kd", {"temperature": 0.0}, "method kd: temperature must be positive, got 0.0"),
    ("kd", {"weight": -1.0}, "method kd: weight must be non-negative, got -1.0"),
    ("dkd", {"warmup": -1}, "method dkd: warmup must be a number of epochs >= 0"),
    ("dkd", {"beta": -8.0}, "method dkd: beta must be non-negative, got -8.0"),
    ("dist", {"temperature": -4.0}, "method dist: temperature must be positive, got -4.0"),
    ("nkd", {"gamma": -1.5}, "method nkd: gamma must be non-negative, got -1.5"),
    ("wsld", {"alpha": -2.0}, "method wsld: alpha must be non-negative, got -2.0"),
    ("rld", {"alpha_temperature": 0.0},
     "method rld: alpha_temperature must be positive, got 0.0"),
    ("sdd", {"base": "mse"}, "method sdd hyper-parameter 'base' must be one of kd, dkd, nkd"),
    ("sdd", {"scales": "1,2,3"},
     "method sdd hyper-parameter 'scales' must be one of 1, 1,2, 1,2,4"),
    ("sdd", {"warmup": -2}, "method sdd: warmup must be a number of epochs >= 0"),
])
def test_bad_values_are_refused_in_one_line(method, values, message):
    with pytest.raises(ConfigError) as caught:
        method_params(method, values).to_dict()
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------- two classes
def test_dkd_on_two_classes_is_finite_and_its_nckd_is_zero():
    """mdistiller issue #60: with two classes NCKD has a single non-target class."""
    student, teacher, labels = logit_features(6, batch=8, classes=2)
    student.logits.requires_grad_()
    m = create_method("dkd", context(num_classes=2), alpha=0.0)
    nckd = m({"student": student, "teacher": teacher}, step(labels, epoch=30))["dkd"]
    assert nckd.item() == 0.0
    m = create_method("dkd", context(num_classes=2))
    term = m({"student": student, "teacher": teacher}, step(labels, epoch=30))["dkd"]
    term.backward()
    assert math.isfinite(term.item()) and torch.isfinite(student.logits.grad).all()
    assert term.item() == pytest.approx(
        KF.soft_target(student.logits.detach(), teacher.logits, 4.0).item(), rel=1e-5)
    # a confident student does not make the loss infinite
    confident = Features(logits=torch.tensor([[300.0, -300.0], [-300.0, 300.0]]))
    opposite = Features(logits=torch.tensor([[-1.0, 1.0], [1.0, -1.0]]))
    value = m({"student": confident, "teacher": opposite},
              step(torch.tensor([1, 0]), epoch=30))["dkd"]
    assert math.isfinite(value.item())


@pytest.mark.parametrize("method", ["nkd", "rld", "wsld", "dist", "kd"])
def test_two_classes_work(method):
    student, teacher, labels = logit_features(7, batch=8, classes=2)
    term = create_method(method, context(num_classes=2))({"student": student, "teacher": teacher},
                                                          step(labels, epoch=30))[method]
    assert math.isfinite(term.item())


# -------------------------------------------------------------------------------- SDD
def sdd_setup(student_name="resnet8", teacher_name="resnet8x4", seed=0, batch=6, size=16):
    torch.manual_seed(seed)
    student = kdzoo.create_model(student_name, num_classes=10)
    teacher = kdzoo.create_model(teacher_name, num_classes=10).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 10, (batch,))
    s_feats = student.features(images)
    with torch.no_grad():
        t_feats = teacher.features(images)
    ctx = context(student_name, teacher_name)
    return ctx, student, teacher, images, labels, {"student": s_feats, "teacher": t_feats}


def hand_regions(feature_map, fc, scales):
    """The reference SPP + classifier: 4x4 adaptive average pool, then each scale from it."""
    grid = F.adaptive_avg_pool2d(feature_map, (4, 4))
    pooled = [F.adaptive_avg_pool2d(grid, (s, s)).flatten(2) for s in scales]
    x = torch.cat(pooled, dim=2)                       # B x C x N
    b, c, n = x.shape
    scores = fc(x.permute(2, 0, 1).reshape(n * b, c))  # as ResNet_SDD.forward
    return scores.reshape(n, b, -1).permute(1, 0, 2)   # B x N x K


def test_sdd_asks_for_the_pre_pool_map():
    m = create_method("sdd", context())
    assert m.requests["student"].pre_pool and m.requests["teacher"].pre_pool
    assert not type(m).can_use_teacher_cache()


@pytest.mark.parametrize("base", ["kd", "dkd", "nkd"])
@pytest.mark.parametrize("scales", [("1,2,4", (1, 2, 4)), ("1,2", (1, 2))])
def test_sdd_term_is_the_functional_on_the_pyramid_logits(base, scales):
    ctx, student, teacher, images, labels, feats = sdd_setup()
    name, sizes = scales
    m = create_method("sdd", ctx, base=base, scales=name)
    p = m.params
    term = m(feats, step(labels, epoch=100, student=student, teacher=teacher))["sdd"]
    s_feats, t_feats = feats["student"], feats["teacher"]
    s_regions = hand_regions(s_feats.pre_pool, student.fc, sizes)
    t_regions = hand_regions(t_feats.pre_pool, teacher.fc, sizes)
    assert s_regions.shape == (6, sum(s * s for s in sizes), 10)
    expected = p.weight * LK.scale_decoupled_kd(s_regions, t_regions, labels, base,
                                                p.temperature, p.alpha, p.beta)
    assert term.item() == pytest.approx(expected.item(), rel=1e-5)
    # the global region's logits are the networks' own logits
    assert torch.allclose(s_regions[:, 0], s_feats.logits, atol=1e-5)
    assert torch.allclose(t_regions[:, 0], t_feats.logits, atol=1e-5)


@pytest.mark.parametrize("base,ce_weight,weight,warmup", [("kd", 0.1, 0.9, 0),
                                                          ("dkd", 1.0, 1.0, 20),
                                                          ("nkd", 1.0, 1.0, 20)])
def test_sdd_per_base_defaults_and_warmup(base, ce_weight, weight, warmup):
    assert method_params("sdd", {"base": base}).to_dict() == {
        **DEFAULTS["sdd"], "base": base, "ce_weight": ce_weight, "weight": weight,
        "warmup": warmup, **LOGIT_OPTIONS}
    assert method_params("sdd", {"base": base, "weight": 3.0}).to_dict()["weight"] == 3.0
    ctx, student, teacher, images, labels, feats = sdd_setup(seed=1)
    m = create_method("sdd", ctx, base=base)
    assert m.stages(Stage("main", 240))[0].ce_weight == ce_weight
    with torch.no_grad():
        values = [m(feats, step(labels, epoch, student, teacher))["sdd"].item()
                  for epoch in range(1, 26)]
    full = values[-1]
    for epoch, value in enumerate(values, start=1):
        factor = 1.0 if warmup == 0 else min(epoch / warmup, 1.0)
        assert value == pytest.approx(factor * full, rel=1e-5), epoch


def test_sdd_nkd_mask_and_the_authors_per_pair_recipes():
    """nkd_mask="all" is SDD_nkd.py's mask (the published SD-NKD numbers); the recipes give
    the pair configs' DKD.BETA and the run scripts' --M [1,2]
    (shicaiwei123/SDD-CVPR2024@e412036)."""
    ctx, student, teacher, images, labels, feats = sdd_setup(seed=3)
    one = step(labels, epoch=100, student=student, teacher=teacher)
    mask_all = create_method("sdd", ctx, base="nkd", scales="1", nkd_mask="all")(feats, one)
    s, t = feats["student"].logits, feats["teacher"].logits
    expected = LK.normalized_kd(s, t, labels, 4.0, 8.0, mask="all")
    assert mask_all["sdd"].item() == pytest.approx(expected.item(), rel=1e-5)
    from kdzoo.spec import resolve_config

    def resolved(teacher_name, student_name, **method):
        return resolve_config(overrides={
            "preset": "repdistiller", "method": {"name": "sdd", **method},
            "teacher": {"name": teacher_name, "untrained": True},
            "student": {"name": student_name}, "data": {"name": "cifar100"}}).method.params

    assert resolved("vgg13", "MobileNetV2", base="dkd").beta == 6.0
    assert resolved("vgg13", "MobileNetV2", base="nkd").beta == 6.0
    assert resolved("vgg13", "MobileNetV2", base="nkd").scales == "1,2,4"
    assert resolved("resnet56", "resnet20").beta == 2.0
    assert resolved("wrn_40_2", "ShuffleV1", base="dkd").beta == 8.0
    assert resolved("ResNet50", "vgg8", base="nkd").scales == "1,2"
    assert resolved("ResNet50", "vgg8", base="dkd").scales == "1,2,4"
    assert resolved("resnet32x4", "resnet8x4", base="kd").scales == "1,2"
    assert resolved("resnet32x4", "resnet8x4").scales == "1,2,4"  # no SD-DKD run in the scripts
    assert resolved("vgg13", "vgg8").scales == "1,2"


@pytest.mark.parametrize("base", ["kd", "dkd", "nkd"])
def test_sdd_with_one_scale_is_the_base_method_on_the_logits(base):
    ctx, student, teacher, images, labels, feats = sdd_setup(seed=2)
    m = create_method("sdd", ctx, base=base, scales="1")
    term = m(feats, step(labels, epoch=100, student=student, teacher=teacher))["sdd"]
    s, t = feats["student"].logits, feats["teacher"].logits
    expected = {"kd": lambda: 0.9 * KF.soft_target(s, t, 4.0),
                "dkd": lambda: LK.decoupled_kd(s, t, labels, 1.0, 8.0, 4.0),
                "nkd": lambda: LK.normalized_kd(s, t, labels, 4.0, 8.0)}[base]()
    assert term.item() == pytest.approx(expected.item(), rel=1e-5)


def test_sdd_gradients_reach_the_student_and_its_classifier_only():
    ctx, student, teacher, images, labels, feats = sdd_setup(seed=3)
    m = create_method("sdd", ctx)
    term = m(feats, step(labels, epoch=100, student=student, teacher=teacher))["sdd"]
    term.backward()
    assert student.fc.weight.grad is not None and student.fc.weight.grad.abs().sum() > 0
    assert student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_sdd_works_across_families_and_map_sizes():
    # wrn_40_2 (8x8 map at 32 px) teaches ShuffleV1 (4x4): both pooled to the same 4x4 grid
    ctx, student, teacher, images, labels, feats = sdd_setup(
        "ShuffleV1", "wrn_40_2", seed=4, batch=4, size=32)
    m = create_method("sdd", ctx)
    term = m(feats, step(labels, epoch=100, student=student, teacher=teacher))["sdd"]
    assert math.isfinite(term.item()) and term.item() > 0
    s_regions, _ = m.region_logits(feats, step(labels, 1, student, teacher))
    assert s_regions.shape == (4, 21, 10)


def test_sdd_refuses_a_network_without_a_pre_pool_map(make_config):
    config = make_config(method={"name": "sdd"},
                         teacher={"name": "torchvision/resnet18", "untrained": True},
                         student={"name": "resnet8x4"},
                         data={"name": "synthetic", "train_size": 32, "test_size": 16,
                               "image_size": 16},
                         optim={"epochs": 1, "batch_size": 16})
    with pytest.raises(ConfigError) as caught:
        build(config)
    assert str(caught.value) == (
        "method sdd needs the map that its global pooling averages of the teacher, which "
        "torchvision/resnet18 does not provide; choose another teacher or method")
