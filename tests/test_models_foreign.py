"""torchvision/<name> and timm/<name> models: the adapters of kdzoo.models._foreign."""
import copy
import sys

import pytest
import torch
import torchvision
from torch import fx, nn

import kdzoo
from kdzoo.errors import CheckpointError, ConfigError
from kdzoo.models import count_parameters, feature_shapes
from kdzoo.models._torchvision import adapt_conv_weight
from kdzoo.models.registry import canonical_model_name, model_factory

TORCHVISION = ["torchvision/resnet18", "torchvision/mobilenet_v3_small"]
TIMM = ["timm/mobilenetv3_small_050", "timm/resnet18"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


_BUILT: dict = {}


def built(name, in_chans=1):
    """One adapter per (name, in_chans) for the whole module (a deepcopy for each test)."""
    key = (name, in_chans)
    if key not in _BUILT:
        torch.manual_seed(0)
        _BUILT[key] = kdzoo.create_model(name, num_classes=10, in_chans=in_chans).eval()
    return copy.deepcopy(_BUILT[key])


def images(size=64, in_chans=1, n=2):
    return torch.randn(n, in_chans, size, size, generator=torch.Generator().manual_seed(1))


def randomise_batchnorm(model):
    """Non-trivial running statistics, so that a wrong mapping of weights would show."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    return model


class FeaturesOf(nn.Module):
    """What kdzoo traces to fold a frozen teacher's BatchNorms."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


def flat(raw):
    return [*raw["stages"], raw["pool"], raw["logits"]]


def final_layer(model):
    """The classifier the pool feeds (torchvision: found by discovery; timm: its own)."""
    if hasattr(model, "plan"):
        return model.model.get_submodule(model.plan.final_layer)
    return model.model.get_classifier()


def reference_model(name, in_chans):
    """The library's own model with the same head and input channels."""
    library, arch = name.split("/")
    if library == "timm":
        timm = pytest.importorskip("timm")
        return timm.create_model(arch, num_classes=10, in_chans=in_chans)
    model = torchvision.models.get_model(arch, num_classes=10)
    if in_chans != 3:
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        first.in_channels = in_chans
        first.weight = nn.Parameter(first.weight[:, :in_chans].clone())
    return model


def all_models():
    return TORCHVISION + TIMM


def skip_without_timm(name):
    if name.startswith("timm/"):
        pytest.importorskip("timm")


# ------------------------------------------------------------------------------------------
# The feature contract


@pytest.mark.parametrize("name", all_models())
def test_metadata_matches_the_features_and_logits(name):
    skip_without_timm(name)
    model = built(name)
    x = images()
    with torch.no_grad():
        raw = model.forward_features(x)
        logits = model(x)
    expected = feature_shapes(model, 64)
    assert [tuple(t.shape[1:]) for t in raw["stages"]] == expected["stages"]
    assert len(raw["stages"]) == len(model.feature_info.stages) >= 4
    assert tuple(raw["pool"].shape) == (2, model.feature_info.pool)
    assert tuple(raw["logits"].shape) == (2, 10) and model.feature_info.logits == 10
    assert torch.equal(raw["logits"], logits)
    with torch.no_grad():  # the pool is what the classifier reads
        torch.testing.assert_close(final_layer(model)(raw["pool"]), raw["logits"])
        if name.startswith("timm/"):  # and the logits are timm's own forward
            assert torch.equal(model.model(x), raw["logits"])


def test_stages_of_torchvision_models_come_from_the_table():
    resnet = built("torchvision/resnet18")
    assert [(s.channels, s.reduction) for s in resnet.feature_info.stages] == \
        [(64, 2), (64, 4), (128, 8), (256, 16), (512, 32)]
    assert resnet.plan.stage_nodes[1:] == [f"layer{i}.1.relu_1" for i in range(1, 5)]
    assert resnet.feature_info.pool == 512 and resnet.feature_info.stem is None
    mobile = built("torchvision/mobilenet_v3_small")
    # Block outputs, not the expansion convolutions before each strided depthwise convolution.
    assert [(s.channels, s.reduction) for s in mobile.feature_info.stages] == \
        [(16, 2), (16, 4), (24, 8), (48, 16), (576, 32)]
    assert mobile.feature_info.pool == 1024  # the input of the last Linear, as timm's pre_logits
    assert not any(s.preact or s.bn_before_relu for s in mobile.feature_info.stages)


@pytest.mark.parametrize("name", all_models())
def test_parameters_and_state_dict_keys_are_the_library_models(name):
    skip_without_timm(name)
    model, reference = built(name), reference_model(name, in_chans=1)
    assert count_parameters(model) == count_parameters(reference)
    assert sorted(model.state_dict()) == sorted("model." + k for k in reference.state_dict())


def test_timm_without_forward_intermediates_falls_back_to_the_graph():
    timm = pytest.importorskip("timm")
    from kdzoo.models._timm import TimmGraphNet

    model = TimmGraphNet("mobilenetv3_small_050",
                         timm.create_model("mobilenetv3_small_050", num_classes=10), 10, 3)
    metadata = built("timm/mobilenetv3_small_050").feature_info
    assert model.feature_info == metadata  # the same stages, pool and logits as timm's own
    x = images(in_chans=3)
    with torch.no_grad():
        raw = model.eval().forward_features(x)
        head = model.model.get_submodule("classifier")  # traced through: F.linear on its weight
        assert torch.equal(raw["logits"], torch.nn.functional.linear(raw["pool"], head.weight,
                                                                     head.bias))


@pytest.mark.parametrize("size", [16, 32])
def test_small_inputs_after_discovery_at_224(size):
    model = built("torchvision/resnet18")  # its last stage is 1x1 at 32x32
    with torch.no_grad():
        raw = model.forward_features(images(size))
    assert [tuple(t.shape[1:]) for t in raw["stages"]] == feature_shapes(model, size)["stages"]


# ------------------------------------------------------------------------------------------
# Weights


@pytest.mark.parametrize("name", all_models())
def test_a_plain_library_state_dict_loads(tmp_path, name):
    skip_without_timm(name)
    torch.manual_seed(3)
    reference = randomise_batchnorm(reference_model(name, in_chans=3)).eval()
    path = tmp_path / "library.pth"
    torch.save(reference.state_dict(), path)
    model = kdzoo.create_model(name, num_classes=10, checkpoint=path).eval()
    x = images(in_chans=3)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    # as DataParallel saves it, too
    torch.save({"state_dict": {"module." + k: v for k, v in reference.state_dict().items()}},
               path)
    with torch.no_grad():
        loaded = kdzoo.create_model(name, num_classes=10, checkpoint=path).eval()
        assert torch.equal(loaded(x), reference(x))


@pytest.mark.parametrize("name", all_models())
def test_export_round_trip(tmp_path, name):
    skip_without_timm(name)
    model = randomise_batchnorm(built(name))
    path = tmp_path / "export.pth"
    kdzoo.export_model(model, path)
    loaded = kdzoo.create_model(name, num_classes=10, in_chans=1, checkpoint=path).eval()
    x = images()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    torch.save(model.state_dict(), path)  # a plain save of the adapter keeps its prefix
    loaded = kdzoo.create_model(name, num_classes=10, in_chans=1, checkpoint=path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit torchvision/resnet18") as error:
        kdzoo.create_model("torchvision/resnet18", num_classes=10, checkpoint=path)
    assert "\n" not in str(error.value)


def test_pretrained_torchvision_weights_are_adapted(monkeypatch):
    """The builder's DEFAULT weights through torchvision's own loader (the download mocked):
    a fresh head for num_classes, the RGB kernel summed for one input channel."""
    torch.manual_seed(5)
    imagenet = torchvision.models.resnet18().state_dict()
    calls = []

    def fake_download(url, *args, **kwargs):
        calls.append(url)
        return {k: v.clone() for k, v in imagenet.items()}

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    model = kdzoo.create_model("torchvision/resnet18", num_classes=10, in_chans=1,
                               pretrained=True)
    assert calls == [torchvision.models.ResNet18_Weights.DEFAULT.url]
    state = model.state_dict()
    assert torch.equal(state["model.conv1.weight"],
                       imagenet["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(state["model.layer3.1.conv2.weight"], imagenet["layer3.1.conv2.weight"])
    assert tuple(state["model.fc.weight"].shape) == (10, 512)
    assert model.feature_info.logits == 10 and model.feature_info.pool == 512
    assert tuple(model.eval()(images()).shape) == (2, 10)
    three = kdzoo.create_model("torchvision/resnet18", num_classes=1000, pretrained=True)
    assert all(torch.equal(three.state_dict()["model." + k], v) for k, v in imagenet.items())


def test_input_convolution_adaptation():
    weight = torch.randn(8, 3, 3, 3)
    assert torch.equal(adapt_conv_weight(weight, 1), weight.sum(1, keepdim=True))
    four = adapt_conv_weight(weight, 4)
    assert four.shape == (8, 4, 3, 3)
    torch.testing.assert_close(four[:, :3], weight * 0.75)
    torch.testing.assert_close(four[:, 3], weight[:, 0] * 0.75)


def test_kdzoo_models_have_no_pretrained_weights():
    with pytest.raises(ConfigError, match="no pretrained weights") as error:
        kdzoo.create_model("resnet8", pretrained=True)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------
# What the engine does with a network


@pytest.mark.parametrize("name", all_models())
def test_fx_trace_of_the_features_reproduces_them(name):
    skip_without_timm(name)
    model = built(name)
    traced = fx.symbolic_trace(FeaturesOf(model))
    x = images(32)
    with torch.no_grad():
        for got, want in zip(flat(traced(x)), flat(model.forward_features(x)), strict=True):
            assert torch.equal(got, want)
    # Every BatchNorm is in the graph, for folding: a BatchNorm2d call, or (timm's
    # BatchNormAct2d, traced through) an F.batch_norm on the module's statistics.
    norms = [n for n in traced.graph.nodes
             if n.op == "call_module" and isinstance(traced.get_submodule(n.target),
                                                     nn.BatchNorm2d)
             or n.op == "call_function" and n.target is torch.nn.functional.batch_norm]
    assert len(norms) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", all_models())
def test_train_mode_backward_deepcopy_and_channels_last(name):
    skip_without_timm(name)
    model = built(name)
    x = images(32)
    with torch.no_grad():
        expected = model(x)
    model.train()
    raw = model.forward_features(x)
    loss = sum(t.square().mean() for t in flat(raw))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():  # train mode updated the BatchNorm statistics: compare copies
        evaluated = model(x)
        copied = copy.deepcopy(model)
        assert not copied.training and all(not m.training for m in copied.modules())
        assert torch.equal(copied(x), evaluated)
        last = copy.deepcopy(model).to(memory_format=torch.channels_last)
        torch.testing.assert_close(last(x.to(memory_format=torch.channels_last)), evaluated,
                                   rtol=1e-4, atol=1e-4)
    assert not torch.equal(evaluated, expected)  # the train step did change the statistics
    trained = copy.deepcopy(model).train()
    assert all(m.training for m in trained.modules())


# ------------------------------------------------------------------------------------------
# Names


def test_names_resolve_through_model_factory():
    assert canonical_model_name("torchvision/ResNet18") == "torchvision/resnet18"
    assert canonical_model_name("resnet8") == "resnet8"
    assert model_factory("resnet8") is kdzoo.models.MODELS.get("resnet8")
    assert not any("/" in n for n in kdzoo.list_models())
    assert kdzoo.create_model("torchvision/resnet18").model_name == "torchvision/resnet18"


@pytest.mark.parametrize("name, message", [
    ("torchvision/resnet19", "did you mean 'resnet18'"),
    ("torchvision/", "names no torchvision model after the slash"),
    ("foo/bar", "must start with 'torchvision/' or 'timm/'"),
    ("resnet21", "unknown model 'resnet21'"),
])
def test_unknown_names_give_one_line(name, message):
    with pytest.raises(ConfigError, match=message) as error:
        model_factory(name)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError):
        kdzoo.create_model(name)


def test_unknown_timm_name_suggests():
    pytest.importorskip("timm")
    with pytest.raises(ConfigError, match="did you mean 'mobilenetv3_small_050'") as error:
        model_factory("timm/mobilenetv3_smal_050")
    assert "\n" not in str(error.value)
    assert canonical_model_name("timm/resnet18.a1_in1k") == "timm/resnet18.a1_in1k"


def test_timm_name_without_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ConfigError, match='pip install "kdzoo\\[timm\\]"') as error:
        kdzoo.create_model("timm/resnet18")
    assert "\n" not in str(error.value)
    assert kdzoo.create_model("torchvision/mobilenet_v3_small").feature_info.pool == 1024
