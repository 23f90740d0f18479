"""MobileNetV2, ShuffleV1, ShuffleV2 and ResNet50 against RepDistiller's numbers
(tests/data/repdistiller/<name>.json, see tests/model_reference.py)."""
import math
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
import torch.fx
from torch import nn

from kdzoo.models import MODELS, count_parameters, create_model, feature_shapes
from kdzoo.models.shufflenet import channel_shuffle
from model_reference import (NUM_CLASSES, fill_deterministic, load_reference,
                             reference_input)

NAMES = ["MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet50"]
#: Published parameter counts with 100 classes (RepDistiller / mdistiller).
PUBLISHED = {"MobileNetV2": 812_836, "ShuffleV1": 949_258, "ShuffleV2": 1_355_528,
             "ResNet50": 23_705_252}
ALIASES = {"mobile_half": "MobileNetV2", "mobilenetv2": "MobileNetV2", "shufflev1": "ShuffleV1",
           "shufflev2": "ShuffleV2", "resnet50": "ResNet50"}
#: Models whose stages have no distinct pre-activation output (RepDistiller ignores ``preact``).
NO_PREACT = {"MobileNetV2"}


@pytest.fixture(scope="module")
def built():
    """``built(name)``: the 100-class model (built once per module) with fill_deterministic
    weights, in eval mode, and its eval features on the reference input."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            model = create_model(name, num_classes=NUM_CLASSES)
            shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
            params = count_parameters(model)
            fill_deterministic(model).eval()
            with torch.no_grad():
                feats = model.forward_features(reference_input())
            cache[name] = SimpleNamespace(model=model, shapes=shapes, params=params,
                                          feats=feats, ref=load_reference(name))
        return cache[name]

    return get


@contextmanager
def training(model):
    """Train mode for the block, then eval mode with the BatchNorm statistics restored."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        yield model
    finally:
        model.load_state_dict(saved)
        model.eval()


def _sequence(feats, preact=False):
    """RepDistiller's feat list: [stem, stage..., pool]."""
    stages = feats["stages_pre"] if preact else feats["stages"]
    return [feats["stem"], *stages, feats["pool"]]


def test_registry_names_and_aliases():
    for name in NAMES:
        assert name in MODELS.names()
    for alias, name in ALIASES.items():
        assert MODELS.canonical(alias) == name


@pytest.mark.parametrize("name", [n for n in NAMES if n not in NO_PREACT])
def test_pre_activation_outputs_are_before_the_stage_relu(name, built):
    b = built(name)
    for post, pre in zip(b.feats["stages"], b.feats["stages_pre"], strict=True):
        assert (pre < 0).any()
        # ShuffleV2's preact is taken before the unit's channel shuffle (RepDistiller).
        relu = torch.relu(pre)
        assert torch.equal(post, channel_shuffle(relu, 2) if name == "ShuffleV2" else relu)


class _ForwardFeatures(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


@pytest.mark.parametrize("name", NAMES)
def test_symbolic_trace_reproduces_the_features(name, built):
    b = built(name)
    traced = torch.fx.symbolic_trace(_ForwardFeatures(b.model))
    with torch.no_grad():
        out = traced(reference_input())
    assert set(out) == set(b.feats)
    for key, value in b.feats.items():
        values = value if isinstance(value, list) else [value]
        got = out[key] if isinstance(value, list) else [out[key]]
        assert len(got) == len(values)
        assert all(torch.equal(g, v) for g, v in zip(got, values, strict=True)), key
    # Every BatchNorm is a module call of the graph (kdzoo folds BatchNorms along it).
    called = {node.target for node in traced.graph.nodes if node.op == "call_module"}
    bns = {f"model.{n}" for n, m in b.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert bns <= called


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [28, 8])
def test_one_channel_small_inputs(name, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 1, size, size))
    expected = feature_shapes(model, size)
    assert tuple(feats["stem"].shape) == (2, *expected["stem"])
    assert [tuple(t.shape[1:]) for t in feats["stages"]] == expected["stages"]
    assert feats["pool"].shape == (2, *expected["pool"])
    assert feats["logits"].shape == (2, 10) and torch.isfinite(feats["logits"]).all()


def _conv_std(name, conv):
    """The init of each model's convolutions, as its docstring states."""
    area = conv.kernel_size[0] * conv.kernel_size[1]
    if name in ("MobileNetV2", "ResNet50"):  # N(0, 2 / fan_out)
        return math.sqrt(2 / (area * conv.out_channels))
    return 1 / math.sqrt(3 * area * conv.in_channels // conv.groups)  # PyTorch's default


@pytest.mark.parametrize("name", NAMES)
def test_init_follows_repdistiller(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
        elif isinstance(module, nn.Conv2d) and module.weight.numel() >= 20_000:
            assert module.weight.std().item() == pytest.approx(_conv_std(name, module), rel=0.1)
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linear) == 1
    weight, bias = linear[0].weight, linear[0].bias
    if name == "MobileNetV2":  # N(0, 0.01^2), zero bias
        assert weight.std().item() == pytest.approx(0.01, rel=0.1)
        assert torch.all(bias == 0)
    else:  # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1 / math.sqrt(weight.shape[1])
        assert weight.abs().max() <= bound and bias.abs().max() <= bound
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
