"""Issue 4: crash-proof resume, atomic checkpoints, non-finite guards, every bad input answered."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import kdzoo
from kdzoo.cli import main
from kdzoo.data.cifar import write_cifar_folder
from kdzoo.engine import fit, read_metrics
from kdzoo.errors import KdzooError
from kdzoo.io import DiskFullError, atomic_torch_save
from kdzoo.methods import METHODS, Method
from kdzoo.methods.st import SoftTarget
from kdzoo.models import MODELS, FeatureInfo, FeatureNet, FeatureRequest

TRAIN = ["train", "--method", "st", "--teacher", "resnet8", "--untrained-teacher", "--student",
         "resnet8", "--data", "synthetic", "--set", "data.train_size=96", "--set",
         "data.test_size=32", "--set", "data.image_size=16", "--batch-size", "16", "--no-progress"]


def kdzoo_process(*argv):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "kdzoo", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def load_student(path):
    return torch.load(path / "student.pt", weights_only=True)["state_dict"]


@pytest.mark.process
def test_kill_9_then_resume_is_bit_identical(tmp_path):
    epochs = ["--epochs", "8"]
    whole = kdzoo_process(*TRAIN, *epochs, "--out", str(tmp_path / "whole"))
    killed_dir = tmp_path / "killed"
    victim = kdzoo_process(*TRAIN, *epochs, "--out", str(killed_dir))
    deadline = time.time() + 240
    metrics = killed_dir / "metrics.jsonl"
    while time.time() < deadline:  # kill once at least two epochs are checkpointed
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        assert victim.poll() is None, victim.communicate()
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done_epochs = len(read_metrics(killed_dir))
    assert 2 <= done_epochs < 8, "the run was not killed mid-way; make it longer"
    assert not (killed_dir / "student.pt").exists()

    resumed = kdzoo_process(*TRAIN, *epochs, "--out", str(killed_dir), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.communicate()
    assert whole.wait(timeout=300) == 0, whole.communicate()
    a, b = load_student(tmp_path / "whole"), load_student(killed_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["epoch"] for m in read_metrics(killed_dir)] == list(range(1, 9))


def test_crash_during_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"epoch": 1, "w": torch.ones(3)}, path)

    def dies_halfway(obj, handle):
        handle.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # e.g. the process is interrupted mid-write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_full_disk_during_a_run_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    import kdzoo.io as kio

    real_write = kio.atomic_write
    calls = {"checkpoint": 0}

    def disk_fills_up(path, write):
        if Path(path).name == "checkpoint.pt":
            calls["checkpoint"] += 1
            if calls["checkpoint"] == 2:
                def partial(handle):
                    handle.write(b"some bytes")
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real_write(path, partial)
        return real_write(path, write)

    monkeypatch.setattr(kio, "atomic_write", disk_fills_up)
    out = tmp_path / "run"
    code = main([*TRAIN, "--epochs", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "no space left" in err and "previous file is intact" in err
    assert err.count("\n") == 1
    monkeypatch.undo()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["global_epoch"] == 1
    assert main([*TRAIN, "--epochs", "3", "--out", str(out), "--resume"]) == 0
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2, 3]


def test_disk_full_error_is_named(tmp_path):
    def no_space(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match="no space left"):
        kdzoo.io.atomic_write(tmp_path / "x", no_space)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ non-finite
def nan_at(epoch, step):
    original = SoftTarget.forward

    def forward(self, features, info):
        terms = original(self, features, info)
        if info.epoch == epoch and info.step == step:
            terms["st"] = terms["st"] * float("nan")
        return terms

    return forward


def test_injected_nan_stops_the_run_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(SoftTarget, "forward", nan_at(epoch=2, step=3))
    out = tmp_path / "run"
    code = main([*TRAIN, "--epochs", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "loss term 'st' became NaN or infinite at epoch 2, step 3" in err
    assert "last good checkpoint is kept" in err and err.count("\n") == 1
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["global_epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["networks"]["student"].values()
               if v.is_floating_point())


def test_nan_batches_can_be_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(SoftTarget, "forward", nan_at(epoch=1, step=2))
    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "2", "--out", str(out), "--set", "nonfinite=skip"]) == 0
    metrics = read_metrics(out)
    assert [m["train"]["skipped_batches"] for m in metrics] == [1, 0]
    # means over the good batches only
    assert all(m["terms"]["loss"] == m["terms"]["loss"] for m in metrics)


def test_nan_gradient_is_caught(tmp_path, monkeypatch, capsys):
    original = SoftTarget.forward

    def forward(self, features, info):
        terms = original(self, features, info)
        # sqrt'(0) is infinite: a finite loss with a non-finite gradient
        terms["root"] = torch.sqrt((features["student"].logits * 0).sum())
        return terms

    monkeypatch.setattr(SoftTarget, "forward", forward)
    assert main([*TRAIN, "--epochs", "1", "--out", str(tmp_path / "run")]) == 1
    assert "the gradients became NaN or infinite at epoch 1, step 0" in capsys.readouterr().err


# ---------------------------------------------------------------------------- bad input
def tree(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*"))


def refused(capsys, tmp_path, argv, *messages):
    before = tree(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    for message in messages:
        assert message in err, err
    assert err.startswith("kdzoo: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert tree(tmp_path) == before, "something was written"
    return err


def out(tmp_path):
    return ["--out", str(tmp_path / "new-run")]


@pytest.mark.parametrize("flag,value,hint", [
    ("--method", "fitnett", "unknown method 'fitnett'"),
    ("--student", "resnet21", "unknown model 'resnet21'"),
    ("--teacher", "resnet111", "unknown model 'resnet111'"),
    ("--data", "cifar11", "unknown dataset 'cifar11' (did you mean 'cifar10'"),
    ("--preset", "refrence", "unknown preset 'refrence' (did you mean 'reference'"),
])
def test_unknown_names(tmp_path, capsys, flag, value, hint):
    argv = [*TRAIN, "--epochs", "1", *out(tmp_path), flag, value]  # the last flag wins
    refused(capsys, tmp_path, argv, hint)


def cifar_argv(tmp_path, *extra):
    return ["train", "--student", "resnet8", "--data", "cifar10", "--data-dir",
            str(tmp_path / "data"), "--epochs", "1", *out(tmp_path), *extra]


def test_missing_and_incomplete_dataset(tmp_path, capsys):
    refused(capsys, tmp_path, cifar_argv(tmp_path), "cifar10 not found", "--download")
    images, labels = torch.zeros(10, 3, 32, 32, dtype=torch.uint8), torch.arange(10)
    folder = write_cifar_folder(tmp_path / "data", "cifar10", images, labels, images, labels)
    (folder / "data_batch_3").unlink()
    refused(capsys, tmp_path, cifar_argv(tmp_path), "lacks data_batch_3", "--download")


def test_corrupt_dataset_file(tmp_path, capsys):
    images, labels = torch.zeros(10, 3, 32, 32, dtype=torch.uint8), torch.arange(10)
    folder = write_cifar_folder(tmp_path / "data", "cifar10", images, labels, images, labels)
    data = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(data[: len(data) // 2])
    refused(capsys, tmp_path, cifar_argv(tmp_path), "corrupt or truncated", "--download")


def teacher_file(tmp_path, name="resnet8", classes=10, channels=3):
    path = tmp_path / f"{name}-{classes}-{channels}.pt"
    kdzoo.export_model(kdzoo.create_model(name, num_classes=classes, in_chans=channels), path)
    return str(path)


def distil_argv(tmp_path, checkpoint, *extra):
    return ["train", "--method", "st", "--teacher", "resnet8", "--teacher-checkpoint", checkpoint,
            "--student", "resnet8", "--data", "synthetic", "--epochs", "1", *out(tmp_path),
            *extra]


def test_teacher_checkpoint_for_another_network(tmp_path, capsys):
    path = tmp_path / "r20.pth"
    torch.save(kdzoo.create_model("resnet20").state_dict(), path)
    refused(capsys, tmp_path, distil_argv(tmp_path, str(path)), "does not fit resnet8",
            "unexpected keys: layer1.1.")


def test_teacher_for_other_classes_or_input_size(tmp_path, capsys):
    path = tmp_path / "c100.pth"
    torch.save({"model": kdzoo.create_model("resnet8", num_classes=100).state_dict()}, path)
    refused(capsys, tmp_path, distil_argv(tmp_path, str(path)), "fc.weight (100, 64) in file")
    grey = tmp_path / "grey.pth"
    torch.save(kdzoo.create_model("resnet8", in_chans=1).state_dict(), grey)
    refused(capsys, tmp_path, distil_argv(tmp_path, str(grey)),
            "conv1.weight (16, 1, 3, 3) in file vs (16, 3, 3, 3) in model", "3 input channels")
    export = teacher_file(tmp_path, classes=100)
    refused(capsys, tmp_path, distil_argv(tmp_path, export), "holds a resnet8 with 100 classes")


def test_corrupt_or_truncated_checkpoint(tmp_path, capsys):
    good = Path(teacher_file(tmp_path))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:3000])
    refused(capsys, tmp_path, distil_argv(tmp_path, str(truncated)), "corrupt or truncated")
    refused(capsys, tmp_path, distil_argv(tmp_path, str(tmp_path / "nope.pt")), "does not exist")


class PoolOnly(FeatureNet):
    """A model with no spatial feature points (only pool and logits)."""

    def __init__(self, num_classes=10, in_chans=3):
        super().__init__()
        self.fc = nn.Linear(in_chans, num_classes)
        self.feature_info = FeatureInfo(stages=(), pool=in_chans, logits=num_classes)

    def forward_features(self, x):
        pool = x.mean(dim=(2, 3))
        return {"pool": pool, "logits": self.fc(pool)}


class NeedsStage3(Method):
    paper, url = "test", "http://example.org"
    needs = FeatureRequest.last(3)

    def forward(self, features, step):
        return {}


@pytest.fixture
def pool_only_model_and_stage3_method():
    MODELS.register("pool-only")(lambda num_classes=10, in_chans=3: PoolOnly(num_classes, in_chans))
    METHODS.register("needs-stage3")(NeedsStage3)
    NeedsStage3.name = "needs-stage3"
    yield
    MODELS.unregister("pool-only")
    METHODS.unregister("needs-stage3")


def test_method_needs_a_point_the_model_lacks(tmp_path, capsys,
                                               pool_only_model_and_stage3_method):
    argv = [*TRAIN, "--epochs", "1", *out(tmp_path), "--method", "needs-stage3", "--student",
            "pool-only"]
    refused(capsys, tmp_path, argv, "method needs-stage3 needs 3 stages (it has 0) of the "
            "student, which pool-only does not provide; choose another student or method")


@pytest.mark.parametrize("flag,value,message", [
    ("--epochs", "0", "optim.epochs must be a positive integer, got 0"),
    ("--batch-size", "-4", "optim.batch_size must be a positive integer, got -4"),
    ("--lr", "0", "optim.lr (the learning rate) must be positive, got 0.0"),
    ("--lr", "-0.1", "must be positive"),
])
def test_non_positive_numbers(tmp_path, capsys, flag, value, message):
    refused(capsys, tmp_path, [*TRAIN, *out(tmp_path), flag, value], message)


def test_yaml_config_with_unknown_key_or_wrong_type(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("optim:\n  learning_rate: 0.1\n")
    refused(capsys, tmp_path, [*TRAIN, *out(tmp_path), "--config", str(config)],
            "unknown config key 'optim.learning_rate'")
    config.write_text("optim:\n  epochs: ten\n")
    refused(capsys, tmp_path, [*TRAIN, *out(tmp_path), "--config", str(config)],
            "'optim.epochs' must be an integer, got 'ten'")
    config.write_text("method:\n  name: st\n  temprature: 3\n")
    refused(capsys, tmp_path, [*TRAIN, *out(tmp_path), "--config", str(config)],
            "no hyper-parameter 'temprature' (did you mean 'temperature'?)")


def test_existing_or_unwritable_output(tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    refused(capsys, tmp_path, [*TRAIN, "--epochs", "1", "--out", str(existing)],
            "already exists", "--overwrite")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    refused(capsys, tmp_path, [*TRAIN, "--epochs", "1", "--out", str(blocker / "run")],
            "is a file")
    refused(capsys, tmp_path, [*TRAIN, "--epochs", "1", "--out", str(blocker)], "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_output_parent(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused(capsys, tmp_path, [*TRAIN, "--epochs", "1", "--out", str(locked / "run")],
                "cannot write to output folder")
    finally:
        locked.chmod(0o700)


def test_resume_with_another_config_shows_the_differences(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    err = refused(capsys, tmp_path, [*TRAIN, "--epochs", "1", "--out", str(run), "--resume",
                                     "--lr", "0.5", "--seed", "3"],
                  "optim.lr (0.1 in the run, 0.5 now)", "seed (0 in the run, 3 now)")
    assert "cannot resume" in err
    refused(capsys, tmp_path, [*TRAIN, "--epochs", "1", "--out", str(tmp_path / "none"),
                               "--resume"], "nothing to resume")


def test_resume_of_a_run_killed_before_its_first_checkpoint_restarts(tmp_path, monkeypatch):
    from kdzoo.engine import Trainer

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_epoch", killed)
    run = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(run)]) == 130
    monkeypatch.undo()
    assert not (run / "checkpoint.pt").exists() and (run / "config.yaml").exists()
    assert main([*TRAIN, "--epochs", "1", "--out", str(run), "--resume"]) == 0
    assert len(read_metrics(run)) == 1


# ---------------------------------------------------------------------------- determinism
def test_deterministic_flag_and_recorded_versions(make_config):
    config = make_config(deterministic=True)
    try:
        result = fit(config)
    finally:
        torch.use_deterministic_algorithms(False)
    assert result.summary["seed"] == 0
    assert result.summary["versions"]["torch"] == torch.__version__
    assert "deterministic: true" in (result.path / "config.yaml").read_text()


def test_checkpoints_load_without_unpickling(make_config):
    result = fit(make_config())
    state = torch.load(result.path / "checkpoint.pt", weights_only=True)
    assert state["kdzoo_format"] == "kdzoo-run/1"
    with pytest.raises(KdzooError):
        kdzoo.create_model("resnet8", checkpoint=result.path / "log.txt")


def test_resume_needs_only_the_run_folder(tmp_path, monkeypatch):
    from kdzoo.engine import Trainer

    original = Trainer.train_epoch
    calls = {"n": 0}

    def crash_on_second(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", crash_on_second)
    run = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "2", "--out", str(run)]) == 130
    monkeypatch.undo()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]
