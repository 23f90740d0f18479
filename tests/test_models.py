"""Every registered network keeps the feature contract: parameter counts, stage metadata equal to
the real shapes, RepDistiller's keys, logits and features, folded == unfolded, no feature
modified in place."""
import pytest
import torch
import torch.nn as nn

import kdzoo
from kdzoo.engine.teacher import fold_batchnorm
from kdzoo.models import Features, count_parameters
from kdzoo.models.registry import MODELS

from model_reference import (NUM_CLASSES, fill_deterministic, load_reference, reference_input,
                             reference_names)

REFERENCE_COUNTS = {
    ("resnet20", 10): 272_474,
    ("resnet20", 100): 278_324,
    ("resnet110", 10): 1_730_714,
    ("resnet110", 100): 1_736_564,
}
#: The 22 names of RepDistiller's and mdistiller's model dictionaries.
COMMUNITY = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
             "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8",
             "vgg11", "vgg13", "vgg16", "vgg19", "ResNet50", "MobileNetV2", "ShuffleV1",
             "ShuffleV2"]
#: Published parameter counts for 100 classes (the issue's list, from RepDistiller's models).
PUBLISHED_100 = {"resnet8": 83_892, "resnet8x4": 1_233_540, "resnet32x4": 7_433_860,
                 "wrn_16_2": 703_284, "wrn_40_2": 2_255_156, "vgg8": 3_965_028,
                 "vgg13": 9_462_180, "ResNet50": 23_705_252, "MobileNetV2": 812_836,
                 "ShuffleV1": 949_258, "ShuffleV2": 1_355_528}
BIG = {"ResNet50", "vgg16", "vgg19", "resnet32x4"}  # slow on 2 CPU cores: fewer images
#: Adapted library models, checked by the same contract tests as kdzoo's own.
FOREIGN = ["torchvision/resnet18", "torchvision/mobilenet_v3_small"]
try:
    import timm  # noqa: F401

    FOREIGN.append("timm/resnet18")
except ImportError:
    pass
EVERY = kdzoo.list_models() + FOREIGN


@pytest.mark.parametrize("name,classes", sorted(REFERENCE_COUNTS))
def test_parameter_counts_equal_the_reference(name, classes):
    model = kdzoo.create_model(name, num_classes=classes)
    assert count_parameters(model) == REFERENCE_COUNTS[(name, classes)]


@pytest.mark.parametrize("name", sorted(PUBLISHED_100))
def test_published_parameter_counts(name):
    assert count_parameters(kdzoo.create_model(name, num_classes=100)) == PUBLISHED_100[name]


def test_registry_holds_the_community_architectures():
    assert set(COMMUNITY) <= set(kdzoo.list_models())
    assert set(reference_names()) == set(COMMUNITY)  # a fixture for every one of them
    for alias, name in (("mobile_half", "MobileNetV2"), ("resnet50", "ResNet50"),
                        ("shufflev2", "ShuffleV2")):
        assert kdzoo.create_model(alias).model_name == name


def test_wide_variants_have_repdistiller_widths():
    info = kdzoo.create_model("resnet8x4").feature_info
    assert [info.stem.channels, *(s.channels for s in info.stages)] == [32, 64, 128, 256]


# ------------------------------------------------------------------- the feature contract
def random_batchnorm_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
    return model


def every_tensor(features: Features) -> dict[str, torch.Tensor]:
    found = {"logits": features.logits, "pool": features.pool, "stem": features.stem,
             "pre_pool": features.pre_pool}
    found.update({f"stage{i}": t for i, t in enumerate(features.stages)})
    found.update({f"pre{i}": t for i, t in enumerate(features.stages_pre or [])})
    return {k: v for k, v in found.items() if v is not None}


