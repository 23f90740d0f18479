"""torchvision/<name> and timm/<name> models: the adapters of kdzoo.models._foreign
(_torchvision, _timm, _graph), the table of torchvision stages and stage_nodes."""
import copy
import math
import sys

import pytest
import torch
import torchvision
from torch import fx, nn

import kdzoo
from kdzoo.errors import CheckpointError, ConfigError
from kdzoo.models import count_parameters, feature_shapes
from kdzoo.models._graph import make_plan, trace
from kdzoo.models._torchvision import STAGE_NODES, adapt_conv_weight, build_torchvision
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
def test_small_inputs_after_shapes_at_224(size):
    model = built("torchvision/resnet18")  # its last stage is 1x1 at 32x32
    with torch.no_grad():
        raw = model.forward_features(images(size))
    assert [tuple(t.shape[1:]) for t in raw["stages"]] == feature_shapes(model, size)["stages"]


# ------------------------------------------------------------------------------------------
# The table of torchvision stages

slow = pytest.mark.slow
#: The smallest member of every family in the table, and an input size at which the real map
#: sizes round to the nominal reductions (unpadded networks need larger inputs; MaxViT and ViT
#: run at 224 only); exact: the maps are ceil(size / reduction), as feature_shapes says.
FAMILIES = [
    ("resnet18", 64, True), ("mobilenet_v2", 64, True), ("mobilenet_v3_small", 64, True),
    ("mobilenet_v3_large", 64, True), ("efficientnet_b0", 64, True),
    ("efficientnet_v2_s", 64, True),
    ("regnet_x_400mf", 64, True), ("regnet_y_400mf", 64, True),
    ("convnext_tiny", 64, True),
    ("densenet121", 64, True),
    pytest.param("vgg11", 64, True, marks=slow), pytest.param("vgg11_bn", 64, True, marks=slow),
    ("shufflenet_v2_x0_5", 64, True), ("mnasnet0_5", 64, True),
    ("squeezenet1_0", 64, False), ("squeezenet1_1", 64, False),
    ("alexnet", 128, False), ("googlenet", 64, True),
    ("inception_v3", 224, False),
    ("swin_t", 64, True), pytest.param("swin_v2_t", 64, True, marks=slow),
    pytest.param("maxvit_t", 224, True, marks=slow),
    pytest.param("vit_b_16", 224, True, marks=slow),
]


def test_the_table_covers_every_torchvision_classifier():
    names = torchvision.models.list_models(module=torchvision.models)
    assert sorted(STAGE_NODES) == sorted(names)
    assert all(STAGE_NODES[n] == () for n in names if n.startswith("vit_"))


@pytest.mark.parametrize("arch, size, exact", FAMILIES)
def test_declared_stages_equal_one_forward(arch, size, exact):
    torch.manual_seed(0)
    model = kdzoo.create_model(f"torchvision/{arch}", num_classes=10).eval()
    info = model.feature_info
    assert len(info.stages) == len(STAGE_NODES[arch])
    assert [s.reduction for s in info.stages] == sorted({s.reduction for s in info.stages})
    with torch.no_grad():
        raw = model.forward_features(images(size, in_chans=3, n=1))
    assert len(raw["stages"]) == len(info.stages)
    for stage, declared in zip(raw["stages"], info.stages, strict=True):
        assert stage.dim() == 4 and stage.shape[1] == declared.channels  # NCHW (Swin permuted)
        assert 2 ** round(math.log2(size / stage.shape[2])) == declared.reduction
    if exact:
        assert [tuple(t.shape[1:]) for t in raw["stages"]] == feature_shapes(model, size)["stages"]
    assert tuple(raw["pool"].shape) == (1, info.pool) and tuple(raw["logits"].shape) == (1, 10)
    with torch.no_grad():
        assert torch.equal(model(images(size, in_chans=3, n=1)), raw["logits"])
        if not model.plan.pool_is_map:  # SqueezeNet's classifier is a convolution on the map
            torch.testing.assert_close(final_layer(model)(raw["pool"]), raw["logits"])


def _meta_model(arch, monkeypatch):
    """torchvision's model with meta weights (RegNet computes its widths with tensors: on the
    CPU), cheap for the largest members."""
    from torchvision.models import regnet

    widths = regnet.BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return widths(cls, *args, **kwargs)

    monkeypatch.setattr(regnet.BlockParams, "from_init_params", classmethod(on_cpu))
    with torch.device("meta"):
        return build_torchvision(arch, 10, 3, False)


@slow
@pytest.mark.parametrize("arch", sorted(STAGE_NODES))
def test_every_tabled_member_has_its_stages(arch, monkeypatch):
    """On the meta device, every member of the table: its nodes give maps at strictly
    increasing reductions; a node ``parent.N`` of a Sequential (or ModuleList) is the last
    block before the next reduction (``parent.N+1`` reduces) or the last block of all."""
    model = _meta_model(arch, monkeypatch)
    graph, names = trace(model, arch)
    nodes = STAGE_NODES[arch]
    following = {}  # stage node -> the next block of its Sequential
    for node in nodes:
        parent, _, index = node.rpartition(".")
        if index.isdigit():
            siblings = model.get_submodule(parent)
            assert isinstance(siblings, (nn.Sequential, nn.ModuleList))
            following[node] = f"{parent}.{int(index) + 1}" if int(index) + 1 < len(siblings) \
                else None
    after = [n for n in following.values() if n]
    plan = make_plan(model, graph, names, [*nodes, *after], 3, 224, arch)
    stages = dict(zip(nodes, plan.stages[:len(nodes)], strict=True))
    reductions = [s.reduction for s in plan.stages[:len(nodes)]]
    assert reductions == sorted(set(reductions)) and plan.pool > 0 and plan.logits == 10
    for node, next_block in following.items():
        if next_block is None:
            assert node == nodes[-1]
        else:
            reduced = plan.stages[len(nodes) + after.index(next_block)].reduction
            assert reduced > stages[node].reduction, node


