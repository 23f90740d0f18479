"""One run, resolved once: ``resolve_config`` returns a frozen spec with the method's typed
hyper-parameters, and one classification of its fields (can it change a result?) decides what a
resume may change, what names a grid's run folder and what makes a report's row."""
import dataclasses
import shutil

import pytest
import torch

from kdzoo.cli import main
from kdzoo.config import TrainConfig, changes_result
from kdzoo.data.cifar import write_cifar_folder
from kdzoo.engine import fit
from kdzoo.errors import ConfigError, KdzooError
from kdzoo.methods.st import STParams
from kdzoo.report.collect import Run, settings_of
from kdzoo.spec import config_from_dict, resolve_config
from kdzoo.zoo.grid import settings_hash

from states import assert_same_state


def st_config(**overrides):
    base = {"method": {"name": "st", "temperature": 3}, "student": {"name": "resnet8"},
            "teacher": {"name": "resnet8", "untrained": True}, "data": {"name": "digits"}}
    return resolve_config(overrides={**base, **overrides})


def test_the_spec_is_frozen_and_typed():
    config = st_config()
    assert isinstance(config, TrainConfig)
    assert isinstance(config.method.params, STParams)
    assert config.method.params.temperature == 3.0 and config.method.params.weight == 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.lr = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.method.params.weight = 1.0  # type: ignore[misc]
    assert isinstance(config.optim.milestones, tuple) and isinstance(config.recipes, tuple)
    with pytest.raises(TypeError):
        config.data.options["train_size"] = 3  # type: ignore[index]
    # a changed copy is checked like a resolved one
    with pytest.raises(ConfigError, match="optim.lr .*must be positive"):
        dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=-1.0))


def test_a_config_yaml_gives_back_the_same_spec():
    config = st_config(optim={"lr": 0.02}, data={"name": "synthetic", "train_size": 40})
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize("key,changes", [
    ("optim.lr", True), ("method.weight", True), ("method.name", True), ("seed", True),
    ("data.name", True), ("data.train_size", True), ("data.val_split", True), ("amp", True),
    ("teacher.checkpoint", True), ("precision", True), ("sync_bn", True),
    ("teacher_cache", True), ("data.data_dir", False), ("data.download", False),
    ("data.workers", False), ("device", False), ("threads", False), ("out", False),
    ("cache_dir", False), ("log_interval", False), ("tensorboard", False), ("compile", False),
    ("channels_last", False), ("preset", False), ("recipes", False)])
def test_each_setting_says_whether_it_changes_a_result(key, changes):
    assert changes_result(key) is changes


def test_neutral_settings_keep_the_grid_name_and_the_report_row():
    config = st_config(data={"name": "digits", "data_dir": "/a"})
    moved = st_config(data={"name": "digits", "data_dir": "/b"}, threads=1, device="cpu")
    assert settings_hash(moved) == settings_hash(config)
    assert settings_hash(st_config(optim={"lr": 0.02})) != settings_hash(config)
    rows = [settings_of(Run(None, "r", None, c.to_dict())) for c in (config, moved)]
    assert rows[0] == rows[1] and "data.data_dir" not in rows[0] and "optim.lr" in rows[0]


def cifar_files(folder):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(48) % 10
    write_cifar_folder(folder, "cifar10", images[:32], labels[:32], images[32:], labels[32:])


def cifar_run(folder, out, **overrides):
    return resolve_config(overrides={
        "method": {"name": "st"}, "student": {"name": "resnet8"},
        "teacher": {"name": "resnet8", "untrained": True},
        "data": {"name": "cifar10", "data_dir": str(folder)},
        "optim": {"epochs": 3, "batch_size": 16}, "out": str(out), **overrides})


def crash_at_epoch(monkeypatch, config, epoch):
    """Fit ``config``, interrupted as epoch ``epoch`` starts (its earlier epochs checkpointed)."""
    from kdzoo.engine import Trainer

    original, calls = Trainer.train_epoch, {"n": 0}

    def crashing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epoch:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", crashing)
    with pytest.raises(KeyboardInterrupt):
        fit(config)
    monkeypatch.setattr(Trainer, "train_epoch", original)


def test_a_run_resumes_after_its_data_moved(tmp_path, monkeypatch):
    cifar_files(tmp_path / "disk-a")
    whole = fit(cifar_run(tmp_path / "disk-a", tmp_path / "whole"))
    crash_at_epoch(monkeypatch, cifar_run(tmp_path / "disk-a", tmp_path / "run"), 2)
    shutil.move(tmp_path / "disk-a", tmp_path / "disk-b")  # to a faster disk, say
    # the run's own config.yaml supplies every setting; --data-dir says where the data is now
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--no-progress",
                 "--data-dir", str(tmp_path / "disk-b")]) == 0
    assert "disk-b" in (tmp_path / "run" / "config.yaml").read_text()  # the run's new home
    assert_same_state(torch.load(whole.path / "student.pt", weights_only=True)["state_dict"],
                      torch.load(tmp_path / "run" / "student.pt",
                                 weights_only=True)["state_dict"])


def test_a_resume_that_changes_the_result_is_refused(tmp_path, monkeypatch):
    cifar_files(tmp_path / "data")
    crash_at_epoch(monkeypatch, cifar_run(tmp_path / "data", tmp_path / "run"), 2)
    changed = cifar_run(tmp_path / "data", tmp_path / "run",
                        optim={"epochs": 3, "batch_size": 16, "lr": 0.5})
    with pytest.raises(KdzooError) as caught:
        fit(changed, resume=True)
    message = str(caught.value)
    assert "optim.lr (0.1 in the run, 0.5 now)" in message and "\n" not in message


def test_stage_nodes_name_a_foreign_networks_stages(shared_parts):
    from kdzoo.engine import build

    with pytest.raises(ConfigError, match="student.stage_nodes applies to torchvision/ and timm/"):
        st_config(student={"name": "resnet8", "stage_nodes": ["layer1"]})
    config = resolve_config(assignments=["teacher.stage_nodes=[layer3, layer4]"], overrides={
        "method": {"name": "st"}, "student": {"name": "resnet8"},
        "teacher": {"name": "torchvision/resnet18", "untrained": True},
        "data": {"name": "synthetic", "train_size": 16, "test_size": 8},
        "optim": {"batch_size": 16}})
    assert config.teacher.stage_nodes == ("layer3", "layer4")
    teacher = build(config, shared=shared_parts).networks["teacher"]
    assert [(s.channels, s.reduction) for s in teacher.feature_info.stages] == [(256, 16),
                                                                               (512, 32)]
