import pytest
import torch
import torch.nn as nn

import kdzoo
from kdzoo.models import count_parameters, feature_shapes

REFERENCE_COUNTS = {
    ("resnet20", 10): 272_474,
    ("resnet20", 100): 278_324,
    ("resnet110", 10): 1_730_714,
    ("resnet110", 100): 1_736_564,
}
STANDARD_POINTS = ["stem_pre", "stem", "stage1_pre", "stage1", "stage2_pre", "stage2",
                   "stage3_pre", "stage3", "pool", "logits"]


@pytest.mark.parametrize("name,classes", sorted(REFERENCE_COUNTS))
def test_parameter_counts_equal_the_reference(name, classes):
    model = kdzoo.create_model(name, num_classes=classes)
    assert count_parameters(model) == REFERENCE_COUNTS[(name, classes)]


def test_registry_holds_the_cifar_resnets():
    expected = {f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)} | {"resnet8x4", "resnet32x4"}
    assert expected <= set(kdzoo.list_models())


def test_wide_variants_have_repdistiller_widths():
    info = kdzoo.create_model("resnet8x4").feature_info
    assert [info[p].channels for p in ("stem", "stage1", "stage2", "stage3")] == [32, 64, 128, 256]


@pytest.mark.parametrize("name", kdzoo.list_models())
def test_feature_points_match_their_metadata(name):
    model = kdzoo.create_model(name, num_classes=7).eval()
    assert list(model.feature_info) == STANDARD_POINTS
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 32, 32))
    for point, shape in feature_shapes(model, 32).items():
        assert tuple(feats[point].shape) == (2, *shape), point
    assert model.feature_info["stage3"].stride == 4
    assert model.feature_info["pool"].stride is None
    assert torch.equal(feats["logits"], model(torch.randn(2, 3, 32, 32)) * 0 + feats["logits"])


def test_pre_and_post_relu_points_are_consistent():
    model = kdzoo.create_model("resnet20").eval()
    feats = model.forward_features(torch.randn(3, 3, 32, 32))
    for stage in ("stem", "stage1", "stage2", "stage3"):
        assert torch.equal(feats[stage], torch.relu(feats[f"{stage}_pre"]))
        assert (feats[f"{stage}_pre"] < 0).any()  # really before the ReLU
    assert torch.allclose(feats["pool"], feats["stage3"].mean(dim=(2, 3)))
    assert torch.allclose(feats["logits"], model.fc(feats["pool"]))


@pytest.mark.parametrize("name", ["resnet20", "resnet8x4"])
def test_no_captured_tensor_is_modified_in_place(name):
    torch.manual_seed(0)
    model = kdzoo.create_model(name).eval()
    x = torch.randn(4, 3, 32, 32)
    feats = model.forward_features(x)
    versions = {k: v._version for k, v in feats.items()}
    # Each captured stage output, fed again through the next stage, must reproduce the next
    # captured points: a later in-place op on a captured tensor would break this.
    stages = [model.layer1, model.layer2, model.layer3]
    previous = feats["stem"]
    for index, stage in enumerate(stages, start=1):
        with torch.no_grad():
            y = previous
            for block in stage[:-1]:
                y = block(y)
            pre = stage[-1].preactivation(y)
        assert torch.allclose(pre, feats[f"stage{index}_pre"], atol=1e-6)
        previous = feats[f"stage{index}"]
    model.train()
    feats = model.forward_features(x)
    versions = {k: v._version for k, v in feats.items()}
    feats["logits"].sum().backward()  # autograd needs none of the values overwritten in place
    assert {k: v._version for k, v in feats.items()} == versions


def test_adaptive_pooling_equals_avgpool8_on_cifar_inputs():
    model = kdzoo.create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    reference = nn.AvgPool2d(8)(feats["stage3"]).view(2, -1)
    assert torch.allclose(feats["pool"], reference, atol=1e-6)


@pytest.mark.parametrize("size,channels", [(28, 1), (8, 1), (32, 3)])
def test_other_input_sizes_and_channels(size, channels):
    model = kdzoo.create_model("resnet8", num_classes=10, in_chans=channels)
    feats = model.forward_features(torch.randn(2, channels, size, size))
    assert feats["logits"].shape == (2, 10)
    for point, shape in feature_shapes(model, size).items():
        assert tuple(feats[point].shape) == (2, *shape)


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
