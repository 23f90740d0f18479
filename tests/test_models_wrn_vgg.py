"""kdzoo's WideResNets and VGGs against RepDistiller's own numbers (tests/data/repdistiller, see
model_reference.py): state dicts, parameter counts, logits in eval and train mode, features and
BatchNorms-before-ReLU; plus the feature contract, small and one-channel inputs and loading
RepDistiller checkpoints."""
import pytest
import torch
import torch.nn.functional as F
from model_reference import (NUM_CLASSES, fill_deterministic, load_reference,
                             reference_input)
from torch import nn

import kdzoo
from kdzoo.models import count_parameters, create_model
from kdzoo.models.registry import MODEL_FAMILIES

WRNS = ["wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]
VGGS = ["vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]
NAMES = WRNS + VGGS
#: Counts published with RepDistiller's models (100 classes).
PUBLISHED = {"wrn_16_2": 703_284, "wrn_40_2": 2_255_156, "vgg8": 3_965_028, "vgg13": 9_462_180}


def _tensors(raw):
    """Every tensor a forward_features returns, with a label."""
    yield "stem", raw["stem"]
    yield "pool", raw["pool"]
    yield "logits", raw["logits"]
    for key in ("stages", "stages_pre"):
        for index, tensor in enumerate(raw[key]):
            yield f"{key}[{index}]", tensor


@pytest.fixture(scope="module", params=NAMES)
def run(request):
    """One model with 100 classes, filled deterministically, run once in eval and once in train
    mode on the reference input (built once per model: the VGGs are large)."""
    name = request.param
    model = create_model(name, num_classes=NUM_CLASSES)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    params = count_parameters(model)
    fill_deterministic(model)
    calls = {}  # BatchNorm name -> outputs of its calls during one forward
    hooks = [module.register_forward_hook(
        lambda _m, _i, out, bn_name=bn_name: calls.setdefault(bn_name, []).append(out))
        for bn_name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)]
    x = reference_input()
    with torch.no_grad():
        raw_eval = model.eval().forward_features(x)
        eval_calls = dict(calls)
        calls.clear()
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        raw_train = model.train().forward_features(x)
        train_calls = dict(calls)
    for hook in hooks:
        hook.remove()
    model.load_state_dict(saved)  # undo the train pass's running-statistics update
    model.eval()
    return {"name": name, "model": model, "shapes": shapes, "params": params, "x": x,
            "eval": raw_eval, "train": raw_train, "eval_calls": eval_calls,
            "train_calls": train_calls, "ref": load_reference(name)}


def test_bn_before_relu_names_batchnorms_whose_outputs_are_the_preactivations(run):
    model, raw = run["model"], run["eval"]
    stages = model.feature_info.stages
    names = [stage.bn_before_relu for stage in stages]
    assert names == run["ref"]["bn_before_relu"]
    for index, name in enumerate(names):
        assert isinstance(model.get_submodule(name), nn.BatchNorm2d)
        (output,) = run["eval_calls"][name]
        assert output is raw["stages_pre"][index]  # the forward's own output, not a re-run


def test_features_fed_back_reproduce_the_next_ones(run):
    """Recomputing each feature from the returned previous one gives the returned value: no later
    in-place op changed what was captured."""
    model, raw = run["model"], run["eval"]
    stages, pre = raw["stages"], raw["stages_pre"]
    with torch.no_grad():
        if run["name"] in WRNS:
            assert torch.equal(model.conv1(run["x"]), raw["stem"])
            groups = (model.block1, model.block2, model.block3)
            inputs = [raw["stem"], *stages[:-1]]
            for group, x, out in zip(groups, inputs, stages, strict=True):
                assert torch.allclose(group(x), out, rtol=1e-12, atol=1e-12)
            bns = (model.block2.layer[0].bn1, model.block3.layer[0].bn1, model.bn1)
            for bn, x, out in zip(bns, stages, pre, strict=True):
                assert torch.equal(bn(x), out)
            last = F.relu(pre[-1])
        else:
            assert torch.equal(F.relu(model.block0(run["x"])), raw["stem"])
            groups = (model.block1, model.block2, model.block3, model.block4)
            inputs = [raw["stem"], *stages[:-1]]
            for index, (group, x) in enumerate(zip(groups, inputs, strict=True)):
                x = F.max_pool2d(x, 2) if index < 3 else x  # no pool3 on 32x32 inputs
                assert torch.allclose(group(x), pre[index], rtol=1e-12, atol=1e-12)
                assert torch.equal(F.relu(pre[index]), stages[index])
            last = stages[-1]
        assert torch.allclose(last.mean(dim=(2, 3)), raw["pool"], rtol=1e-12, atol=1e-12)
        head = model.fc if run["name"] in WRNS else model.classifier
        assert torch.allclose(head(raw["pool"]), raw["logits"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_one_channel_28x28_and_8x8_inputs(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1).eval()
    info = model.feature_info
    # Max-pooling rounds down (VGG: 28 -> 14 -> 7 -> 3); stride-2 convolutions round up.
    sides = {28: [28, 14, 7] if name in WRNS else [14, 7, 3, 3],
             8: [8, 4, 2] if name in WRNS else [4, 2, 1, 1]}
    for size, expected in sides.items():
        with torch.no_grad():
            raw = model.forward_features(torch.randn(2, 1, size, size))
        assert raw["logits"].shape == (2, 10) and torch.isfinite(raw["logits"]).all()
        assert raw["stem"].shape == (2, info.stem.channels, size, size)
        assert [tuple(t.shape) for t in raw["stages"]] == [
            (2, s.channels, side, side) for s, side in zip(info.stages, expected, strict=True)]
        assert [t.shape for t in raw["stages_pre"]] == [t.shape for t in raw["stages"]]
        assert raw["pool"].shape == (2, info.pool)


def test_vgg_pools_before_its_last_stage_only_on_64_pixel_high_inputs():
    # RepDistiller's VGG applies pool3 when the input is 64 pixels high (Tiny-ImageNet).
    model = create_model("vgg8").eval()
    with torch.no_grad():
        sides = {size: [t.shape[-1] for t in model.forward_features(
            torch.randn(1, 3, size, size))["stages"]] for size in (32, 64, 48)}
    assert sides == {32: [16, 8, 4, 4], 64: [32, 16, 8, 4], 48: [24, 12, 6, 6]}


def test_registry_names_families_and_aliases():
    assert set(NAMES) <= set(kdzoo.list_models())
    assert {MODEL_FAMILIES[n] for n in WRNS} == {"wrn"}
    assert {MODEL_FAMILIES[n] for n in VGGS} == {"vgg"}
    model = create_model("vgg13_bn", num_classes=5)
    assert model.model_name == "vgg13" and model.feature_info.logits == 5
