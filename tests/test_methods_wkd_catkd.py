"""The wkd and catkd methods: the authors' CIFAR defaults, what each variant asks of the networks,
the terms as the weighted functionals on the networks' own classifier weights, the reference's
schedule and options, one-line refusals, and a few training steps of the non-default variants."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdzoo
from kdzoo.spec import method_params, resolve_config
from kdzoo.data.loader import Batch
from kdzoo.engine import RunDir, Trainer, build
from kdzoo.errors import CheckpointError, ConfigError
from kdzoo.functional import activation_maps as KA
from kdzoo.functional import wasserstein as KW
from kdzoo.methods import MethodContext, Stage, Step, create_method, method_defaults
from kdzoo.methods._feature_maps import ConvRegressor
from kdzoo.methods.wkd import BottleneckRegressor, cosine_decay
from kdzoo.models.features import (FeatureInfo, FeatureRequest, StageInfo, check_request,
                                   select)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def networks(teacher="resnet8x4", student="resnet8", classes=10, dtype=torch.float64):
    torch.manual_seed(0)
    s_net = kdzoo.create_model(student, num_classes=classes).to(dtype)
    t_net = kdzoo.create_model(teacher, num_classes=classes).to(dtype).eval()
    return s_net, t_net


def prepare(name, teacher="resnet8x4", student="resnet8", batch=6, epoch=1, epochs=240,
          image=16, **params):
    """(method, student features, teacher features, step, networks) on one float64 batch."""
    s_net, t_net = networks(teacher, student)
    ctx = MethodContext({"student": s_net.feature_info, "teacher": t_net.feature_info}, 10,
                        image, 3, torch.arange(40) % 10)
    method = create_method(name, ctx, **params).to(torch.float64)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, image, image, generator=gen, dtype=torch.float64)
    labels = torch.arange(batch) % 10
    student = select(s_net.forward_features(images), method.requests["student"])
    with torch.no_grad():
        teacher = select(t_net.forward_features(images), method.requests["teacher"])
    step = Step(Batch(images, labels, torch.arange(batch)), Stage("main", epochs), epoch, 0,
                networks={"student": s_net, "teacher": t_net})
    return method, student, teacher, step, (s_net, t_net)


# ----------------------------------------------------------------------------------- WKD
def test_wkd_defaults_are_the_authors_cifar_configs():
    """JiamingLv/WKD@214cf88 configs/cifar100/wkd_{l,f,lf}/res32x4_res8x4.yaml: WKD-L 600 at
    T 8, WKD-F 0.08 with ratio 4 and grid 1, WKD-L+F 200 / 0.08 with ratio 8."""
    assert method_defaults("wkd") == {
        "variant": "logit", "ce_weight": 1.0, "logit_weight": 600.0, "feature_weight": 0.08,
        "cosine_decay_epoch": 150, "temperature": 8.0, "sinkhorn_reg": 0.05, "sinkhorn_iter": 10,
        "cost": "fc", "cost_path": "", "cost_sharpen": 1.0, "feature_stage": -1,
        "projector": "conv1x1", "mean_cov_ratio": 4.0, "eps": 1e-5, "spatial_grid": 1}
    feature = method_params("wkd", {"variant": "feature"})
    assert (feature.feature_weight, feature.mean_cov_ratio, feature.spatial_grid) == (0.08, 4.0, 1)
    both = method_params("wkd", {"variant": "both"})
    assert (both.logit_weight, both.feature_weight, both.mean_cov_ratio, both.temperature) == (
        200.0, 0.08, 8.0, 8.0)
    assert method_params("wkd", {"variant": "both", "logit_weight": 5.0}).logit_weight == 5.0


@pytest.mark.parametrize("variant,expected", [
    ("logit", {"logit_weight": 200.0, "temperature": 6.0}),
    ("feature", {"feature_weight": 0.3, "mean_cov_ratio": 3.0, "spatial_grid": 4}),
    ("both", {"logit_weight": 60.0, "feature_weight": 0.5, "mean_cov_ratio": 3.0,
              "spatial_grid": 4, "temperature": 4.0}),
])
def test_wkd_recipes_give_the_authors_wrn_40_2_shufflev1_configs(variant, expected):
    """JiamingLv/WKD@214cf88 configs/cifar100/wkd_{l,f,lf}/wrn40_2_shuv1.yaml, and the authors'
    Nesterov SGD (mdistiller/engine/trainer.py line 55) on every CIFAR-100 pair."""
    config = resolve_config(overrides={
        "preset": "repdistiller", "method": {"name": "wkd", "variant": variant},
        "teacher": {"name": "wrn_40_2", "untrained": True}, "student": {"name": "ShuffleV1"},
        "data": {"name": "cifar100"}})
    params = config.method.params
    assert {key: getattr(params, key) for key in expected} == expected
    assert config.optim.nesterov is True and config.optim.lr == 0.01
    plain = resolve_config(overrides={
        "preset": "repdistiller", "method": {"name": "wkd"},
        "teacher": {"name": "resnet32x4", "untrained": True}, "student": {"name": "resnet8x4"},
        "data": {"name": "cifar100"}})
    assert (plain.method.params.logit_weight, plain.method.params.temperature) == (600.0, 8.0)
    assert plain.optim.nesterov is True


def test_wkd_requests_depend_on_the_variant():
    for variant, request in (("logit", FeatureRequest()),
                             ("feature", FeatureRequest(stages=(-1,))),
                             ("both", FeatureRequest(stages=(-1,)))):
        method, *_ = prepare("wkd", variant=variant)
        assert method.requests == {"student": request, "teacher": request}
    assert not type(method).can_use_teacher_cache()


def test_wkd_logit_term_uses_the_teachers_classifier_cost():
    method, student, teacher, step, (_, t_net) = prepare("wkd")
    terms = method({"student": student, "teacher": teacher}, step)
    assert set(terms) == {"wkd_target", "wkd_logit"}
    w = t_net.fc.weight.detach()
    unit = w / w.norm(dim=1, keepdim=True)
    cost = 1 - torch.exp(-(1 - unit @ unit.t()))  # COST_MATRIX_SHARPEN 1
    target, distance = KW.wkd_logit(student.logits, teacher.logits, step.batch.labels, cost,
                                     8.0, 0.05, 10)
    assert terms["wkd_target"].item() == pytest.approx(target.item(), rel=1e-12)
    assert terms["wkd_logit"].item() == pytest.approx(600 * distance.item(), rel=1e-10)
    terms["wkd_logit"].backward()
    assert t_net.fc.weight.grad is None


def test_wkd_cosine_decay_follows_the_reference_schedule():
    assert cosine_decay(800.0, 150, 240, 150) == 800.0
    assert cosine_decay(800.0, 195, 240, 150) == pytest.approx(400.0)
    assert cosine_decay(800.0, 240, 240, 150) == pytest.approx(0.0, abs=1e-12)
    assert cosine_decay(800.0, 151, 240, 150) == pytest.approx(
        400 * (1 + math.cos(math.pi / 90)))
    assert cosine_decay(800.0, 20, 20, 150) == 800.0  # short runs never decay
    first = prepare("wkd", variant="both", epoch=1)
    late = prepare("wkd", variant="both", epoch=195)
    a = first[0]({"student": first[1], "teacher": first[2]}, first[3])
    b = late[0]({"student": late[1], "teacher": late[2]}, late[3])
    assert b["wkd_target"].item() == pytest.approx(a["wkd_target"].item())
    for name in ("wkd_logit", "wkd_feature"):
        assert b[name].item() == pytest.approx(a[name].item() / 2, rel=1e-10)


def test_wkd_feature_term_through_the_projector():
    method, student, teacher, step, _ = prepare("wkd", variant="feature")
    assert isinstance(method.projector, ConvRegressor)
    conv = method.projector.conv
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is not None
    assert (conv.in_channels, conv.out_channels) == (64, 256)
    terms = method({"student": student, "teacher": teacher}, step)
    projected = F.relu(method.projector.bn(conv(student.stages[-1])))
    mean_term, std_term = KW.gaussian_wasserstein(projected, teacher.stages[-1], 1e-5, 1)
    assert set(terms) == {"wkd_feature"}
    assert terms["wkd_feature"].item() == pytest.approx(
        0.08 * (4 * mean_term.item() + std_term.item()), rel=1e-10)


def test_wkd_projectors_follow_the_spatial_sizes():
    # ShuffleV1's last stage is half the size of wrn_40_2's: a transposed convolution
    method, *_ = prepare("wkd", teacher="wrn_40_2", student="ShuffleV1", variant="feature")
    assert isinstance(method.projector.conv, nn.ConvTranspose2d)
    method, student, teacher, step, _ = prepare("wkd", variant="feature",
                                                projector="bottleneck", spatial_grid=2)
    assert isinstance(method.projector, BottleneckRegressor)
    assert method({"student": student, "teacher": teacher}, step)["wkd_feature"].isfinite()


@pytest.mark.parametrize("params,message", [
    ({"cost": "file"}, ("method wkd: cost=file needs cost_path, a torch.save'd (classes x "
                        "classes) cost matrix")),
    ({"feature_stage": 0}, ("method wkd: feature_stage counts stages from the end (-1 is the "
                            "last), got 0")),
    ({"sinkhorn_iter": 0}, ("method wkd: sinkhorn_iter and spatial_grid must be at least 1, "
                            "got 0 and 1")),
    ({"temperature": 0.0}, "method wkd: temperature must be positive, got 0.0"),
])
def test_wkd_refuses_bad_settings_in_one_line(params, message):
    with pytest.raises(ConfigError) as caught:
        method_params("wkd", params).to_dict()
    assert str(caught.value) == message


def test_wkd_refuses_networks_it_cannot_serve():
    with pytest.raises(ConfigError, match="projector=bottleneck needs maps of one size"):
        prepare("wkd", teacher="wrn_40_2", student="ShuffleV1", variant="feature",
                projector="bottleneck")
    with pytest.raises(ConfigError, match="has a grid cell of one position"):
        prepare("wkd", variant="feature", image=8, spatial_grid=2)  # 2x2 teacher map
    with pytest.raises(ConfigError, match="RepDistiller's ConvReg cannot map a 2x2"):
        ConvRegressor("wkd", (8, 2, 2), (8, 8, 8))


def test_wkd_cost_file_is_loaded_sharpened_and_checked(tmp_path):
    dist = KW.linear_cka_cost(torch.randn(10, 12, 5, dtype=torch.float64))
    path = tmp_path / "linear_cka.pth"
    torch.save(dist, path)
    method, student, teacher, step, _ = prepare("wkd", cost="file", cost_path=str(path))
    expected = 1 - torch.exp(-dist.float())
    assert torch.allclose(method.cost_matrix.float(), expected)
    assert "cost_matrix" not in method.state_dict()
    _, distance = KW.wkd_logit(student.logits, teacher.logits, step.batch.labels,
                               method.cost_matrix, 8.0, 0.05, 10)
    value = method({"student": student, "teacher": teacher}, step)["wkd_logit"]
    assert value.item() == pytest.approx(600 * distance.item(), rel=1e-10)
    torch.save(torch.zeros(3, 3), path)
    with pytest.raises(ConfigError, match=r"holds \(3, 3\), not a \(10, 10\) cost matrix"):
        prepare("wkd", cost="file", cost_path=str(path))
    with pytest.raises(ConfigError, match="is not a file"):
        prepare("wkd", cost="file", cost_path=str(tmp_path / "missing.pth"))
    path.write_text("0.1 0.2\n0.3 0.4\n")  # a text matrix, not a torch.save'd tensor
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        prepare("wkd", cost="file", cost_path=str(path))


# -------------------------------------------------------------------------------- CAT-KD
def test_catkd_defaults_are_the_cifar_cfg():
    assert method_defaults("catkd") == {
        "weight": 400.0, "ce_weight": 1.0, "resolution": 2, "normalize": True,
        "only_cat": False, "binarize": False, "partial_cams": False, "cams_num": 100,
        "strategy": "top"}


def reference_cat(student, teacher, s_net, t_net, resolution, normalize):
    """CAT_loss on the outputs of the reference's converted models: a bias-free 1x1 conv with
    the classifier weight applied to the pooled map (conv_test)."""
    def cams(x, net):
        w = net.classifier_layer().weight
        return F.conv2d(x, w.view(*w.shape, 1, 1))

    s, t = cams(student.pre_pool, s_net), cams(teacher.pre_pool, t_net).detach()
    s, t = (F.adaptive_avg_pool2d(x, (resolution, resolution)) for x in (s, t))
    if normalize:
        s, t = (F.normalize(x, dim=(2, 3)) for x in (s, t))
    return F.mse_loss(s, t)


@pytest.mark.parametrize("pair", [("resnet8x4", "resnet8"), ("wrn_40_2", "ShuffleV1")])
@pytest.mark.parametrize("resolution,normalize", [(2, True), (4, False)])
def test_catkd_term_is_the_reference_cat_loss(pair, resolution, normalize):
    method, student, teacher, step, (s_net, t_net) = prepare(
        "catkd", *pair, weight=15.0, resolution=resolution, normalize=normalize)
    assert method.requests["student"] == FeatureRequest(pre_pool=True)
    terms = method({"student": student, "teacher": teacher}, step)
    expected = reference_cat(student, teacher, s_net, t_net, resolution, normalize)
    assert terms["catkd"].item() == pytest.approx(15 * expected.item(), rel=1e-10)
    terms["catkd"].backward()
    assert s_net.classifier_layer().weight.grad.abs().sum() > 0  # the student's CAM weights learn
    assert s_net.classifier_layer().bias.grad is None           # no bias in the CAMs
    assert t_net.classifier_layer().weight.grad is None


def test_catkd_cross_entropy_weight_and_only_cat():
    main = Stage("main", 3)
    method, *_ = prepare("catkd", ce_weight=0.5)
    assert [s.ce_weight for s in method.stages(main)] == [0.5]
    method, *_ = prepare("catkd", only_cat=True)
    assert [s.ce_weight for s in method.stages(main)] == [0.0]


def test_catkd_partial_cams_and_binarization_as_the_reference():
    logits = torch.tensor([[5.0, 1.0, 3.0, 2.0, 4.0], [0.0, 9.0, 8.0, 7.0, 6.0]])
    top = KA._partial_mask(logits, 3, "top")  # above the 3rd largest: 2 classes
    assert top.tolist() == [[True, False, False, False, True], [False, True, True, False, False]]
    bottom = KA._partial_mask(logits, 2, "bottom")  # at most the 3rd largest: 3 classes
    assert bottom.tolist() == [[False, True, True, True, False], [True, False, False, True, True]]
    cams = torch.arange(2 * 5 * 4, dtype=torch.float64).view(2, 5, 2, 2)
    t, s = KA._select_cams(cams, cams + 100, top)
    assert t.shape == (2, 2, 2, 2) and torch.equal(t[0, 1], cams[0, 4])
    assert torch.equal(s[1, 0], cams[1, 1] + 100)
    ragged = torch.tensor([[True, False, False, False, False], [True, True, False, False, False]])
    t, s = KA._select_cams(cams, cams, ragged)  # 3 maps kept for 2 samples: unchanged
    assert t is cams
    maps = torch.tensor([[[[1.0, -3.0], [0.5, 2.0]]]])  # mean |x| = 1.625
    assert KA._binarize(maps).tolist() == [[[[0.0, 0.0], [0.0, 1.0]]]]

    method, student, teacher, step, (s_net, t_net) = prepare(
        "catkd", partial_cams=True, cams_num=4, binarize=True, normalize=False)
    wt, ws = t_net.fc.weight, s_net.fc.weight
    t_cams = KA.class_activation_maps(teacher.pre_pool, wt).detach()
    s_cams = KA.class_activation_maps(student.pre_pool, ws)
    mask = t_cams.mean(dim=(2, 3)) > torch.sort(t_cams.mean(dim=(2, 3)), 1, True)[0][:, 3:4]
    assert (mask.sum(1) == 3).all()
    kept_t = torch.stack([KA._binarize(t_cams)[b, mask[b]] for b in range(len(mask))])
    kept_s = torch.stack([s_cams[b, mask[b]] for b in range(len(mask))])
    expected = 400 * KA.cat_loss(kept_s, kept_t, 2, False)
    value = method({"student": student, "teacher": teacher}, step)["catkd"]
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)


def test_catkd_refusals():
    with pytest.raises(ConfigError, match=r"cams_num must be in \[1, 10\] for strategy=top"):
        prepare("catkd", partial_cams=True, cams_num=0)
    with pytest.raises(ConfigError, match=r"cams_num must be in \[0, 9\] for strategy=bottom"):
        prepare("catkd", partial_cams=True, cams_num=10, strategy="bottom")
    with pytest.raises(ConfigError, match="resolution must be at least 1"):
        method_params("catkd", {"resolution": 0}).to_dict()
    info = FeatureInfo(stages=(StageInfo(8, 1),), pool=8, logits=10)  # no pre_pool
    with pytest.raises(ConfigError) as caught:
        check_request("catkd", "teacher", "tv", FeatureRequest(pre_pool=True), info)
    assert str(caught.value) == ("method catkd needs the map that its global pooling averages of "
                                 "the teacher, which tv does not provide; choose another teacher "
                                 "or method")


# ------------------------------------------------------------ a few real steps per variant
@pytest.mark.parametrize("name,params", [("wkd", {"variant": "both"}),
                                         ("catkd", {"only_cat": True, "partial_cams": True,
                                                    "cams_num": 3})])
def test_other_settings_train_for_real(make_config, tmp_path, name, params):
    config = make_config(method={"name": name, **params},
                         teacher={"name": "resnet8x4", "untrained": True},
                         student={"name": "resnet8"},
                         data={"name": "synthetic", "train_size": 32, "test_size": 16,
                               "image_size": 16},
                         optim={"epochs": 1, "batch_size": 16})
    parts = build(config)
    trainer = Trainer(parts, RunDir.prepare(tmp_path / "steps"), progress=False)
    (stage,) = parts.stages
    setup = trainer.begin_epoch(stage, config.optim.lr)
    batches = parts.loader.train_batches(config.seed, 1)
    for index in range(2):
        result = trainer.train_step(setup, next(batches), stage, 1, index)
        assert result is not None
        assert all(torch.isfinite(v) for v in result[1].values())
        assert all(p.grad is not None for p in parts.method.parameters())
