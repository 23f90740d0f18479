"""The feature-map methods at, fitnet, nst, sp, fsp and ab: reference defaults, stage averaging,
connectors only where widths differ, and FSP's/AB's two stages run for real."""
from dataclasses import replace

import pytest
import torch

import kdzoo
from kdzoo import functional as KF
from kdzoo.engine import RunDir, Trainer, build, fit, read_metrics
from kdzoo.errors import ConfigError
from kdzoo.methods import MethodContext, Stage, create_method, get_method_class, method_defaults
from kdzoo.methods._feature_maps import init_schedule
from kdzoo.models.features import StageInfo

from feature_points import features_of, point_features, requested_points
from states import assert_same_state

MAP_METHODS = ("at", "fitnet", "nst", "sp", "fsp", "ab")


def context(student_info, teacher_info):
    return MethodContext(infos={"student": student_info, "teacher": teacher_info},
                         num_classes=10, image_size=16, in_chans=3,
                         train_labels=torch.zeros(8, dtype=torch.long))


def channels(info, point):
    """Channels of a named point of a three-stage network's metadata."""
    if point == "stem":
        return info.stem.channels
    return info.stages[int(point[len("stage")]) - 1].channels


def model_context(student="resnet8", teacher="resnet8"):
    s = kdzoo.create_model(student, num_classes=10)
    t = kdzoo.create_model(teacher, num_classes=10)
    return context(s.feature_info, t.feature_info), s, t


# ------------------------------------------------------------------- reference defaults
@pytest.mark.parametrize("method,expected", [
    ("at", {"weight": 1000.0, "p": 2.0, "variant": "reference"}),
    ("fitnet", {"weight": 0.1, "variant": "reference"}),
    ("nst", {"weight": 10.0, "variant": "reference"}),
    ("sp", {"weight": 3000.0, "variant": "reference"}),
    ("fsp", {"weight": 1.0, "init_epochs": 50, "init_lr": 0.01, "variant": "reference"}),
    ("ab", {"weight": 10.0, "margin": 2.0, "init_epochs": 50, "init_lr": 0.01,
            "variant": "reference"}),
])
def test_reference_example_lambdas_are_the_defaults(method, expected):
    assert method_defaults(method) == expected


@pytest.mark.parametrize("method,points", [
    ("at", ("stage1", "stage2", "stage3")),            # post-ReLU
    ("fitnet", ("stage3",)),
    ("nst", ("stage3",)),
    ("sp", ("stage1", "stage2", "stage3")),
    ("fsp", ("stem", "stage1", "stage2", "stage3")),  # pairs of consecutive points
    ("ab", ("stage1_pre", "stage2_pre", "stage3_pre")),  # pre-ReLU
])
def test_feature_points(method, points):
    assert requested_points(get_method_class(method)) == points


# ------------------------------------------------------ loss = weight * mean over stages
def reference_value(method, s, t):
    """The reference's combination: (L1 + L2 + L3) / 3 * lambda, with its default lambda."""
    w = method_defaults(method)["weight"]
    if method == "at":
        ls = [KF.attention_transfer(s[k], t[k], 2.0) for k in ("stage1", "stage2", "stage3")]
    elif method == "sp":
        ls = [KF.similarity_preserving(s[k], t[k]) for k in ("stage1", "stage2", "stage3")]
    elif method == "ab":
        ls = [KF.activation_boundary(s[k], t[k], 2.0)
              for k in ("stage1_pre", "stage2_pre", "stage3_pre")]
    elif method == "fsp":
        ls = [KF.fsp(s[a], s[b], t[a], t[b]) for a, b in
              (("stem", "stage1"), ("stage1", "stage2"), ("stage2", "stage3"))]
    elif method == "fitnet":
        ls = [KF.hint(s["stage3"], t["stage3"])]
    else:
        ls = [KF.neuron_selectivity_transfer(s["stage3"], t["stage3"])]
    return sum(ls) / len(ls) * w


@pytest.mark.parametrize("method", MAP_METHODS)
def test_equal_widths_give_the_reference_loss_without_connectors(method):
    ctx, s_net, t_net = model_context("resnet8", "resnet8")
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        s, t = point_features(s_net, images), point_features(t_net, images)
        s = {k: v + 0.1 * torch.randn_like(v) for k, v in s.items()}  # student != teacher
    m = create_method(method, ctx)
    assert list(m.parameters()) == []
    terms = m({"student": features_of(s), "teacher": features_of(t)}, None)
    assert list(terms) == [method]
    expected = reference_value(method, s, t)
    assert terms[method].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms[method].item() > 0


