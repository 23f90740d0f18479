"""reviewkd, kdsvd, ickd, srd and simkd: the references' defaults, the terms against the
functionals (and the references' formulas), ReviewKD's warm-up per epoch, its fusion modules
sized from metadata as the references hard-code them, and SimKD's deployed student (evaluated,
counted, exported and loaded)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdzoo
from kdzoo.engine import RunDir, Trainer, build, read_metrics, read_summary
from kdzoo.metrics import evaluate
from kdzoo.errors import CheckpointError, ConfigError, KdzooError
from kdzoo.functional import match_spatial_size
from kdzoo.functional.feature_kd import (hierarchical_context_loss, inter_channel_correlation,
                                         kdsvd)
from kdzoo.methods import MethodContext, Stage, Step, create_method, method_defaults
from kdzoo.methods import reviewkd as reviewkd_module
from kdzoo.methods.reviewkd import abf_channels, warmup_factor
from kdzoo.methods.simkd import SimKDStudent, load_simkd_student
from kdzoo.models import FeatureInfo, Features, StageInfo, count_parameters, export_model
from kdzoo.models.features import check_request, feature_shapes


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def networks(teacher, student, num_classes=10):
    torch.manual_seed(0)
    return (kdzoo.create_model(teacher, num_classes=num_classes),
            kdzoo.create_model(student, num_classes=num_classes))


def context(t, s, image_size=16):
    return MethodContext(infos={"student": s.feature_info, "teacher": t.feature_info},
                         num_classes=t.num_classes, image_size=image_size, in_chans=3,
                         train_labels=torch.zeros(8, dtype=torch.long))


def features(t, s, image_size=16, batch=4, seed=0):
    """Real features of both networks on random images (the teacher's without autograd, in
    eval mode, as the engine runs it)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, image_size, image_size, generator=gen)
    t.eval()
    with torch.no_grad():
        teacher = Features.from_raw(t.forward_features(images))
    return Features.from_raw(s.forward_features(images)), teacher, images


def step(t, s, epoch=1):
    return Step(batch=None, stage=Stage("main", 240), epoch=epoch, step=0,
                networks={"student": s, "teacher": t})


# ------------------------------------------------------------------------------- defaults
@pytest.mark.parametrize("method,expected,ce", [
    # mdistiller cfg.py REVIEWKD (weight 1.0; configs/cifar100/reviewkd.yaml uses 5.0)
    ("reviewkd", {"weight": 1.0, "warmup_epochs": 20, "ce_weight": 1.0, "max_mid_channel": 512,
                  "student_preact": False}, 1.0),
    ("kdsvd", {"variant": "mdistiller", "k": 1, "weight": 1.0, "ce_weight": 1.0}, 1.0),  # cfg.py
    ("ickd", {"weight": 2.5, "ce_weight": 1.0}, 1.0),                  # ICKD README -a 0 -b 2.5
    ("srd", {"weight": 1.0, "feature_weight": 1.0, "ce_weight": 1.0}, 1.0),  # run_kd_*.sh -b 1
    ("simkd", {"factor": 2, "weight": 1.0, "ce_weight": 0.0}, 0.0),    # run_distill.sh -c 0 -b 1
])
def test_reference_defaults(method, expected, ce):
    assert method_defaults(method) == expected
    t, s = networks("resnet8", "resnet8")
    stages = create_method(method, context(t, s)).stages(Stage("main", 240))
    assert [(st.name, st.epochs, st.ce_weight, st.method_weight) for st in stages] == [
        ("main", 240, ce, 1.0)]


@pytest.mark.parametrize("method,params,match", [
    ("reviewkd", {"warmup_epochs": -1}, "warmup_epochs"),
    ("reviewkd", {"weight": -1.0}, "weight"),
    ("reviewkd", {"max_mid_channel": 0}, "max_mid_channel"),
    ("kdsvd", {"k": 0}, "singular vectors"),
    ("ickd", {"weight": -1.0}, "weight"),
    ("srd", {"feature_weight": -1.0}, "feature_weight"),
    ("simkd", {"factor": 0}, "factor"),
])
def test_bad_hyper_parameters_are_refused_in_one_line(method, params, match):
    t, s = networks("resnet8", "resnet8")
    with pytest.raises(ConfigError, match=match) as caught:
        create_method(method, context(t, s), **params)
    assert "\n" not in str(caught.value)


