"""Every registered method, run for real: finite losses, gradients where they belong, a frozen
teacher that never changes, and the method's own parameters in the optimiser."""
import math

import pytest
import torch

import kdzoo
from kdzoo.engine import RunDir, Trainer, build
from kdzoo.methods import get_method_class

# (teacher, student): the same architecture; deeper teacher (the reference's r56/r110 -> r20
# setting); and a teacher of other widths (64/128/256 vs 16/32/64), which needs connectors.
PAIRS = [("resnet8", "resnet8"), ("resnet56", "resnet20"), ("resnet8x4", "resnet8")]
STEPS_PER_STAGE = 2


def method_config(make_config, method, teacher, student):
    return make_config(
        method={"name": method},
        teacher={"name": teacher, "untrained": True},
        student={"name": student},
        data={"name": "synthetic", "train_size": 32, "test_size": 16, "image_size": 16},
        optim={"epochs": 1, "batch_size": 16},
    )


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("teacher,student", PAIRS, ids=lambda x: x)
@pytest.mark.parametrize("method", kdzoo.list_methods())
def test_method_trains_for_real(make_config, tmp_path, method, teacher, student):
    config = method_config(make_config, method, teacher, student)
    parts = build(config)
    trainer = Trainer(parts, RunDir.prepare(tmp_path / "steps"), progress=False)
    peer = parts.method.trains_teacher
    if parts.method.__class__.needs_teacher and not peer:
        assert not parts.teacher.training
        assert not any(p.requires_grad for p in parts.teacher.parameters())
    teacher_before = snapshot(parts.teacher) if parts.teacher is not None else None

    for stage in parts.stages:
        optimizers = trainer.stage_optimizers(stage)
        in_optimizer = {id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]}
        parts.student.train(stage.uses_student)
        parts.method.train()
        batches = parts.loader.train_batches(config.seed, 1)
        for step_index in range(STEPS_PER_STAGE):
            batch = next(batches)
            terms, _ = trainer.step_terms(batch, stage, 1, step_index)
            assert terms, f"stage {stage.name} produced no loss"
            for name, value in terms.items():
                assert value.dim() == 0, name
                assert math.isfinite(value.item()), f"{name} is {value.item()} in {stage.name}"
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            torch.stack(list(terms.values())).sum().backward()

            trainable = list(parts.method.trainable_parameters())
            assert {id(p) for p in trainable} <= in_optimizer
            if stage.method_weight != 0:
                missing = [n for n, p in parts.method.named_parameters()
                           if p.requires_grad and p.grad is None]
                assert not missing, f"no gradient reaches {missing} in stage {stage.name}"
            if stage.uses_student and stage.trainable != "method":
                assert any(p.grad is not None and p.grad.abs().sum() > 0
                           for p in parts.student.parameters())
            if parts.teacher is not None and not peer:
                assert all(p.grad is None for p in parts.teacher.parameters())
            if peer:
                assert any(p.grad is not None for p in parts.teacher.parameters())
            for opt in optimizers:
                opt.step()
        parts.method.end_stage(stage)

    if teacher_before is not None and not peer:
        after = snapshot(parts.teacher)
        assert all(torch.equal(teacher_before[k], after[k]) for k in after)


@pytest.mark.parametrize("method", kdzoo.list_methods())
def test_method_is_documented(method):
    cls = get_method_class(method)
    assert cls.paper and cls.__doc__ and cls.url.startswith("http")
