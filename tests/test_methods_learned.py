"""The methods with learned modules: FT (two stages), VID, OFD, AFD."""
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

import kdzoo
from kdzoo import functional as KF
from kdzoo.engine import RunDir, Trainer, build, fit, read_metrics
from kdzoo.errors import ConfigError, KdzooError
from kdzoo.methods import MethodContext, Stage, Step, create_method
from kdzoo.methods import get_method_class
from kdzoo.methods.ft import Paraphraser
from kdzoo.models.features import check_request

from feature_points import features_of, requested_points


def context(teacher="resnet8", student="resnet8", data_name="synthetic"):
    t = kdzoo.create_model(teacher, num_classes=10)
    s = kdzoo.create_model(student, num_classes=10)
    return MethodContext(infos={"student": s.feature_info, "teacher": t.feature_info},
                         num_classes=10, image_size=16, in_chans=3,
                         train_labels=torch.zeros(8, dtype=torch.long), data_name=data_name)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def features(channels, size, batch, seed, points):
    gen = torch.Generator().manual_seed(seed)
    return {p: torch.randn(batch, c, size[p], size[p], generator=gen)
            for p, c in zip(points, channels, strict=True)}


def main_step(teacher=None):
    networks = {} if teacher is None else {"teacher": teacher}
    return Step(batch=None, stage=Stage("main", 1), epoch=1, step=0, networks=networks)


# ---------------------------------------------------------------------------------------- FT
def test_ft_stages_lr_losses_and_freezing(make_config):
    config = make_config(method={"name": "ft", "paraphraser_epochs": 2},
                         optim={"epochs": 2, "lr": 0.1, "milestones": [1]})
    parts = build(config)
    method, student = parts.method, parts.student
    assert [s.name for s in parts.stages] == ["paraphraser", "main"]
    student_before = snapshot(student)  # weights and BatchNorm buffers
    seen = {}

    original_end_stage, original_forward = method.end_stage, method.forward

    def end_stage(stage):
        if stage.name == "paraphraser":
            seen["student_after_stage1"] = snapshot(student)
        original_end_stage(stage)
        if stage.name == "paraphraser":
            seen["paraphraser_frozen"] = snapshot(method.paraphraser)

    def forward(features, step):
        name = step.stage.name
        seen.setdefault(name, []).append((
            "student" not in features, method.paraphraser.training,
            any(p.requires_grad for p in method.paraphraser.parameters()),
            any(p.requires_grad for p in method.translator.parameters())))
        return original_forward(features, step)

    method.end_stage, method.forward = end_stage, forward
    trainer = Trainer(parts, RunDir.prepare(config.out), progress=False)
    trainer.fit()

    metrics = read_metrics(config.out)
    assert [(m["stage"], m["stage_epoch"]) for m in metrics] == [
        ("paraphraser", 1), ("paraphraser", 2), ("main", 1), ("main", 2)]
    assert [m["lr"] for m in metrics] == pytest.approx([0.01, 0.01, 0.1, 0.01])
    for m in metrics[:2]:
        terms = m["terms"]
        assert terms["reconstruction"] > 0 and "ft" not in terms and "ce" not in terms
        assert "test" not in m and "top1" not in m["train"]
    for m in metrics[2:]:
        terms = m["terms"]
        assert "reconstruction" not in terms and terms["ft"] > 0 and terms["ce"] > 0
        assert "test" in m

    # stage 1: no student, a training paraphraser, a frozen translator
    assert set(seen["paraphraser"]) == {(True, True, True, False)}
    # stage 2: the student runs, the paraphraser is frozen (eval, no grad), the translator trains
    assert set(seen["main"]) == {(False, False, False, True)}
    assert same_state(student_before, seen["student_after_stage1"])
    assert not same_state(student_before, snapshot(student))
    assert same_state(seen["paraphraser_frozen"], snapshot(method.paraphraser))
    method.train()  # the override keeps the frozen paraphraser in eval mode
    assert method.training and method.translator.training and not method.paraphraser.training

    def ids(opt):
        return {id(p) for g in opt.param_groups for p in g["params"]}

    para_opt, main_opt = trainer.optimizers["paraphraser"], trainer.optimizers["main"]
    assert ids(para_opt) == {id(p) for p in method.paraphraser.parameters()}
    assert ids(main_opt) == {id(p) for p in [*student.parameters(),
                                             *method.translator.parameters()]}
    group = para_opt.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.9, 1e-4, False)
    assert main_opt.param_groups[0]["nesterov"] is True


def test_ft_resume_inside_the_main_stage_equals_uninterrupted(make_config, tmp_path,
                                                              crashed_and_resumed):
    """Resuming re-applies the end of the paraphraser stage: frozen paraphraser, trained
    translator, and the same student as a run that was never interrupted."""
    def config(name):
        return make_config(method={"name": "ft", "paraphraser_epochs": 1},
                           optim={"epochs": 2}, out=str(tmp_path / name))

    whole = fit(config("whole"), progress=False)
    resumed = crashed_and_resumed(config("broken"), progress=False, crash_at=3)
    assert same_state(snapshot(whole.student), snapshot(resumed.student))
    assert [m["stage"] for m in read_metrics(resumed.path)] == ["paraphraser", "main", "main"]