def test_weight_and_options_are_applied():
    ctx, s_net, t_net = model_context()
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        s, t = point_features(s_net, images), point_features(t_net, images)
        s = {k: v + 0.5 for k, v in s.items()}
    both = {"student": features_of(s), "teacher": features_of(t)}
    at3 = create_method("at", ctx, weight=2.0, p=3.0)(both, None)["at"]
    expected = sum(KF.attention_transfer(s[k], t[k], 3.0) for k in
                   ("stage1", "stage2", "stage3")) / 3 * 2.0
    assert at3.item() == pytest.approx(expected.item(), rel=1e-6)
    ab1 = create_method("ab", ctx, weight=1.0, margin=1.0)(both, None)["ab"]
    expected = sum(KF.activation_boundary(s[k], t[k], 1.0) for k in
                   ("stage1_pre", "stage2_pre", "stage3_pre")) / 3
    assert ab1.item() == pytest.approx(expected.item(), rel=1e-6)


# ----------------------------------------------------------------------------- connectors
@pytest.mark.parametrize("method,connected", [
    ("fitnet", {"stage3"}),
    ("ab", {"stage1_pre", "stage2_pre", "stage3_pre"}),
    ("fsp", {"stem", "stage1", "stage2", "stage3"}),
    ("at", set()),
    ("sp", set()),
    ("nst", set()),  # MMD between channel sets of any sizes: no connector needed
])
def test_connectors_only_for_other_widths(method, connected):
    ctx, *_ = model_context("resnet8", "resnet8x4")  # 16/16/32/64 vs 32/64/128/256
    m = create_method(method, ctx)
    found = set(m.connectors) if hasattr(m, "connectors") else set()
    assert found == connected
    if not connected:
        assert list(m.parameters()) == []
    for point in connected:
        conv, bn = m.connectors[point]
        assert conv.kernel_size == (1, 1) and conv.bias is None
        assert (conv.in_channels, conv.out_channels) == (
            channels(ctx.infos["student"], point), channels(ctx.infos["teacher"], point))
        assert bn.num_features == channels(ctx.infos["teacher"], point)


@pytest.mark.parametrize("method", ["fitnet", "fsp", "ab"])
def test_a_connector_only_where_a_point_differs(method):
    ctx, *_ = model_context("resnet8", "resnet8")
    stages = ctx.infos["teacher"].stages
    teacher_info = replace(ctx.infos["teacher"], stages=(  # stage2 and stage3 wider
        stages[0], *(StageInfo(48, s.reduction, s.preact) for s in stages[1:])))
    m = create_method(method, context(ctx.infos["student"], teacher_info))
    expected = {"fitnet": {"stage3"}, "fsp": {"stage2", "stage3"},
                "ab": {"stage2_pre", "stage3_pre"}}[method]
    assert set(m.connectors) == expected


@pytest.mark.parametrize("method", MAP_METHODS)
def test_other_widths_give_finite_losses(method):
    ctx, s_net, t_net = model_context("resnet8", "resnet8x4")
    images = torch.randn(4, 3, 16, 16)
    s = s_net.features(images)
    with torch.no_grad():
        t = t_net.features(images)
    m = create_method(method, ctx)
    value = m({"student": s, "teacher": t}, None)[method]
    assert torch.isfinite(value) and value.dim() == 0
    value.backward()
    assert all(p.grad is not None for p in m.parameters())


# ---------------------------------------------------------------------- the init stage
def lrs(schedule, epochs):
    return [schedule.lr(e) for e in range(1, epochs + 1)]


def test_init_schedule_is_the_reference_one_for_50_epochs():
    assert lrs(init_schedule(50), 50) == [0.01] * 30 + [0.001] * 10 + [0.0001] * 10  # exactly


@pytest.mark.parametrize("epochs,lengths", [(30, (18, 6, 6)), (5, (3, 1, 1)), (3, (2, 1, 0)),
                                            (1, (1, 0, 0)), (10, (6, 2, 2))])
def test_init_schedule_scales_60_20_20(epochs, lengths):
    expected = [0.01] * lengths[0] + [0.001] * lengths[1] + [0.0001] * lengths[2]
    assert lrs(init_schedule(epochs), epochs) == pytest.approx(expected)
    assert lrs(init_schedule(epochs, init_lr=0.02), epochs) == pytest.approx(
        [2 * x for x in expected])


@pytest.mark.parametrize("method", ["fsp", "ab"])
def test_two_stages_declared(method):
    ctx, *_ = model_context()
    main = Stage("main", 200, None)
    init, second = create_method(method, ctx).stages(main)
    assert (init.name, init.epochs, init.ce_weight, init.method_weight) == ("init", 50, 0.0, 1.0)
    assert init.evaluate is False and init.optimizer == second.optimizer == "main"
    assert init.trainable == "student+method" and init.uses_student
    assert (second.name, second.epochs, second.ce_weight, second.method_weight) == (
        "main", 200, 1.0, 0.0)
    assert second.schedule is main.schedule and second.evaluate


