"""``variant="repdistiller"`` of cc, vid, ab, fsp and ft: RepDistiller's values where they differ
from the reference zoo's, its stages, modules and loss forms, and its initialisation stages,
checked in float64 against independent computations written as RepDistiller's distiller_zoo/*.py,
models/util.py, helper/pretrain.py and helper/loops.py (HobbitLong/RepDistiller@b84f547) compute
them on its feature list [stem, stage 1, ..., stage K, pooled feature]."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdzoo
from kdzoo.core import MultiStep
from kdzoo.data.loader import Batch
from kdzoo.engine import RunDir, Trainer, build, fit, read_metrics
from kdzoo.functional import repdistiller as KR
from kdzoo.methods import MethodContext, Stage, Step, create_method, method_defaults
from kdzoo.methods._feature_maps import ConvRegressor
from kdzoo.models.features import select
from kdzoo.spec import method_params

METHODS = ("cc", "vid", "ab", "fsp", "ft")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def pair(teacher="resnet8x4", student="resnet8", batch=6, image=16):
    """Both networks in float64, one batch through them (student in train mode)."""
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


def feats(raw, preact=False):
    """RepDistiller's ``feat`` list (``is_feat=True``, ``preact``)."""
    return [raw["stem"], *(raw["stages_pre"] if preact else raw["stages"]), raw["pool"]]


def step(batch=6, stage=None):
    return Step(Batch(torch.zeros(batch, 3, 2, 2), torch.zeros(batch, dtype=torch.long),
                      torch.arange(batch)), stage or Stage("main", 1), 1, 0)


def run(name, ctx, s_raw, t_raw, stage=None, **params):
    method = create_method(name, ctx, **params).double()
    student = select(s_raw, method.requests["student"])
    teacher = select(t_raw, method.requests["teacher"])
    return method, method({"student": student, "teacher": teacher},
                          step(s_raw["logits"].shape[0], stage))


# ----------------------------------------- RepDistiller's code, written out independently
def rep_pool(f_s, f_t):
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        return F.adaptive_avg_pool2d(f_s, (t_h, t_h)), f_t
    if s_h < t_h:
        return f_s, F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t


def loop_correlation(e_s, e_t):
    """CC.py's Correlation with Python loops over floats."""
    d = [[abs(a - b) for a, b in zip(rs, rt, strict=True)]
         for rs, rt in zip(e_s.tolist(), e_t.tolist(), strict=True)]
    rows = [sum(x * y for x, y in zip(d[i], d[i + 1], strict=True)) for i in range(len(d) - 1)]
    return sum(rows) / len(rows)


def rep_vid_loss(regressor, log_scale, eps, f_s, f_t):
    """VID.py's VIDLoss.forward with the given regressor and log_scale."""
    f_s, f_t = rep_pool(f_s, f_t)
    pred_mean = regressor(f_s)
    pred_var = (torch.log(1.0 + torch.exp(log_scale)) + eps).view(1, -1, 1, 1)
    return torch.mean(0.5 * ((pred_mean - f_t) ** 2 / pred_var + torch.log(pred_var)))


def loop_ab_loss(g_s, g_t, margin=1.0):
    """AB.py's ABLoss, summed as helper/pretrain.py does, with Python loops over floats."""
    n = len(g_s)
    total = 0.0
    for i, (s, t) in enumerate(zip(g_s, g_t, strict=True)):
        bsz = s.shape[0]
        acc = 0.0
        for x, y in zip(s.flatten().tolist(), t.flatten().tolist(), strict=True):
            if x > -margin and y <= 0:
                acc += (x + margin) ** 2
            if x <= margin and y > 0:
                acc += (x - margin) ** 2
        total += 2 ** (i - n + 1) * acc / bsz / 1000 * 3
    return total


def rep_fsp(g_s, g_t):
    """FSP.py's compute_fsp / compute_loss, summed as helper/pretrain.py does."""
    def compute(g):
        out = []
        for i in range(len(g) - 1):
            bot, top = g[i], g[i + 1]
            b_h, t_h = bot.shape[2], top.shape[2]
            if b_h > t_h:
                bot = F.adaptive_avg_pool2d(bot, (t_h, t_h))
            elif b_h < t_h:
                top = F.adaptive_avg_pool2d(top, (b_h, b_h))
            bot = bot.unsqueeze(1)
            top = top.unsqueeze(2)
            bot = bot.view(bot.shape[0], bot.shape[1], bot.shape[2], -1)
            top = top.view(top.shape[0], top.shape[1], top.shape[2], -1)
            out.append((bot * top).mean(-1))
        return out

    return sum((s - t).pow(2).mean() for s, t in zip(compute(g_s), compute(g_t), strict=True))


