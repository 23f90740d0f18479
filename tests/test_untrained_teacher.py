"""``--untrained-teacher``: the random teacher's BatchNorm statistics are calibrated on a few
training batches, so every method runs a smoke epoch with a deep teacher (a random resnet110's
eval-mode logits are ~1e8 otherwise, and runs ended at the NaN guard)."""
import json

import pytest
import torch

import kdzoo
from kdzoo.cli import main
from kdzoo.data import BatchLoader
from kdzoo.engine import fit
from kdzoo.engine.build import calibrate_batchnorm

#: The multi-stage methods' first stages, shortened to one epoch for a smoke run.
SHORT_STAGES = {"fsp": {"init_epochs": 1}, "ab": {"init_epochs": 1},
                "ft": {"paraphraser_epochs": 1}}


def test_calibration_tames_a_deep_random_teacher():
    torch.manual_seed(0)
    data = kdzoo.load_dataset("synthetic", train_size=64, test_size=16, image_size=16)
    loader = BatchLoader(data, 32)
    teacher = kdzoo.create_model("resnet110").eval()
    images = next(loader.test_batches()).images
    with torch.no_grad():
        wild = teacher(images).abs().max().item()
        assert calibrate_batchnorm(teacher, loader, seed=0) == 2  # two batches in the epoch
        tame = teacher(images).abs().max().item()
    assert wild > 1e5 and tame < 100
    assert not teacher.training
    norm = teacher.layer1[0].bn1
    assert norm.momentum == 0.1 and norm.num_batches_tracked.item() == 2


@pytest.mark.parametrize("method", kdzoo.list_methods())
def test_every_method_runs_a_smoke_epoch_with_an_untrained_resnet110(tmp_path, method,
                                                                       shared_parts):
    """One epoch of every method with a random resnet110 teacher, calibrated once for all of
    them (``shared_parts``: the teacher depends only on its settings, the data and the seed)."""
    out = tmp_path / "run"
    config = kdzoo.resolve_config(overrides={
        "method": {"name": method, **SHORT_STAGES.get(method, {})},
        "teacher": {"name": "resnet110", "untrained": True}, "student": {"name": "resnet8"},
        "data": {"name": "synthetic", "train_size": 32, "test_size": 16, "image_size": 16},
        "optim": {"epochs": 1, "batch_size": 16}, "out": str(out)})
    summary = fit(config, progress=False, shared=shared_parts).summary
    assert summary["finished"] and summary["last_top1"] is not None
    assert json.loads((out / "summary.json").read_text())["finished"]
    if method not in ("baseline", "dml"):  # those have no frozen teacher
        assert summary["teacher_untrained"]
        assert "teacher resnet110 is untrained: its BatchNorm statistics were calibrated on 2 " \
               "training batches" in (out / "log.txt").read_text()


def test_the_smoke_command_runs_with_an_untrained_deep_teacher(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--method", "st", "--teacher", "resnet110", "--untrained-teacher",
            "--student", "resnet8", "--data", "synthetic", "--epochs", "1", "--batch-size", "16",
            "--out", str(out), "--no-progress", "--set", "data.train_size=32",
            "--set", "data.test_size=16", "--set", "data.image_size=16"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "calibrated on 2 training batches" in (out / "log.txt").read_text()