def test_ft_loss_uses_frozen_paraphraser_factor():
    ctx = context("resnet8x4", "resnet8")
    method = create_method("ft", ctx)
    method.end_stage(Stage("paraphraser", 1))
    method.train()
    s = {"stage3": torch.rand(2, 64, 4, 4)}
    t = {"stage3": torch.rand(2, 256, 4, 4)}
    terms = method({"student": features_of(s), "teacher": features_of(t)}, main_step())
    assert set(terms) == {"ft"}
    factor_t, _ = method.paraphraser(t["stage3"])
    assert factor_t.shape == (2, 128, 4, 4)  # k = 0.5 of the teacher's 256 channels
    expected = 200.0 * KF.factor_transfer(method.translator(s["stage3"]), factor_t)
    assert terms["ft"].item() == pytest.approx(expected.item(), rel=1e-6)


def batchnorms(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def convs(module):
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


@pytest.mark.parametrize("rule,data_name,expected", [
    ("reference", "cifar10", True), ("reference", "cifar100", False),
    ("reference", "synthetic", True), ("cifar10-only", "cifar10", True),
    ("cifar10-only", "synthetic", False), ("cifar10-only", "cifar100", False),
    ("always", "cifar100", True), ("never", "cifar10", False)])
def test_ft_batchnorm_rule(rule, data_name, expected):
    method = create_method("ft", context(data_name=data_name), use_bn=rule)
    for part in (method.paraphraser, method.translator):
        assert bool(batchnorms(part)) is expected
        assert all((c.bias is None) is expected for c in convs(part))
    assert len(batchnorms(method.paraphraser)) == (6 if expected else 0)
    assert len(batchnorms(method.translator)) == (3 if expected else 0)


def test_ft_rejects_bad_options():
    with pytest.raises(ConfigError, match="use_bn"):
        create_method("ft", context(), use_bn="sometimes")
    with pytest.raises(ConfigError, match="paraphraser_epochs"):
        create_method("ft", context(), paraphraser_epochs=0)


def test_ft_init_conv_kaiming_and_conv_transpose_pytorch_default():
    torch.manual_seed(0)
    para = Paraphraser(16, 8, use_bn=False)
    # the same layers, built in the same order from the same seed, with PyTorch's default init
    torch.manual_seed(0)
    plain = [nn.Conv2d(16, 16, 3, 1, 1), nn.Conv2d(16, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1),
             nn.ConvTranspose2d(8, 8, 3, 1, 1), nn.ConvTranspose2d(8, 16, 3, 1, 1),
             nn.ConvTranspose2d(16, 16, 3, 1, 1)]
    for conv in plain[:3]:  # the reference's loop visits Conv2d only
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
    ours = convs(para)
    assert [type(m) for m in ours] == [type(m) for m in plain]
    for mine, theirs in zip(ours, plain, strict=True):
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.bias, theirs.bias)
    assert all(m.bias.abs().sum() > 0 for m in ours[3:])  # default init: nonzero biases


# ---------------------------------------------------------------------------------------- VID
def test_vid_initial_variance_and_regressor_shapes():
    method = create_method("vid", context("resnet8x4", "resnet8"))
    teacher_ch, student_ch = (64, 128, 256), (16, 32, 64)
    for regressor, t_c, s_c in zip(method.regressors, teacher_ch, student_ch, strict=True):
        assert regressor.variance().detach() == pytest.approx(torch.full((t_c,), 5.0), rel=1e-6)
        conv_shapes = [tuple(c.weight.shape[:2]) for c in convs(regressor)]
        assert conv_shapes == [(t_c, s_c), (t_c, t_c), (t_c, t_c)]
        assert all(c.bias is None for c in convs(regressor)) and not batchnorms(regressor)
    other = create_method("vid", context(), init_var=2.0, hidden_factor=0.5)
    assert other.regressors[0].variance().detach() == pytest.approx(torch.full((16,), 2.0))
    assert tuple(other.regressors[0].regressor[0].weight.shape[:2]) == (8, 16)


def test_vid_averages_the_stage_losses():
    method = create_method("vid", context(), weight=2.0)
    points, sizes = requested_points(type(method)), {"stage1": 8, "stage2": 4, "stage3": 2}
    s = features((16, 32, 64), sizes, 3, 0, points)
    t = features((16, 32, 64), sizes, 3, 1, points)
    expected = sum(KF.variational_information_loss(r.regressor(s[p]), t[p], torch.full(
        (t[p].shape[1],), 5.0)) for r, p in zip(method.regressors, points, strict=True)) / 3
    value = method({"student": features_of(s), "teacher": features_of(t)}, main_step())["vid"]
    assert value.item() == pytest.approx(2.0 * expected.item(), rel=1e-5)