def rep_factor(f):
    return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))


# --------------------------------------------------------------- values and the default
@pytest.mark.parametrize("name,values", [
    ("cc", {"weight": 0.02, "gamma": 0.4, "order": 2, "feat_dim": 128}),
    ("vid", {"weight": 1.0, "init_var": 5.0, "hidden_factor": 1.0}),
    ("ab", {"weight": 1.0, "margin": 1.0, "init_epochs": 30, "init_lr": 0.05}),
    ("fsp", {"weight": 1.0, "init_epochs": 30, "init_lr": 0.05}),
    ("ft", {"weight": 200.0, "k": 0.5, "paraphraser_epochs": 30, "paraphraser_lr": 0.01,
            "use_bn": "reference"})])
def test_repdistiller_values_are_given_when_unset(name, values):
    assert method_defaults(name)["variant"] == "reference"
    effective = method_params(name, {"variant": "repdistiller"}).to_dict()
    assert effective == {**values, "variant": "repdistiller"}
    assert method_params(name, {"variant": "repdistiller", "weight": 2.5}).weight == 2.5
    assert method_params(name, {}).to_dict() == method_defaults(name)


@pytest.mark.parametrize("name,values", [
    ("cc", {"weight": 100.0, "gamma": 0.4, "order": 2, "feat_dim": 128}),
    ("vid", {"weight": 1.0, "init_var": 5.0, "hidden_factor": 1.0}),
    ("ab", {"weight": 10.0, "margin": 2.0, "init_epochs": 50, "init_lr": 0.01}),
    ("fsp", {"weight": 1.0, "init_epochs": 50, "init_lr": 0.01}),
    ("ft", {"weight": 200.0, "k": 0.5, "paraphraser_epochs": 30, "paraphraser_lr": 0.01,
            "use_bn": "reference"})])
def test_the_reference_zoos_values_stay_the_defaults(name, values):
    assert method_defaults(name) == {**values, "variant": "reference"}


@pytest.mark.parametrize("name", METHODS)
def test_reference_variant_is_the_unchanged_default(name):
    ctx, s_raw, t_raw = pair(teacher="resnet8x4", student="resnet8")
    init = Stage("init", 1) if name in ("ab", "fsp") else None
    torch.manual_seed(3)
    default, default_terms = run(name, ctx, s_raw, t_raw, stage=init)
    torch.manual_seed(3)
    explicit, explicit_terms = run(name, ctx, s_raw, t_raw, stage=init, variant="reference")
    assert default.requests == explicit.requests
    assert list(default.state_dict()) == list(explicit.state_dict())
    assert {k: v.item() for k, v in default_terms.items()} == \
        {k: v.item() for k, v in explicit_terms.items()}


# ------------------------------------------------------------------------------------ CC
def test_cc_embeds_both_pooled_features_and_takes_repdistillers_correlation():
    ctx, s_raw, t_raw = pair(teacher="resnet8x4", student="resnet8")
    method, terms = run("cc", ctx, s_raw, t_raw, variant="repdistiller")
    assert (method.embed_s.in_features, method.embed_s.out_features) == (64, 128)
    assert (method.embed_t.in_features, method.embed_t.out_features) == (256, 128)
    e_s = s_raw["pool"] @ method.embed_s.weight.t() + method.embed_s.bias
    e_t = t_raw["pool"] @ method.embed_t.weight.t() + method.embed_t.bias
    expected = 0.02 * loop_correlation(e_s, e_t)
    assert terms["cc"].item() == pytest.approx(expected, rel=1e-10)
    terms["cc"].backward()
    # both embeddings learn (RepDistiller's trainable_list holds embed_s and embed_t)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())