def test_simkd_refuses_a_factor_leaving_no_channel():
    t, s = networks("resnet8", "resnet8")  # 64 channels
    with pytest.raises(ConfigError, match="bottleneck"):
        create_method("simkd", context(t, s), factor=65)


# ------------------------------------------------------------------------------- ReviewKD
#: (teacher, student, in_channels, out_channels, SHAPES, OUT_SHAPES) as the references hard-code
#: them: mdistiller's cfg defaults (resnet32x4 -> resnet8x4) and dvlab-research/ReviewKD's
#: build_review_kd tables (truncated to the fusion modules they build).
REVIEWKD_TABLES = [
    ("resnet32x4", "resnet8x4", [64, 128, 256, 256], [64, 128, 256, 256], [1, 8, 16, 32],
     [1, 8, 16, 32]),
    ("resnet56", "resnet20", [16, 32, 64, 64], [16, 32, 64, 64], [1, 8, 16, 32], [1, 8, 16, 32]),
    ("wrn_40_2", "wrn_16_2", [32, 64, 128, 128], [32, 64, 128, 128], [1, 8, 16, 32],
     [1, 8, 16, 32]),
    ("wrn_40_2", "ShuffleV1", [240, 480, 960, 960], [32, 64, 128, 128], [1, 4, 8, 16],
     [1, 8, 16, 32]),
    ("resnet32x4", "ShuffleV1", [240, 480, 960, 960], [64, 128, 256, 256], [1, 4, 8, 16],
     [1, 8, 16, 32]),
    ("resnet32x4", "ShuffleV2", [116, 232, 464, 1024], [64, 128, 256, 256], [1, 4, 8, 16],
     [1, 8, 16, 32]),
    ("vgg13", "vgg8", [128, 256, 512, 512, 512], [128, 256, 512, 512, 512], [1, 4, 4, 8, 16],
     [1, 4, 4, 8, 16]),
    ("vgg13", "MobileNetV2", [12, 16, 48, 160, 1280], [128, 256, 512, 512, 512],
     [1, 2, 4, 8, 16], [1, 4, 4, 8, 16]),
    ("ResNet50", "vgg8", [128, 256, 512, 512, 512], [256, 512, 1024, 2048, 2048],
     [1, 4, 4, 8, 16], [1, 4, 8, 16, 32]),
]


@pytest.mark.parametrize("teacher,student,ins,outs,shapes,out_shapes", REVIEWKD_TABLES,
                         ids=lambda x: x if isinstance(x, str) else None)
def test_reviewkd_modules_sized_as_the_references_tables(teacher, student, ins, outs, shapes,
                                                        out_shapes):
    t, s = networks(teacher, student, num_classes=100)
    method = create_method("reviewkd", context(t, s, image_size=32))
    positions = method.requests["student"].positions
    assert method.requests["teacher"].positions == positions
    assert abf_channels(s.feature_info, t.feature_info, positions) == (ins, outs,
                                                                       min(512, ins[-1]))
    built = [(abf.conv1[0].in_channels, abf.conv2[0].out_channels, abf.att_conv is not None)
             for abf in method.abfs]  # deepest first
    assert built == [(c_in, c_out, i > 0) for i, (c_in, c_out)
                     in enumerate(zip(ins[::-1], outs[::-1], strict=True))]
    assert all(abf.conv1[0].out_channels == min(512, ins[-1]) for abf in method.abfs)
    # the sizes each level meets at 32x32 inputs: the student's (SHAPES), the teacher's
    # (OUT_SHAPES), deepest first, the pooled feature 1x1
    for net, expected in ((s, shapes), (t, out_shapes)):
        sizes = [shape[1] for shape in feature_shapes(net, 32)["stages"]]
        assert [1] + [sizes[p] for p in positions][::-1] == expected


def test_reviewkd_sizes_met_at_run_time_are_the_references():
    t, s = networks("resnet32x4", "resnet8x4", num_classes=100)
    method = create_method("reviewkd", context(t, s, image_size=32))
    student, teacher, _ = features(t, s, image_size=32, batch=2)
    seen = []
    for abf in method.abfs:
        abf.register_forward_hook(lambda m, args, out: seen.append(
            (args[0].shape[-1], out[0].shape[-1])))
    method({"student": student, "teacher": teacher}, step(t, s))
    assert [a for a, _ in seen] == [1, 8, 16, 32] and [b for _, b in seen] == [1, 8, 16, 32]


