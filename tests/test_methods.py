"""Every registered method, run for real on same-family and cross-family pairs: finite losses,
gradients where they belong, a frozen teacher that never changes, the method's own parameters
in the optimiser; and a one-line refusal where a network cannot give what the method asks."""
import math

import pytest
import torch

import kdzoo
from kdzoo.engine import Trainer, build
from kdzoo.engine.rundir import NullRecorder
from kdzoo.errors import ConfigError
from kdzoo.methods import get_method_class

# (teacher, student): the same architecture; deeper teacher (the reference's r56/r110 -> r20
# setting); and a teacher of other widths (64/128/256 vs 16/32/64), which needs connectors.
PAIRS = [("resnet8", "resnet8"), ("resnet56", "resnet20"), ("resnet8x4", "resnet8")]
#: RepDistiller's cross-family pairs and a torchvision teacher (other stage counts, strides,
#: pre-activation blocks, networks without pre-activation outputs or named BatchNorms).
CROSS = [("resnet32x4", "ShuffleV2"), ("vgg13", "MobileNetV2"), ("wrn_40_2", "wrn_16_2"),
         ("ResNet50", "vgg8"), ("torchvision/resnet18", "resnet8x4")]
#: What each method cannot be given on a cross-family pair: (method, teacher, student) -> the
#: one-line refusal. torchvision's networks name neither pre-activation outputs nor a stem.
REFUSED = {
    ("ab", "torchvision/resnet18", "resnet8x4"): "method ab needs pre-activation stage outputs "
    "of the teacher, which torchvision/resnet18 does not provide; choose another teacher or "
    "method",
    ("ofd", "torchvision/resnet18", "resnet8x4"): "method ofd needs pre-activation stage "
    "outputs of the teacher, which torchvision/resnet18 does not provide; choose another "
    "teacher or method",
    ("fsp", "torchvision/resnet18", "resnet8x4"): "method fsp needs a stem feature of the "
    "teacher, which torchvision/resnet18 does not provide; choose another teacher or method",
    ("sdd", "torchvision/resnet18", "resnet8x4"): "method sdd needs the map that its global "
    "pooling averages of the teacher, which torchvision/resnet18 does not provide; choose "
    "another teacher or method",
    ("catkd", "torchvision/resnet18", "resnet8x4"): "method catkd needs the map that its "
    "global pooling averages of the teacher, which torchvision/resnet18 does not provide; "
    "choose another teacher or method",
    ("srd", "torchvision/resnet18", "resnet8x4"): "method srd needs the map that its "
    "global pooling averages of the teacher, which torchvision/resnet18 does not provide; "
    "choose another teacher or method",
    ("simkd", "torchvision/resnet18", "resnet8x4"): "method simkd needs the map that its "
    "global pooling averages of the teacher, which torchvision/resnet18 does not provide; "
    "choose another teacher or method",
    ("reviewkd", "torchvision/resnet18", "resnet8x4"): "method reviewkd needs pre-activation "
    "stage outputs of the teacher, which torchvision/resnet18 does not provide; choose another "
    "teacher or method",
}
STEPS_PER_STAGE = 2


def method_config(make_config, method, teacher, student, image_size=16):
    return make_config(
        method={"name": method},
        teacher={"name": teacher, "untrained": True},
        student={"name": student},
        data={"name": "synthetic", "train_size": 32, "test_size": 16, "image_size": image_size},
        optim={"epochs": 1, "batch_size": 16},
    )


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def check_method_trains(make_config, shared_parts, method, teacher, student):
    """Two steps of every stage through the loop's own step (``Trainer.begin_epoch`` and
    ``Trainer.train_step``), the frozen teacher and the data shared with the other methods'
    tests of the pair (built once, as ``kdzoo zoo`` shares them between runs)."""
    config = method_config(make_config, method, teacher, student)
    parts = build(config, shared=shared_parts)
    trainer = Trainer(parts, NullRecorder(), progress=False)
    peers = [r.name for r in parts.method.trainable_roles() if r.name != "student"]
    frozen = [parts.networks[r.name] for r in parts.method.frozen_roles()]
    for network in frozen:
        assert not network.training
        assert not any(p.requires_grad for p in network.parameters())
    frozen_before = [snapshot(network) for network in frozen]

    for stage in parts.stages:
        setup = trainer.begin_epoch(stage, config.optim.lr)
        in_optimizer = {id(p) for p in setup.params}
        batches = parts.loader.train_batches(config.seed, 1, views=parts.method.views)
        for step_index in range(STEPS_PER_STAGE):
            result = trainer.train_step(setup, next(batches), stage, 1, step_index)
            assert result is not None, f"stage {stage.name}: the step was skipped"
            _, terms, _ = result
            assert terms, f"stage {stage.name} produced no loss"
            for name, value in terms.items():
                assert value.dim() == 0, name
                assert math.isfinite(value.item()), f"{name} is {value.item()} in {stage.name}"
            # the gradients of this step are still there after the optimiser's step
            trainable = list(parts.method.trainable_parameters())
            assert {id(p) for p in trainable} <= in_optimizer
            if stage.method_weight != 0:
                missing = [n for n, p in parts.method.named_parameters()
                           if p.requires_grad and p.grad is None]
                assert not missing, f"no gradient reaches {missing} in stage {stage.name}"
            if stage.uses_student and stage.trainable != "method":
                assert any(p.grad is not None and p.grad.abs().sum() > 0
                           for p in parts.student.parameters())
            for network in frozen:
                assert all(p.grad is None for p in network.parameters())
            for peer in peers:
                assert any(p.grad is not None for p in parts.networks[peer].parameters())
        parts.method.end_stage(stage)

    for network, before in zip(frozen, frozen_before, strict=True):
        after = snapshot(network)
        assert all(torch.equal(before[k], after[k]) for k in after)


@pytest.mark.parametrize("teacher,student", PAIRS, ids=lambda x: x)
@pytest.mark.parametrize("method", kdzoo.list_methods())
def test_method_trains_for_real(make_config, shared_parts, method, teacher, student):
    check_method_trains(make_config, shared_parts, method, teacher, student)


def cross_family(method, teacher, student, make_config, shared_parts):
    refusal = REFUSED.get((method, teacher, student))
    if refusal is None:
        check_method_trains(make_config, shared_parts, method, teacher, student)
        return
    with pytest.raises(ConfigError) as caught:
        build(method_config(make_config, method, teacher, student), shared=shared_parts)
    assert str(caught.value) == refusal


@pytest.mark.parametrize("method", kdzoo.list_methods())
def test_method_on_a_cross_family_pair(make_config, shared_parts, method):
    """One cross-family pair in the default run (other stage counts and strides)."""
    cross_family(method, "wrn_40_2", "ShuffleV1", make_config, shared_parts)


@pytest.mark.slow
@pytest.mark.parametrize("teacher,student", CROSS, ids=lambda x: x)
@pytest.mark.parametrize("method", kdzoo.list_methods())
def test_method_on_cross_family_pairs(make_config, shared_parts, method, teacher, student):
    cross_family(method, teacher, student, make_config, shared_parts)


@pytest.mark.parametrize("method", kdzoo.list_methods())
def test_method_is_documented(method):
    cls = get_method_class(method)
    assert cls.paper and cls.__doc__ and cls.url.startswith("http")