def test_repdistiller_correlation_by_hand_and_its_gradient():
    e_s = torch.tensor([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]], dtype=torch.float64)
    e_t = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    # d = [[1, 2], [0.5, 1], [2, 2]]: (1*0.5 + 2*1 + 0.5*2 + 1*2) / 2 = 2.75
    assert KR.repdistiller_correlation(e_s, e_t).item() == pytest.approx(2.75, rel=1e-14)
    assert KR.repdistiller_correlation(e_s[:1], e_t[:1]).item() == 0.0
    a = (e_s + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: KR.repdistiller_correlation(x, e_t), (a,))
    r32 = KR.repdistiller_correlation(e_s.float(), e_t.float())
    assert r32.dtype == torch.float32 and r32.item() == pytest.approx(2.75)


# ----------------------------------------------------------------------------------- VID
@pytest.mark.parametrize("teacher,student", [("resnet8x4", "resnet8"), ("vgg13", "vgg8")])
def test_vid_sums_all_stages_with_repdistillers_eps(teacher, student):
    ctx, s_raw, t_raw = pair(teacher, student)
    method, terms = run("vid", ctx, s_raw, t_raw, variant="repdistiller")
    depth = len(ctx.infos["student"].stages)
    assert len(method.regressors) == depth
    g_s, g_t = feats(s_raw)[1:-1], feats(t_raw)[1:-1]
    expected = 0.0
    for regressor, f_s, f_t in zip(method.regressors, g_s, g_t, strict=True):
        # alpha is a float32 parameter (as RepDistiller's log_scale) until .double()
        assert regressor.variance().tolist() == pytest.approx([5.0] * f_t.shape[1], rel=1e-6)
        expected = expected + rep_vid_loss(regressor.regressor, regressor.alpha, 1e-5, f_s, f_t)
    assert terms["vid"].item() == pytest.approx(expected.item(), rel=1e-10)


def test_vid_keeps_pytorchs_default_init():
    ctx, _, _ = pair()
    torch.manual_seed(7)
    method = create_method("vid", ctx, variant="repdistiller")
    torch.manual_seed(7)
    expected = [nn.Conv2d(*shape, kernel_size=1, bias=False).weight
                for regressor in method.regressors
                for shape in [(c.in_channels, c.out_channels) for c in regressor.regressor
                              if isinstance(c, nn.Conv2d)]]
    found = [c.weight for regressor in method.regressors for c in regressor.regressor
             if isinstance(c, nn.Conv2d)]
    assert all(torch.equal(a, b) for a, b in zip(found, expected, strict=True))


# ------------------------------------------------------------------------------------ AB
@pytest.mark.parametrize("teacher,student,convs", [
    ("resnet8x4", "resnet8x4", 0),        # equal shapes: no connector
    ("resnet8x4", "resnet8", 3),          # other widths: ConvReg 1x1 without ReLU
    ("vgg13", "vgg8", 0)])                # four stages, equal widths
def test_ab_init_loss_is_repdistillers_on_connected_preactivations(teacher, student, convs):
    ctx, s_raw, t_raw = pair(teacher, student)
    method, terms = run("ab", ctx, s_raw, t_raw, stage=Stage("init", 1), variant="repdistiller")
    assert method.requests["student"].preact
    regs = [c for c in method.connector if isinstance(c, ConvRegressor)]
    assert len(regs) == convs and all(not r.use_relu and r.conv.bias is not None for r in regs)
    g_s, g_t = feats(s_raw, preact=True)[1:-1], feats(t_raw, preact=True)[1:-1]
    assert len(g_s) == len(method.connector)

    def connect(c, x):
        if isinstance(c, nn.Identity):
            return x
        y = F.conv2d(x, c.conv.weight, c.conv.bias)
        return F.batch_norm(y, None, None, c.bn.weight, c.bn.bias, training=True, eps=c.bn.eps)

    expected = loop_ab_loss([connect(c, s) for c, s in zip(method.connector, g_s, strict=True)],
                            g_t)
    assert terms["ab"].item() == pytest.approx(expected, rel=1e-10)