def test_reviewkd_fusion_init():
    t, s = networks("resnet8x4", "resnet8")
    method = create_method("reviewkd", context(t, s))
    for abf in method.abfs:
        for conv in (abf.conv1[0], abf.conv2[0]):
            fan_in = conv.weight[0].numel()
            bound = math.sqrt(6.0 / ((1 + 1 ** 2) * fan_in))  # kaiming_uniform_(a=1)
            assert conv.weight.abs().max().item() <= bound
            assert conv.weight.abs().max().item() > 0.8 * bound
            assert conv.bias is None


def reference_review(method, student, teacher):
    """The reference's forward written out: the levels reversed, ``abfs[0]`` on the pooled
    feature, then each shallower level fused with the previous residual at the student's size
    (SHAPES) and resized to the teacher's (OUT_SHAPES); the teacher's pre-activation stages and
    pooled feature as targets."""
    positions = method.requests["student"].positions
    x = [*student.maps(positions), student.pool[:, :, None, None]][::-1]
    targets = [*teacher.maps(positions, preact=True), teacher.pool[:, :, None, None]]
    out_shapes = [t.shape[-1] for t in targets][::-1]
    results, residual = [], None
    for index, (level, abf) in enumerate(zip(x, method.abfs, strict=True)):
        n, _, h, w = level.shape
        y = abf.conv1(level)
        if index > 0:
            r = F.interpolate(residual, (h, h), mode="nearest")
            z = abf.att_conv(torch.cat([y, r], dim=1))
            y = y * z[:, 0].view(n, 1, h, w) + r * z[:, 1].view(n, 1, h, w)
        if y.shape[-1] != out_shapes[index]:
            y = F.interpolate(y, (out_shapes[index], out_shapes[index]), mode="nearest")
        results.insert(0, abf.conv2(y))
        residual = y
    return hierarchical_context_loss(results, targets)


@pytest.mark.parametrize("teacher,student", [("resnet8x4", "resnet8"),
                                             ("wrn_40_2", "ShuffleV1")])
def test_reviewkd_term_and_warmup_per_epoch(teacher, student):
    t, s = networks(teacher, student)
    method = create_method("reviewkd", context(t, s))
    method.eval()  # BatchNorm with running statistics: the same value at every call
    student_features, teacher_features, _ = features(t, s)
    expected = reference_review(method, student_features, teacher_features)
    both = {"student": student_features, "teacher": teacher_features}
    for epoch in range(1, 26):
        terms = method(both, step(t, s, epoch))
        assert set(terms) == {"reviewkd"}
        factor = min(epoch / 20, 1.0)
        assert terms["reviewkd"].item() == pytest.approx(factor * expected.item(), rel=1e-5)
    weighted = create_method("reviewkd", context(t, s), weight=5.0, warmup_epochs=0)
    weighted.load_state_dict(method.state_dict())
    weighted.eval()
    assert weighted(both, step(t, s, 1))["reviewkd"].item() == \
        pytest.approx(5.0 * expected.item(), rel=1e-5)
    assert [warmup_factor(e, 3) for e in (1, 2, 3, 4)] == [1 / 3, 2 / 3, 1.0, 1.0]


def test_reviewkd_warmup_in_a_real_run(make_config, monkeypatch):
    """The logged term, epoch by epoch, with the loss itself held at 1: the warm-up factor."""
    def unit_loss(outputs, targets):
        return 1.0 + sum(o.sum() * 0 for o in outputs)

    monkeypatch.setattr(reviewkd_module, "hierarchical_context_loss", unit_loss)
    config = make_config(method={"name": "reviewkd", "warmup_epochs": 3, "weight": 2.0},
                         optim={"epochs": 4})
    Trainer(build(config), RunDir.prepare(config.out), progress=False).fit()
    logged = [m["terms"]["reviewkd"] for m in read_metrics(config.out)]
    assert logged == pytest.approx([2 / 3, 4 / 3, 2.0, 2.0], rel=1e-6)


