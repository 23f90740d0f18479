import pytest
import torch

import kdzoo
from kdzoo.core import Piecewise
from kdzoo.engine import RunDir, Trainer, build, fit, read_metrics
from kdzoo.methods import METHODS, Method, Stage, register_method
from kdzoo.models import FeatureRequest
from states import assert_same_state


def state_snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_short_fit_lowers_the_loss(make_config):
    config = make_config(optim={"epochs": 4}, method={"name": "baseline"})
    result = fit(config)
    metrics = read_metrics(result.path)
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[-1]["terms"]["loss"] < metrics[0]["terms"]["loss"]
    assert metrics[-1]["train"]["top1"] > metrics[0]["train"]["top1"]


def test_teacher_is_bit_identical_after_distillation(make_config, tmp_path):
    teacher = kdzoo.create_model("resnet8", num_classes=10)
    with torch.no_grad():  # non-default BN statistics: a train-mode forward would move them
        teacher.bn1.running_mean.fill_(0.3)
    path = tmp_path / "teacher.pt"
    kdzoo.export_model(teacher, path)
    config = make_config(teacher={"name": "resnet8", "checkpoint": str(path), "untrained": False})
    parts = build(config)
    before = state_snapshot(parts.teacher)
    Trainer(parts, RunDir.prepare(config.out), progress=False).fit()
    assert_same_state(before, state_snapshot(parts.teacher))
    assert not parts.teacher.training
    assert all(p.grad is None for p in parts.teacher.parameters())


def test_same_seed_same_result(make_config, tmp_path):
    first = fit(make_config(out=str(tmp_path / "a")))
    second = fit(make_config(out=str(tmp_path / "b")))
    assert_same_state(first.student.state_dict(), second.student.state_dict())
    def strip(records):  # everything but the timings
        return [{**{k: v for k, v in m.items() if k != "time"},
                 "train": {k: v for k, v in m["train"].items() if k != "images_per_second"}}
                for m in records]

    assert strip(read_metrics(first.path)) == strip(read_metrics(second.path))
    other = fit(make_config(out=str(tmp_path / "c"), seed=1))
    assert not torch.equal(other.student.fc.weight, first.student.fc.weight)


def test_every_method_starts_from_the_same_student(make_config):
    baseline = build(make_config(method={"name": "baseline"}))
    distilled = build(make_config())
    assert_same_state(baseline.student.state_dict(), distilled.student.state_dict())


def test_student_init_file_is_used(make_config, tmp_path):
    init = kdzoo.create_model("resnet8", num_classes=10)
    path = tmp_path / "init.pth"
    torch.save({"net": init.state_dict()}, path)
    parts = build(make_config(student={"name": "resnet8", "init": str(path)}))
    assert torch.equal(parts.student.fc.weight, init.fc.weight)


def test_run_folder_contents(make_config):
    result = fit(make_config())
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "student.pt", "checkpoint.pt",
                 "log.txt"):
        assert (result.path / name).is_file(), name
    # complete although the test session keeps kdzoo's logger at WARNING
    log = (result.path / "log.txt").read_text()
    assert "run folder" in log and "epoch 2/2" in log
    summary = result.summary
    assert summary["finished"] and summary["epochs"] == 2
    assert summary["teacher_top1"] is not None
    assert summary["best_top1"] >= summary["last_top1"]
    record = read_metrics(result.path)[0]
    assert set(record["terms"]) == {"loss", "ce", "st"} and "lr" in record
    assert set(record["train"]) == {"top1", "top5", "images_per_second"}
    assert set(record["test"]) == {"top1", "top5", "loss"}
    assert set(record["time"]) == {"train_seconds", "eval_seconds", "epoch_seconds"}
    assert summary["format"] == "kdzoo-summary/2"
    assert summary["metrics_format"] == "kdzoo-metrics/2" and summary["selection"] == "test"
    loaded = kdzoo.create_model("resnet8", num_classes=10, checkpoint=result.path / "student.pt")
    assert torch.equal(loaded.fc.weight, result.student.fc.weight.cpu())


def test_resume_equals_uninterrupted(make_config, tmp_path, crashed_and_resumed):
    config = make_config(optim={"epochs": 3}, out=str(tmp_path / "whole"))
    whole = fit(config)

    broken = make_config(optim={"epochs": 3}, out=str(tmp_path / "broken"))
    resumed = crashed_and_resumed(broken, crash_at=3)
    assert_same_state(whole.student.state_dict(), resumed.student.state_dict())
    assert [m["epoch"] for m in read_metrics(resumed.path)] == [1, 2, 3]


class TwoStage(Method):
    """A test method: an initialisation stage (method loss only, its own lr steps), then a
    cross-entropy-only stage, like FSP and AB."""

    needs = FeatureRequest.last(1)

    def stages(self, main):
        init = Stage("init", 3, Piecewise(((2, 0.01), (1, 0.001))), ce_weight=0.0,
                     evaluate=False)
        return [init, Stage("main", main.epochs, main.schedule, method_weight=0.0)]

    def forward(self, features, step):
        student, teacher = features["student"], features["teacher"]
        return {"hint": (student.stages[-1] - teacher.stages[-1]).pow(2).mean()}


@pytest.fixture
def two_stage_method():
    register_method("two-stage-test")(TwoStage)
    yield "two-stage-test"
    METHODS.unregister("two-stage-test")


def test_stages_run_in_order_with_their_lr_and_losses(make_config, two_stage_method):
    config = make_config(method={"name": two_stage_method},
                         optim={"epochs": 2, "lr": 0.1, "milestones": [1]})
    fit(config)
    metrics = read_metrics(config.out)
    assert [(m["stage"], m["stage_epoch"]) for m in metrics] == [
        ("init", 1), ("init", 2), ("init", 3), ("main", 1), ("main", 2)]
    assert [m["lr"] for m in metrics] == pytest.approx([0.01, 0.01, 0.001, 0.1, 0.01])
    assert all(m["terms"]["ce"] == 0 and m["terms"]["hint"] > 0 for m in metrics[:3])
    assert all("hint" not in m["terms"] and m["terms"]["ce"] > 0 for m in metrics[3:])
    assert all("test" not in m for m in metrics[:3])
    assert all("test" in m for m in metrics[3:])


def test_runs_in_one_process_leave_no_global_setting_behind(make_config, tmp_path):
    import logging
    import os

    import torch._inductor.config as inductor_config

    def snapshot():
        return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
                inductor_config.freezing, list(logging.getLogger("kdzoo").handlers))

    before = snapshot()
    fit(make_config(deterministic=True, optim={"epochs": 1}, out=str(tmp_path / "a")))
    assert snapshot() == before
    fit(make_config(optim={"epochs": 1}, out=str(tmp_path / "b")))
    assert snapshot() == before