@pytest.mark.parametrize("name", EVERY)
def test_stage_metadata_equals_the_real_shapes(name):
    model = kdzoo.create_model(name, num_classes=7).eval()
    info = model.feature_info
    with torch.no_grad():
        feats = model.features(torch.randn(2, 3, 32, 32))
    assert len(feats.stages) == len(info.stages) >= 1
    for stage, found in zip(info.stages, feats.stages, strict=True):
        assert tuple(found.shape) == (2, stage.channels, 32 // stage.reduction,
                                      32 // stage.reduction)
    assert (feats.stages_pre is not None) == all(s.preact for s in info.stages)
    if feats.stages_pre is not None:
        for found, post in zip(feats.stages_pre, feats.stages, strict=True):
            assert found.shape == post.shape
    for stage in info.stages:
        if stage.bn_before_relu is not None:
            bn = model.get_submodule(stage.bn_before_relu)
            assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == stage.channels
    if info.stem is not None:
        side = 32 // info.stem.reduction
        assert tuple(feats.stem.shape) == (2, info.stem.channels, side, side)
    assert tuple(feats.pool.shape) == (2, info.pool)
    assert tuple(feats.logits.shape) == (2, info.logits) == (2, 7)
    # the classifier maps the pooled feature to the logits; pre_pool is what is pooled
    assert torch.allclose(model.classifier_layer()(feats.pool), feats.logits, atol=1e-5)
    assert (feats.pre_pool is not None) == (info.pre_pool is not None)
    if info.pre_pool is not None:
        assert feats.pre_pool.shape[1] == info.pre_pool
        assert torch.allclose(feats.pre_pool.mean((2, 3)), feats.pool, atol=1e-5)
    assert torch.equal(model(torch.zeros(1, 3, 32, 32)), model.features(
        torch.zeros(1, 3, 32, 32)).logits)


@pytest.mark.parametrize("name", EVERY)
def test_folded_teacher_gives_the_unfolded_features(name):
    torch.manual_seed(0)
    model = random_batchnorm_statistics(kdzoo.create_model(name, num_classes=10)).eval()
    images = torch.randn(2 if name in BIG else 4, 3, 32, 32)
    folded = fold_batchnorm(model)
    with torch.no_grad():
        want = every_tensor(model.features(images))
        got = every_tensor(Features.from_raw(folded(images)))
    assert want.keys() == got.keys()
    for key in want:
        scale = want[key].abs().max().clamp_min(1e-3)
        assert ((got[key] - want[key]).abs().max() / scale).item() < 1e-4, key
    remaining = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert remaining < sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", EVERY)
def test_no_feature_is_modified_in_place(name):
    torch.manual_seed(0)
    model = kdzoo.create_model(name, num_classes=10).train()
    feats = model.features(torch.randn(2, 3, 32, 32))
    versions = {k: v._version for k, v in every_tensor(feats).items()}
    feats.logits.sum().backward()  # autograd needs none of the values overwritten in place
    assert {k: v._version for k, v in every_tensor(feats).items()} == versions


# ----------------------------------------------- RepDistiller's models, number for number
@pytest.fixture(scope="module", params=reference_names())
def reference_pair(request):
    name = request.param
    reference = load_reference(name)
    model = MODELS.get(name)(num_classes=NUM_CLASSES)
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    parameters = count_parameters(model)
    fill_deterministic(model)
    return name, reference, model, keys, parameters


def close(got: torch.Tensor, want: list) -> bool:
    want = torch.tensor(want, dtype=torch.float64)
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item() < 1e-9


def test_state_dict_keys_and_counts_are_repdistillers(reference_pair):
    _, reference, _, keys, parameters = reference_pair
    assert keys == reference["state_dict"]
    assert parameters == reference["parameters"]


def test_logits_and_features_are_repdistillers(reference_pair):
    _, reference, model, _, _ = reference_pair
    x = reference_input()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        feats = model.eval().features(x)
        assert close(feats.logits, reference["logits_eval"])
        assert close(model.train()(x), reference["logits_train"])
    model.load_state_dict(state)  # train mode moved the BatchNorm statistics
    for found, (shape, total) in zip(
            [feats.stem, *feats.stages, feats.pool] if feats.stem is not None
            else [*feats.stages, feats.pool], reference["feats"], strict=True):
        assert list(found.shape) == shape and found.sum().item() == pytest.approx(total,
                                                                                 rel=1e-9, abs=1e-9)
    if feats.stages_pre is not None:
        pre = [feats.stem, *feats.stages_pre, feats.pool] if feats.stem is not None \
            else [*feats.stages_pre, feats.pool]
        for found, (shape, total) in zip(pre, reference["feats_preact"], strict=True):
            assert list(found.shape) == shape
            assert found.sum().item() == pytest.approx(total, rel=1e-9, abs=1e-9)
    names = [s.bn_before_relu for s in model.feature_info.stages]
    assert names == (reference["bn_before_relu"] or [None] * len(names))


def test_a_repdistiller_checkpoint_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    theirs = kdzoo.create_model("wrn_16_2", num_classes=100).eval()
    torch.save({"model": theirs.state_dict(), "epoch": 240}, tmp_path / "ckpt_epoch_240.pth")
    ours = kdzoo.create_model("wrn_16_2", num_classes=100,
                              checkpoint=tmp_path / "ckpt_epoch_240.pth").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


# ---------------------------------------------------------------- the CIFAR ResNets' points
def test_pre_and_post_relu_points_are_consistent():
    model = kdzoo.create_model("resnet20").eval()
    feats = model.features(torch.randn(3, 3, 32, 32))
    for post, pre in zip(feats.stages, feats.stages_pre, strict=True):
        assert torch.equal(post, torch.relu(pre))
        assert (pre < 0).any()  # really before the ReLU
    assert torch.allclose(feats.pool, feats.stages[-1].mean(dim=(2, 3)))
    assert torch.allclose(feats.logits, model.fc(feats.pool))


def test_adaptive_pooling_equals_avgpool8_on_cifar_inputs():
    model = kdzoo.create_model("resnet20").eval()
    feats = model.features(torch.randn(2, 3, 32, 32))
    reference = nn.AvgPool2d(8)(feats.stages[-1]).view(2, -1)
    assert torch.allclose(feats.pool, reference, atol=1e-6)


@pytest.mark.parametrize("size,channels", [(28, 1), (8, 1), (32, 3)])
@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1"])
def test_other_input_sizes_and_channels(name, size, channels):
    model = kdzoo.create_model(name, num_classes=10, in_chans=channels)
    feats = model.features(torch.randn(2, channels, size, size))
    assert feats.logits.shape == (2, 10)
    for stage, found in zip(model.feature_info.stages, feats.stages, strict=True):
        assert found.shape[1] == stage.channels


def test_init_follows_the_reference():
    model = kdzoo.create_model("resnet20")
    bn = model.layer2[0].bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    conv = model.layer3[1].conv1  # kaiming normal, fan_out = 64 * 3 * 3
    assert abs(conv.weight.std().item() - (2 / (64 * 9)) ** 0.5) < 0.01
    assert model.layer1[0].downsample is None and model.layer2[0].downsample is not None


def test_unknown_model_suggests_a_name():
    with pytest.raises(kdzoo.KdzooError, match="did you mean .*'resnet20'"):
        kdzoo.create_model("resnet21")


@pytest.mark.parametrize("name", EVERY)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_one_pass_applies_each_layer_once(name, mode):
    """Every feature comes from the one forward pass: no layer (a BatchNorm above all, whose
    running statistics would move twice in train mode) is applied twice."""
    model = kdzoo.create_model(name, num_classes=10).train(mode == "train")
    calls: dict[str, int] = {}
    # layers with weights or statistics (a stateless ReLU module may serve several places)
    leaves = [(n, m) for n, m in model.named_modules()
              if list(m.parameters(recurse=False)) or list(m.buffers(recurse=False))]
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: calls.update({n: calls.get(n, 0) + 1}))
             for n, m in leaves]
    with torch.no_grad():
        model.features(torch.randn(2, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert calls == {n: 1 for n, _ in leaves}