def test_reviewkd_requests():
    t, s = networks("resnet8x4", "resnet8")
    method = create_method("reviewkd", context(t, s))
    mine, theirs = method.requests["student"], method.requests["teacher"]
    assert (mine.positions, mine.preact, mine.pool) == ((-3, -2, -1), False, True)
    assert (theirs.positions, theirs.preact, theirs.pool) == ((-3, -2, -1), True, True)
    assert create_method("reviewkd", context(t, s), student_preact=True).requests[
        "student"].preact
    no_preact = FeatureInfo(stages=tuple(StageInfo(c, 2 ** i) for i, c in enumerate((8, 16, 32))),
                            pool=32, logits=10)
    with pytest.raises(ConfigError) as caught:
        check_request("reviewkd", "teacher", "plain", theirs.resolve(no_preact), no_preact)
    assert str(caught.value) == ("method reviewkd needs pre-activation stage outputs of the "
                                 "teacher, which plain does not provide; choose another teacher "
                                 "or method")


# ---------------------------------------------------------------------------------- KDSVD
@pytest.mark.parametrize("teacher,student", [("resnet8x4", "resnet8"), ("wrn_40_2", "ShuffleV1")])
def test_kdsvd_term_is_the_functional_on_all_stages(teacher, student):
    t, s = networks(teacher, student)
    method = create_method("kdsvd", context(t, s), weight=2.0)
    assert method.requests["student"].positions == (-3, -2, -1)
    assert not method.requests["student"].preact and not list(method.parameters())
    student_features, teacher_features, _ = features(t, s)
    pairs = [match_spatial_size(a, b) for a, b in zip(student_features.stages,
                                                      teacher_features.stages, strict=True)]
    expected = kdsvd([a for a, _ in pairs], [b for _, b in pairs], k=1)
    terms = method({"student": student_features, "teacher": teacher_features}, step(t, s))
    assert set(terms) == {"kdsvd"}
    assert terms["kdsvd"].item() == pytest.approx(2.0 * expected.item(), rel=1e-6)
    assert all(b.shape[-1] == a.shape[-1] for a, b in pairs)


def test_kdsvd_repdistiller_variant_decomposes_hw_by_c_and_needs_equal_channels():
    """variant="repdistiller" (HobbitLong/RepDistiller@b84f547 distiller_zoo/KDSVD.py): the
    (H*W) x C matrices of feat[1:-1], unpooled; stage pairs of other channel counts refused."""
    t, s = networks("resnet32x4", "resnet8x4")
    method = create_method("kdsvd", context(t, s), variant="repdistiller")
    student_features, teacher_features, _ = features(t, s)
    expected = kdsvd(student_features.stages, teacher_features.stages, k=1,
                     variant="repdistiller")
    terms = method({"student": student_features, "teacher": teacher_features}, step(t, s))
    assert terms["kdsvd"].item() == pytest.approx(expected.item(), rel=1e-6)
    mdistiller = create_method("kdsvd", context(t, s))(
        {"student": student_features, "teacher": teacher_features}, step(t, s))
    assert mdistiller["kdsvd"].item() != pytest.approx(expected.item(), rel=1e-3)
    t, s = networks("wrn_40_2", "ShuffleV1")
    with pytest.raises(ConfigError, match="variant=repdistiller decomposes"):
        create_method("kdsvd", context(t, s), variant="repdistiller")


# ----------------------------------------------------------------------------------- ICKD
def test_ickd_embedding_and_term():
    t, s = networks("resnet8x4", "resnet8")
    method = create_method("ickd", context(t, s))
    assert method.requests["student"].positions == (-1,)
    conv, bn = method.embed_s.conv2d, method.embed_s.l2norm
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (64, 256, (1, 1),
                                                                                  None)
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 256
    student_features, teacher_features, _ = features(t, s)
    terms = method({"student": student_features, "teacher": teacher_features},
                   step(t, s))  # train mode: batch stats
    embedded = bn(conv(student_features.stages[-1]))
    assert embedded.shape == teacher_features.stages[-1].shape
    expected = inter_channel_correlation(embedded, teacher_features.stages[-1])
    assert set(terms) == {"ickd"}
    assert terms["ickd"].item() == pytest.approx(2.5 * expected.item(), rel=1e-6)