@pytest.mark.parametrize("method", ["fsp", "ab"])
@pytest.mark.parametrize("bad", [{"init_epochs": 0}, {"init_lr": 0.0}])
def test_bad_init_settings_are_refused(method, bad):
    ctx, *_ = model_context()
    with pytest.raises(ConfigError, match="init_"):
        create_method(method, ctx, **bad)


@pytest.mark.parametrize("method", ["fsp", "ab"])
def test_two_stage_fit_lrs_and_active_losses(make_config, method):
    config = make_config(method={"name": method, "init_epochs": 3},
                         optim={"epochs": 2, "lr": 0.1, "milestones": [1]})
    metrics = read_metrics(fit(config, progress=False).path)
    assert [(m["stage"], m["stage_epoch"]) for m in metrics] == [
        ("init", 1), ("init", 2), ("init", 3), ("main", 1), ("main", 2)]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5]
    assert [m["lr"] for m in metrics] == pytest.approx([0.01, 0.01, 0.001, 0.1, 0.01])
    for m in metrics[:3]:  # method loss only; the cross-entropy is there, times 0
        terms = m["terms"]
        assert terms["ce"] == 0.0 and terms[method] > 0
        assert terms["loss"] == pytest.approx(terms[method])
        assert "test" not in m
    for m in metrics[3:]:  # cross-entropy only
        assert method not in m["terms"] and m["terms"]["ce"] > 0 and "test" in m


@pytest.mark.parametrize("method", ["fsp", "ab"])
def test_stages_share_one_optimizer_and_the_main_stage_skips_teacher(make_config, tmp_path,
                                                                     method, monkeypatch):
    config = make_config(method={"name": method, "init_epochs": 1},
                         teacher={"name": "resnet8x4", "untrained": True})
    parts = build(config)
    init, main = parts.stages
    trainer = Trainer(parts, RunDir.prepare(tmp_path / "steps"), progress=False)
    opt_init, = trainer.stage_optimizers(init)
    opt_main, = trainer.stage_optimizers(main)
    assert opt_init is opt_main  # the same SGD object: momentum buffers carry over
    in_optimizer = {id(p) for g in opt_init.param_groups for p in g["params"]}
    assert parts.method.connectors and all(id(p) in in_optimizer
                                           for p in parts.method.parameters())

    batch = next(parts.loader.train_batches(config.seed, 1))
    terms, _ = trainer.step_terms(batch, init, 1, 0)
    assert set(terms) == {"ce", method} and terms["ce"].item() == 0.0
    opt_init.zero_grad(set_to_none=True)
    torch.stack(list(terms.values())).sum().backward()
    # CE * 0 keeps the classifier in the graph: zero (not missing) gradients, so weight decay
    # still acts on it during the init stage, as in the reference
    assert parts.student.fc.weight.grad is not None
    assert torch.count_nonzero(parts.student.fc.weight.grad) == 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in parts.method.parameters())
    opt_init.step()
    conv = next(iter(parts.student.parameters()))
    buffer = opt_main.state[conv]["momentum_buffer"]

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran in the cross-entropy-only stage")

    monkeypatch.setattr(parts.teacher, "forward_features", no_teacher)
    monkeypatch.setattr(parts.teacher_runner, "forward", no_teacher)
    terms, _ = trainer.step_terms(batch, main, 1, 0)
    assert set(terms) == {"ce"} and terms["ce"].item() > 0
    opt_main.zero_grad(set_to_none=True)
    terms["ce"].backward()
    opt_main.step()
    assert opt_main.state[conv]["momentum_buffer"] is buffer  # updated in place, not restarted


def test_resume_across_the_stage_boundary_equals_uninterrupted(make_config, tmp_path,
                                                               crashed_and_resumed):
    def config(out):
        return make_config(method={"name": "fsp", "init_epochs": 2}, optim={"epochs": 1},
                           teacher={"name": "resnet8x4", "untrained": True},
                           data={"train_size": 64, "test_size": 16}, out=str(tmp_path / out))

    whole = fit(config("whole"), progress=False)
    resumed = crashed_and_resumed(config("broken"), progress=False, crash_at=3)
    assert_same_state(whole.student.state_dict(), resumed.student.state_dict())
    assert [m["stage"] for m in read_metrics(resumed.path)] == ["init", "init", "main"]