def test_stage_nodes_name_the_stages_of_an_untabled_model(monkeypatch):
    monkeypatch.delitem(STAGE_NODES, "squeezenet1_1")
    name = "torchvision/squeezenet1_1"
    bare = kdzoo.create_model(name, num_classes=10).eval()
    assert bare.feature_info.stages == () and bare.feature_info.pool == 512
    x = images(64, in_chans=3)
    with torch.no_grad():
        raw = bare.forward_features(x)
    assert raw["stages"] == [] and tuple(raw["logits"].shape) == (2, 10)
    named = kdzoo.create_model(name, num_classes=10, stage_nodes=["features.4", "features.7.cat",
                                                                 "features.12"]).eval()
    assert [(s.channels, s.reduction) for s in named.feature_info.stages] == \
        [(128, 4), (256, 8), (512, 16)]
    assert named.plan.stage_nodes == ["features.4.cat", "features.7.cat", "features.12.cat"]
    named.load_state_dict(bare.state_dict())  # the stages change no weight
    with torch.no_grad():
        raw = named.forward_features(x)
        assert torch.equal(raw["logits"], bare(x))
    assert [t.shape[1] for t in raw["stages"]] == [128, 256, 512]


def test_stage_nodes_replace_the_table():
    model = built("torchvision/resnet18")
    chosen = kdzoo.create_model("torchvision/resnet18", num_classes=10, in_chans=1,
                                stage_nodes=["layer3", "layer4.0"]).eval()
    assert [(s.channels, s.reduction) for s in chosen.feature_info.stages] == \
        [(256, 16), (512, 32)]
    assert chosen.plan.stage_nodes == ["layer3.1.relu_1", "layer4.0.relu_1"]
    chosen.load_state_dict(model.state_dict())
    with torch.no_grad():
        raw, reference = chosen.forward_features(images()), model.forward_features(images())
    assert torch.equal(raw["stages"][0], reference["stages"][3])
    assert torch.equal(raw["logits"], reference["logits"])
    none = kdzoo.create_model("torchvision/resnet18", num_classes=10, stage_nodes=[])
    assert none.feature_info.stages == () and none.feature_info.pool == 512


def test_stage_nodes_replace_timm_feature_info():
    pytest.importorskip("timm")
    from kdzoo.models._timm import TimmGraphNet

    model = kdzoo.create_model("timm/resnet18", num_classes=10, in_chans=1,
                               stage_nodes=["layer2", "layer4"]).eval()
    assert isinstance(model, TimmGraphNet)
    assert [(s.channels, s.reduction) for s in model.feature_info.stages] == \
        [(128, 8), (512, 32)]
    reference = built("timm/resnet18")  # timm's own feature_info: five stages
    assert len(reference.feature_info.stages) == 5
    model.load_state_dict(reference.state_dict())
    x = images()
    with torch.no_grad():
        raw, own = model.forward_features(x), reference.forward_features(x)
    assert torch.equal(raw["stages"][1], own["stages"][-1])
    assert torch.equal(raw["pool"], own["pool"]) and torch.equal(raw["logits"], own["logits"])


@pytest.mark.parametrize("name, nodes, message", [
    ("resnet8", ["layer1"], "stage_nodes applies to torchvision/ and timm/ models"),
    ("torchvision/resnet18", ["layer1", "layr4"],
     "torchvision/resnet18 has no node 'layr4' \\(did you mean 'layer4'"),
    ("torchvision/resnet18", ["fc"], "stage node 'fc' gives a \\(1, 10\\) tensor, not a"),
    ("torchvision/resnet18", "layer1", "must be a list of node names"),
])
def test_stage_nodes_refusals_are_one_line(name, nodes, message):
    with pytest.raises(ConfigError, match=message) as error:
        kdzoo.create_model(name, num_classes=10, stage_nodes=nodes)
    assert "\n" not in str(error.value)


def test_an_unknown_node_lists_some_valid_names():
    with pytest.raises(ConfigError) as error:
        kdzoo.create_model("torchvision/resnet18", stage_nodes=["block9"])
    assert "its nodes include 'x', 'conv1', 'bn1', 'relu', 'maxpool', 'layer1'" in \
        str(error.value)


def test_export_round_trip_with_stage_nodes(tmp_path):
    name = "torchvision/mnasnet0_5"
    model = randomise_batchnorm(kdzoo.create_model(name, num_classes=10,
                                                   stage_nodes=["layers.9", "layers.16"]))
    path = tmp_path / "export.pth"
    kdzoo.export_model(model.eval(), path)
    table = kdzoo.create_model(name, num_classes=10, checkpoint=path).eval()
    assert len(table.feature_info.stages) == 5
    x = images(in_chans=3)
    with torch.no_grad():
        assert torch.equal(table(x), model(x))
        assert torch.equal(table.forward_features(x)["stages"][2],
                           model.forward_features(x)["stages"][0])


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