def test_ickd_other_spatial_sizes():
    t, s = networks("wrn_40_2", "ShuffleV1")  # 4x4 and 2x2 last stages at 16 pixels
    method = create_method("ickd", context(t, s))
    student_features, teacher_features, _ = features(t, s)
    assert student_features.stages[-1].shape[-1] != teacher_features.stages[-1].shape[-1]
    both = {"student": student_features, "teacher": teacher_features}
    assert torch.isfinite(method(both, step(t, s))["ickd"])


# ------------------------------------------------------------------------------------ SRD
def reference_statm(x, y):
    """SRD_ossl's statm_loss, as written there."""
    x = x.view(x.size(0), x.size(1), -1)
    y = y.view(y.size(0), y.size(1), -1)
    return (x.mean(dim=2) - y.mean(dim=2)).pow(2).mean(1).mean()


@pytest.mark.parametrize("teacher,student", [("resnet8x4", "resnet8"), ("wrn_40_2", "ShuffleV1")])
def test_srd_terms_and_gradients(teacher, student):
    t, s = networks(teacher, student)
    method = create_method("srd", context(t, s), feature_weight=10.0, weight=0.5)
    conv, bn = method.connector.Connectors[0], method.connector.Connectors[1]
    assert (conv.in_channels, conv.out_channels) == (s.feature_info.pre_pool,
                                                     t.feature_info.pre_pool)
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()
    for p in t.parameters():
        p.requires_grad_(False)
    student_features, teacher_features, _ = features(t, s)
    method.eval()
    terms = method({"student": student_features, "teacher": teacher_features}, step(t, s))
    regressed = method.connector(student_features.pre_pool)
    pooled = F.avg_pool2d(regressed, regressed.size(2)).view(regressed.size(0), -1)
    logits = t.classifier_layer()(pooled)
    assert set(terms) == {"srd_feature", "srd_logits"}
    assert terms["srd_feature"].item() == pytest.approx(
        0.5 * 10.0 * reference_statm(regressed, teacher_features.pre_pool).item(), rel=1e-6)
    assert terms["srd_logits"].item() == pytest.approx(
        0.5 * F.mse_loss(logits, teacher_features.logits).item(), rel=1e-6)
    sum(terms.values()).backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert any(p.grad is not None for p in s.parameters())
    assert all(p.grad is None for p in t.parameters())


def test_srd_conv_init():
    t, s = networks("resnet32x4", "resnet8x4")
    method = create_method("srd", context(t, s))
    weight = method.connector.Connectors[0].weight
    assert weight.std().item() == pytest.approx(math.sqrt(2.0 / 256), rel=0.05)


def test_srd_and_simkd_features():
    """SRD: the pooled map of both networks; SimKD: the student's last stage (its feat_s[-2])
    and the teacher's pooled map."""
    t, s = networks("wrn_40_2", "ShuffleV2")
    srd = create_method("srd", context(t, s)).requests
    assert srd["student"].pre_pool and srd["teacher"].pre_pool
    assert not srd["student"].positions and not srd["teacher"].positions
    simkd = create_method("simkd", context(t, s))
    assert simkd.requests["student"].positions == (-1,) and not simkd.requests["student"].preact
    assert simkd.requests["teacher"].pre_pool and not simkd.requests["teacher"].positions
    assert simkd.projector[0].in_channels == 464  # ShuffleV2's layer3, not its 1024 head
    _, teacher_features, _ = features(t, s)
    # the WRN's pooled map is the head's BatchNorm-ReLU of the last stage (SRD_ossl's f3)
    head = F.relu(t.bn1(teacher_features.stages[-1]))
    assert torch.allclose(teacher_features.pre_pool, head)


# ---------------------------------------------------------------------------------- SimKD
@pytest.mark.parametrize("teacher,student", [("resnet8x4", "resnet8"),     # equal sizes
                                             ("ShuffleV1", "resnet8"),     # student larger
                                             ("resnet8", "ShuffleV1")])    # teacher larger