def test_repdistiller_activation_boundary_by_hand():
    s = [torch.tensor([[[[0.5, -2.0]]]], dtype=torch.float64),
         torch.tensor([[[[1.5, 0.2]]]], dtype=torch.float64)]
    t = [torch.tensor([[[[-1.0, 3.0]]]], dtype=torch.float64),
         torch.tensor([[[[2.0, -0.1]]]], dtype=torch.float64)]
    # stage 0 (weight 1/2): 0.5 > -1, t <= 0: (1.5)^2; -2 <= 1, t > 0: (-3)^2 -> 11.25
    # stage 1 (weight 1): 1.5 > 1 and t > 0: nothing; 0.2 > -1, t <= 0: 1.2^2 = 1.44
    expected = (0.5 * 11.25 + 1.44) * 3 / 1000
    found = KR.repdistiller_activation_boundary(s, t)
    assert found.item() == pytest.approx(expected, rel=1e-14)
    with pytest.raises(ValueError):
        KR.repdistiller_activation_boundary(s, t[:1])


# ----------------------------------------------------------------------------------- FSP
@pytest.mark.parametrize("teacher,student", [("resnet8x4", "resnet8x4"), ("vgg13", "vgg8"),
                                             ("resnet20", "resnet8")])
def test_fsp_sums_repdistillers_matrices_over_stem_and_all_stages(teacher, student):
    ctx, s_raw, t_raw = pair(teacher, student)
    method, terms = run("fsp", ctx, s_raw, t_raw, stage=Stage("init", 1), variant="repdistiller")
    assert not method.connectors  # equal widths: RepDistiller's exact loss
    expected = rep_fsp(feats(s_raw)[:-1], feats(t_raw)[:-1])
    assert terms["fsp"].item() == pytest.approx(expected.item(), rel=1e-10)


def test_repdistiller_fsp_matrix_is_the_transposed_reference_matrix():
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    b = torch.randn(2, 4, 4, 4, generator=gen, dtype=torch.float64)
    from kdzoo import functional as KF
    assert torch.allclose(KR.repdistiller_fsp_matrix(a, b), KF.fsp_matrix(a, b).transpose(1, 2),
                          atol=1e-14)
    x = a.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda u: KR.repdistiller_fsp([u, b], [a, b]), (x,))