# ---------------------------------------------------------------------------------------- OFD
def test_ofd_batch_margin_and_connectors():
    method = create_method("ofd", context("resnet8x4", "resnet8"))
    method.train()
    points = requested_points(type(method))
    sizes = {"stage1_pre": 8, "stage2_pre": 4, "stage3_pre": 2}
    s = features((16, 32, 64), sizes, 4, 2, points)
    t = features((64, 128, 256), sizes, 4, 3, points)
    losses = []
    for connector, p in zip(method.connectors, points, strict=True):
        conv, bn = connector
        assert tuple(conv.weight.shape[:2]) == (t[p].shape[1], s[p].shape[1]) and conv.bias is None
        # train mode: the connector's BN normalises with the batch's statistics
        mapped = nn.functional.batch_norm(conv(s[p]), None, None, bn.weight, bn.bias,
                                          training=True)
        losses.append(KF.overhaul_distillation(mapped, t[p], KF.ofd_margin_from_batch(t[p])))
    value = method({"student": features_of(s), "teacher": features_of(t)}, main_step())["ofd"]
    assert value.item() == pytest.approx(0.5 * sum(losses).item() / 3, rel=1e-5)


def test_ofd_bn_margin_comes_from_the_teachers_last_bn2():
    teacher = kdzoo.create_model("resnet8", num_classes=10)
    with torch.no_grad():
        for index in (1, 2, 3):
            bn = getattr(teacher, f"layer{index}")[-1].bn2
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    method = create_method("ofd", context(), margin="bn")
    t = torch.randn(2, 32, 4, 4)
    margin = method.teacher_margin(t, -2, main_step(teacher))  # stage2 of three
    bn = teacher.layer2[-1].bn2
    assert torch.equal(margin, KF.ofd_margin_from_bn(bn.weight.detach(), bn.bias.detach()))
    assert (margin < 0).all()
    s = {p: torch.randn(2, c, 16 // 2**i, 16 // 2**i)
         for i, (p, c) in enumerate(zip(requested_points(type(method)), (16, 32, 64), strict=True))}
    s = features_of(s)
    assert math.isfinite(method({"student": s, "teacher": s}, main_step(teacher))["ofd"].item())


def test_ofd_bn_margin_needs_a_named_batchnorm_and_margin_names_are_checked():
    cls = get_method_class("ofd")
    named = kdzoo.create_model("resnet8").feature_info
    unnamed = replace(named, stages=tuple(replace(s, bn_before_relu=None) for s in named.stages))
    for margin, refused in (("batch", False), ("bn", True)):
        params = cls.Params.build("ofd", {"margin": margin})
        request = cls.feature_requests(params, {"student": named, "teacher": unnamed})["teacher"]
        check_request("ofd", "student", "resnet8", request, named)
        if refused:
            with pytest.raises(KdzooError, match="needs a named BatchNorm before each stage's "
                                                 "last ReLU of the teacher, which net"):
                check_request("ofd", "teacher", "net", request, unnamed)
        else:
            check_request("ofd", "teacher", "net", request, unnamed)
    with pytest.raises(ConfigError, match="margin"):
        create_method("ofd", context(), margin="paper")


# ---------------------------------------------------------------------------------------- AFD
def test_afd_works_with_batch_size_one_and_weights_sum_to_one():
    method = create_method("afd", context())
    points, sizes = requested_points(type(method)), {"stage1": 8, "stage2": 4, "stage3": 2}
    for batch in (1, 4):
        s = features((16, 32, 64), sizes, batch, 4, points)
        t = {p: v.abs() for p, v in features((16, 32, 64), sizes, batch, 5, points).items()}
        for attention, p in zip(method.attentions, points, strict=True):
            rho = attention(t[p])
            assert rho.shape == (batch, t[p].shape[1])
            assert rho.sum(dim=1).detach() == pytest.approx(torch.ones(batch), abs=1e-6)
        value = method({"student": features_of(s), "teacher": features_of(t)}, main_step())["afd"]
        expected = sum(KF.attention_feature_distillation(s[p], t[p], a(t[p]))
                       for a, p in zip(method.attentions, points, strict=True)) / 3
        assert value.item() == pytest.approx(500.0 * expected.item(), rel=1e-5)
        value.backward()
        assert all(p.grad is not None for p in method.attentions.parameters())
        method.zero_grad()


def test_afd_connectors_only_when_widths_differ():
    same = create_method("afd", context("resnet8", "resnet8"))
    assert all(isinstance(c, nn.Identity) for c in same.connectors)
    wide = create_method("afd", context("resnet8x4", "resnet8"))
    widths = ((16, 64), (32, 128), (64, 256))
    for connector, (s_c, t_c) in zip(wide.connectors, widths, strict=True):
        conv, bn = connector
        assert tuple(conv.weight.shape[:2]) == (t_c, s_c) and bn.num_features == t_c
    hidden = create_method("afd", context(), att_f=0.5).attentions[2].attention[0]
    assert hidden.out_channels == 32 and hidden.bias is not None