def test_simkd_term_and_spatial_alignment(teacher, student):
    t, s = networks(teacher, student)
    method = create_method("simkd", context(t, s), weight=3.0)
    width = t.feature_info.pre_pool
    layers = method.projector
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in layers
            if isinstance(m, nn.Conv2d)] == [(s.feature_info.stages[-1].channels, width // 2,
                                              (1, 1)),
                                             (width // 2, width // 2, (3, 3)),
                                             (width // 2, width, (1, 1))]
    student_features, teacher_features, _ = features(t, s)
    sm, tm = student_features.stages[-1], teacher_features.pre_pool
    if sm.shape[2] > tm.shape[2]:
        source, target = F.adaptive_avg_pool2d(sm, tm.shape[2:]), tm
    else:
        source, target = sm, F.adaptive_avg_pool2d(tm, sm.shape[2:])
    method.eval()
    terms = method({"student": student_features, "teacher": teacher_features}, step(t, s))
    assert set(terms) == {"simkd"}
    assert terms["simkd"].item() == pytest.approx(
        3.0 * F.mse_loss(method.projector(source), target).item(), rel=1e-6)
    assert method.teacher_size.tolist() == list(tm.shape[2:])


def test_simkd_deployed_student():
    t, s = networks("ShuffleV1", "resnet8")  # the student's map is pooled to the teacher's
    for p in t.parameters():
        p.requires_grad_(False)
    method = create_method("simkd", context(t, s))
    with pytest.raises(KdzooError, match="first training step"):
        method.deployed("student", s)
    student_features, teacher_features, images = features(t, s)
    method({"student": student_features, "teacher": teacher_features}, step(t, s))
    assert method.deployed("teacher", t) is t
    deployed = method.deployed("student", s)
    assert isinstance(deployed, SimKDStudent) and deployed.backbone is s
    assert deployed.projector is method.projector and deployed.classifier is t.linear
    assert count_parameters(deployed) == (count_parameters(s) + count_parameters(method.projector)
                                          + count_parameters(t.linear))
    assert (deployed.model_name, deployed.num_classes) == ("resnet8", 10)
    deployed.eval()
    with torch.no_grad():
        raw = s.forward_features(images)["stages"][-1]
        source = F.adaptive_avg_pool2d(raw, teacher_features.pre_pool.shape[2:])
        expected = t.linear(method.projector(source).mean(dim=(2, 3)))
        assert torch.allclose(deployed(images), expected, atol=1e-6)
    deployed.train()
    assert s.training and method.projector.training and not t.linear.training


def test_simkd_export_loads(tmp_path):
    t, s = networks("resnet8x4", "resnet8")
    method = create_method("simkd", context(t, s))
    student_features, teacher_features, images = features(t, s)
    method({"student": student_features, "teacher": teacher_features}, step(t, s))
    deployed = method.deployed("student", s)
    path = tmp_path / "student.pt"
    export_model(deployed, path, method="simkd")
    loaded = load_simkd_student(path)
    assert isinstance(loaded, SimKDStudent)
    assert loaded.state_dict().keys() == deployed.state_dict().keys()
    assert all(torch.equal(v, deployed.state_dict()[k]) for k, v in loaded.state_dict().items())
    deployed.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(images), deployed(images))
    other = SimKDStudent(s, method.projector, t.fc, torch.tensor([1, 1]))
    other.load_state_dict(deployed.state_dict())  # the size follows the loaded buffer
    other.eval()
    with torch.no_grad():
        assert other._size == (4, 4) and torch.equal(other(images), deployed(images))
    plain = tmp_path / "plain.pt"
    export_model(s, plain)
    with pytest.raises(CheckpointError, match="not the export of a simkd run"):
        load_simkd_student(plain)


def test_simkd_run_evaluates_counts_and_exports_the_deployed_student(make_config):
    config = make_config(method={"name": "simkd"}, optim={"epochs": 1})
    parts = build(config)
    trainer = Trainer(parts, RunDir.prepare(config.out), progress=False)
    trainer.fit()
    summary = read_summary(config.out)
    deployed = parts.method.deployed("student", parts.student)
    head = parts.networks["teacher"].classifier_layer()
    assert summary["student_parameters"] == count_parameters(parts.student) + \
        count_parameters(parts.method.projector) + count_parameters(head)
    metrics = read_metrics(config.out)
    assert metrics[-1]["terms"]["ce"] == 0.0 and metrics[-1]["terms"]["simkd"] > 0
    loaded = load_simkd_student(f"{config.out}/student.pt")
    scores = evaluate(loaded.to(parts.device), parts.loader)
    assert scores["top1"] == pytest.approx(summary["last_top1"])
    assert scores == pytest.approx(evaluate(deployed, parts.loader))