# ------------------------------------------------------------------------------------ FT
def test_ft_modules_are_repdistillers_paraphraser_and_translator():
    ctx, _, _ = pair(teacher="resnet8x4", student="resnet8")
    torch.manual_seed(11)
    method = create_method("ft", ctx, variant="repdistiller")
    convs = [m for m in method.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 9 and all(c.bias is not None for c in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in method.paraphraser.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in method.translator.modules()) == 3
    # PyTorch's default init, in RepDistiller's construction order (paraphraser, translator)
    torch.manual_seed(11)
    shapes = [(256, 256, False), (256, 128, False), (128, 128, False),
              (128, 128, True), (128, 256, True), (256, 256, True),
              (64, 64, False), (64, 128, False), (128, 128, False)]
    for conv, (c_in, c_out, transpose) in zip(convs, shapes, strict=True):
        fresh = (nn.ConvTranspose2d if transpose else nn.Conv2d)(c_in, c_out, 3, 1, 1)
        assert torch.equal(conv.weight, fresh.weight) and torch.equal(conv.bias, fresh.bias)


@pytest.mark.parametrize("teacher,student", [("resnet8x4", "resnet8"), ("wrn_40_2", "ShuffleV1")])
def test_ft_main_loss_is_repdistillers_factor_transfer(teacher, student):
    ctx, s_raw, t_raw = pair(teacher, student)
    method, terms = run("ft", ctx, s_raw, t_raw, variant="repdistiller")
    f_s, f_t = feats(s_raw)[-2], feats(t_raw)[-2]
    factor_s = method.translator(f_s)
    with torch.no_grad():
        factor_t = method.paraphraser.encoder(f_t)
    factor_s, factor_t = rep_pool(factor_s, factor_t)
    expected = 200 * (rep_factor(factor_s) - rep_factor(factor_t)).abs().mean()
    assert terms["ft"].item() == pytest.approx(expected.item(), rel=1e-10)


def test_repdistiller_factor_by_hand():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    # channel mean of f^2: [5, 2], normalised: [5, 2] / sqrt(29)
    assert KR.repdistiller_factor(f).tolist()[0] == pytest.approx(
        [5 / math.sqrt(29), 2 / math.sqrt(29)], rel=1e-14)


def test_ft_paraphraser_stage_uses_the_runs_momentum_and_weight_decay():
    ctx, _, _ = pair()
    main = Stage("main", 240, MultiStep(0.05, (150, 180, 210)))
    reference = create_method("ft", ctx).stages(main)[0]
    assert reference.optimizer_settings == {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4,
                                            "nesterov": False}
    pre, second = create_method("ft", ctx, variant="repdistiller").stages(main)
    assert (pre.name, pre.epochs, pre.trainable, pre.uses_student) == (
        "paraphraser", 30, "method", False)
    assert pre.optimizer_settings == {"lr": 0.01, "nesterov": False}
    assert second is main


# --------------------------------------------------------------- the initialisation stage
@pytest.mark.parametrize("name", ["ab", "fsp"])
def test_repdistiller_init_stage_settings(name):
    ctx, _, _ = pair()
    main = Stage("main", 240, MultiStep(0.05, (150, 180, 210)))
    init, second = create_method(name, ctx, variant="repdistiller", init_lr=0.01).stages(main)
    assert (init.name, init.epochs, init.ce_weight, init.keep_zero_ce, init.evaluate) == (
        "init", 30, 0.0, False, False)
    assert init.optimizer == "init" and init.optimizer_settings == {"lr": 0.01}
    assert [init.schedule.lr(e) for e in (1, 15, 30)] == [0.01, 0.01, 0.01]
    assert (second.name, second.optimizer, second.method_weight, second.schedule) == (
        "main", "main", 0.0, main.schedule)


@pytest.mark.parametrize("name", ["ab", "fsp"])
def test_repdistiller_init_leaves_the_classifier_alone_and_starts_a_new_optimizer(
        make_config, tmp_path, name):
    config = make_config(method={"name": name, "variant": "repdistiller", "init_epochs": 1},
                         teacher={"name": "resnet8x4", "untrained": True},
                         optim={"epochs": 1, "weight_decay": 5e-4})
    parts = build(config)
    init, main = parts.stages
    trainer = Trainer(parts, RunDir.prepare(tmp_path / "steps"), progress=False)
    opt_init, = trainer.stage_optimizers(init)
    opt_main, = trainer.stage_optimizers(main)
    assert opt_init is not opt_main
    assert opt_init.defaults["lr"] == 0.05 and opt_init.defaults["weight_decay"] == 5e-4
    batch = next(parts.loader.train_batches(config.seed, 1))
    terms, _ = trainer.step_terms(batch, init, 1, 0)
    assert set(terms) == {name}  # no cross-entropy, not even times 0
    fc = {k: v.clone() for k, v in parts.student.fc.state_dict().items()}
    opt_init.zero_grad(set_to_none=True)
    terms[name].backward()
    assert parts.student.fc.weight.grad is None
    opt_init.step()
    assert all(torch.equal(v, parts.student.fc.state_dict()[k]) for k, v in fc.items())
    first = parts.student.conv1.weight
    assert first.grad is not None and opt_init.state[first]["momentum_buffer"] is not None
    assert first not in opt_main.state  # the main stage's optimiser starts afresh


def test_repdistiller_ab_fit_runs_its_stages(make_config):
    config = make_config(method={"name": "ab", "variant": "repdistiller", "init_epochs": 2,
                                 "init_lr": 0.02},
                         optim={"epochs": 2, "lr": 0.1, "milestones": [1]})
    metrics = read_metrics(fit(config, progress=False).path)
    assert [(m["stage"], m["stage_epoch"]) for m in metrics] == [
        ("init", 1), ("init", 2), ("main", 1), ("main", 2)]
    assert [m["lr"] for m in metrics] == pytest.approx([0.02, 0.02, 0.1, 0.01])
    assert all(set(m["terms"]) == {"loss", "ab"} and "test" not in m for m in metrics[:2])
    assert all(set(m["terms"]) == {"loss", "ce"} and "test" in m for m in metrics[2:])


@pytest.mark.parametrize("name,extra", [("cc", {}), ("vid", {}), ("fsp", {"init_epochs": 1}),
                                        ("ft", {"paraphraser_epochs": 1})])
def test_repdistiller_variants_train(make_config, name, extra):
    config = make_config(method={"name": name, "variant": "repdistiller", **extra},
                         teacher={"name": "resnet8x4", "untrained": True},
                         optim={"epochs": 1})
    metrics = read_metrics(fit(config, progress=False).path)
    assert metrics[-1]["stage"] == "main" and metrics[-1]["terms"]["ce"] > 0
    assert all(math.isfinite(v) for m in metrics for v in m["terms"].values())
