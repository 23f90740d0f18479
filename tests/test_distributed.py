"""DistributedDataParallel through torchrun, on the CPU with gloo: 2 processes equal 1 process
with the same global batch, a killed 2-process run resumes exactly (at 2 processes or 1), one
run folder is written, and the pieces (sharding, cross-rank BatchNorm, the teacher cache's
atomic creation) behave."""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdzoo.data.loader import BatchLoader, batch_bounds
from kdzoo.data import load_dataset
from kdzoo.distributed import CrossRankBatchNorm, convert_sync_batchnorm, shard_sizes
from kdzoo.errors import ConfigError

#: A run of a few seconds: resnet8 on 16 px synthetic images, global batch 16, in float64. In
#: float32, 8 + 8 images and 16 images round differently (oneDNN sums in an order that depends
#: on the batch shape and the CPU), and training amplifies a 1e-7 difference to 1e-2 wherever a
#: ReLU flips, so only float64 trajectories can be compared across process counts on any CPU.
SMALL = ["--teacher", "resnet8", "--untrained-teacher", "--student", "resnet8", "--data",
         "synthetic", "--set", "data.train_size=80", "--set", "data.test_size=32", "--set",
         "data.image_size=16", "--batch-size", "16", "--device", "cpu", "--no-progress",
         "--precision", "float64"]
#: Relative tolerance of float64 trajectories that took different summation orders.
RELATIVE = 1e-9


def train(args: list[str], processes: int, out: Path, wait: bool = True,
          timeout: int = 240) -> subprocess.Popen | subprocess.CompletedProcess:
    """``kdzoo train`` in one process, or under torchrun with ``processes`` processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = [sys.executable, "-m", "kdzoo"] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={processes}", "-m", "kdzoo"]
    command = [*launcher, "train", *args, "--out", str(out)]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    found = {f"student.{k}": v for k, v in state["networks"]["student"].items()}
    found.update({f"method.{k}": v for k, v in state["method"].items()})
    return found


def assert_same_weights(a: Path, b: Path, relative: float = RELATIVE) -> None:
    """Every float tensor of two runs' final states within ``relative`` x its largest
    magnitude (integer tensors: equal)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        if wa[key].is_floating_point():
            assert wa[key].dtype == torch.float64, key
            scale = wa[key].abs().max().item() or 1.0
            torch.testing.assert_close(wa[key], wb[key], rtol=relative,
                                       atol=relative * scale, msg=key)
        else:
            assert torch.equal(wa[key], wb[key]), key


@pytest.mark.parametrize("method", [["--method", "st"],
                                    ["--method", "crd", "--set", "method.nce_k=8"]],
                         ids=["st", "crd"])
@pytest.mark.process
def test_two_processes_equal_one_with_the_same_global_batch(method, tmp_path):
    args = [*method, *SMALL, "--epochs", "2", "--sync-bn"]
    train(args, 1, tmp_path / "one")
    two = tmp_path / "runs" / "two"
    done = train(args, 2, two)
    assert_same_weights(tmp_path / "one", two)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["two"]  # one run folder
    assert (two / "student.pt").is_file()
    summary = (two / "summary.json").read_text()
    assert '"world_size": 2' in summary
    log = (two / "log.txt").read_text()
    assert "distributed: 2 processes (gloo), global batch 16 = 2 x 8 per process" in log
    assert log.count("epoch 2/2") == 1  # rank 0 alone writes
    assert done.stdout.count("done: best test top-1") + done.stderr.count(
        "done: best test top-1") == 1


@pytest.mark.process
def test_a_killed_two_process_run_resumes_exactly_at_two_or_one_process(tmp_path):
    args = ["--method", "st", *SMALL, "--epochs", "4", "--sync-bn", "--lr", "0.01",
            "--set", "data.train_size=320"]
    train(args, 2, tmp_path / "whole-2")
    run = tmp_path / "killed"
    process = train(args, 2, run, wait=False)
    assert isinstance(process, subprocess.Popen)
    deadline = time.time() + 200
    metrics = run / "metrics.jsonl"
    while time.time() < deadline and process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 1:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers, at once
    process.wait()
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert 1 <= state["global_epoch"] < 4
    shutil.copytree(run, tmp_path / "killed-1")
    train([*args, "--resume"], 2, run)
    assert_same_weights(tmp_path / "whole-2", run, relative=0.0)  # the same processes: exact
    # Another world size with the same global batch continues the run as it would have gone
    # on, to float64 rounding.
    train([*args, "--resume"], 1, tmp_path / "killed-1")
    assert_same_weights(tmp_path / "whole-2", tmp_path / "killed-1")
    assert '"world_size": 1' in (tmp_path / "killed-1" / "summary.json").read_text()


def test_global_batches_are_the_same_at_any_world_size():
    data = load_dataset("synthetic", train_size=53, test_size=8, image_size=8)
    loader = BatchLoader(data, batch_size=16)
    whole = list(loader.train_batches(3, 1))
    shards = [list(loader.train_batches(3, 1, rank=r, world=2)) for r in range(2)]
    assert len(whole) == len(shards[0]) == len(shards[1])
    for batch, a, b in zip(whole, *shards, strict=True):
        assert torch.equal(torch.cat([a.images, b.images]), batch.images)
        assert torch.equal(torch.cat([a.indices, b.indices]), batch.indices)
        assert torch.equal(a.global_indices, batch.indices)
        assert a.shard_sizes == b.shard_sizes and sum(a.shard_sizes) == len(batch)
        assert a.loss_scale * len(batch) / 2 == pytest.approx(len(a))
    assert [len(b) for b in whole] == [16, 16, 16, 5]  # 5 = 3 + 2 images
    assert [len(b) for b in shards[0]] == [8, 8, 8, 3]
    # the one exception: a last batch too small to give every process two images is merged
    assert batch_bounds(50, 16) == [(0, 16), (16, 32), (32, 48), (48, 50)]
    assert batch_bounds(50, 16, world=2) == [(0, 16), (16, 32), (32, 50)]
    assert shard_sizes(7, 2) == (4, 3)


def test_cross_rank_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    synced = convert_sync_batchnorm(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)),
        torch.device("cpu"))
    synced.load_state_dict(plain.state_dict())
    assert isinstance(synced[1], CrossRankBatchNorm)
    assert synced.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced[1].running_var, plain[1].running_var)


def test_what_ddp_cannot_run_is_refused_in_one_line(tmp_path):
    from kdzoo.spec import resolve_config
    from kdzoo.distributed import DistContext
    from kdzoo.engine.build import check_distributed

    two = DistContext(rank=0, world=2)
    config = resolve_config(overrides={"method": {"name": "baseline"},
                                       "student": {"name": "resnet8"},
                                       "data": {"name": "digits"},
                                       "optim": {"batch_size": 15}})
    with pytest.raises(ConfigError, match="batch size 15 does not split over 2 processes"):
        check_distributed(config, two)
    optim = dataclasses.replace(config.optim, batch_size=16, dot_delta=0.075, nesterov=False)
    config = dataclasses.replace(config, optim=optim)
    with pytest.raises(ConfigError, match="DOT"):
        check_distributed(config, two)


def test_single_stage_methods_use_every_parameter_in_every_step(shared_parts):
    """DDP runs single-stage methods without looking for unused parameters (kdzoo.engine.build
    .wrap_ddp): true only if every trainable parameter gets a gradient in every step."""
    from kdzoo.spec import resolve_config
    from kdzoo.engine.build import build
    from kdzoo.engine.rundir import NullRecorder
    from kdzoo.engine.trainer import Trainer
    from kdzoo.methods import METHODS

    for name in METHODS.names():
        cls = METHODS.get(name)
        overrides = {"method": {"name": name}, "student": {"name": "resnet8"},
                     "data": {"name": "synthetic", "train_size": 16, "test_size": 8,
                              "image_size": 16},
                     "optim": {"batch_size": 16, "epochs": 1}}
        for role in cls.roles:
            if role.name != "student":
                overrides[role.source] = {"name": "resnet8", "untrained": not role.trainable}
        if name == "crd":
            overrides["method"]["nce_k"] = 4
        parts = build(resolve_config(overrides=overrides), shared=shared_parts)
        if len(parts.stages) > 1:
            continue
        trainer = Trainer(parts, NullRecorder(), progress=False)
        stage = parts.stages[0]
        setup = trainer.begin_epoch(stage, 0.01)
        batch = next(parts.loader.train_batches(0, 1, views=parts.method.views))
        assert trainer.train_step(setup, batch, stage, 1, 0) is not None
        unused = [n for n, p in parts.step.named_parameters()
                  if p.requires_grad and p.grad is None]
        assert not unused, (name, unused)


@pytest.mark.process
def test_zoo_runs_each_run_under_torchrun(tmp_path, capsys):
    from kdzoo.cli import main

    args = ["zoo", "--methods", "st", "--teacher", "resnet8", "--untrained-teacher",
            "--student", "resnet8", "--data", "synthetic", "--set", "data.train_size=32",
            "--set", "data.test_size=16", "--set", "data.image_size=8", "--epochs", "1",
            "--batch-size", "16", "--device", "cpu", "--nproc-per-node", "2",
            "--out", str(tmp_path / "zoo")]
    assert main([*args, "--dry-run"]) == 0
    assert "torchrun --standalone --nproc_per_node=2 -m kdzoo train --config" in \
        capsys.readouterr().out
    assert main(args) == 0
    summary = next((tmp_path / "zoo").glob("st-*/summary.json")).read_text()
    assert '"world_size": 2' in summary and '"finished": true' in summary


def test_the_teacher_cache_is_created_atomically_and_rank_0_alone_writes(tmp_path):
    from kdzoo.engine.cache import TeacherCache, ViewSpace, _create

    folder = tmp_path / "teacher" / "key"
    first = TeacherCache(folder, 4, ViewSpace(1, True), 3, 2)
    first.store(torch.tensor([1]), torch.tensor([2]), torch.tensor([[1.0, 2.0, 3.0]]))
    first.flush()
    # a process that lost the race to create the folder keeps the winner's files
    shapes = {"train": (4, 18, 3), "test": (2, 3), "train_filled": (4, 18), "test_filled": (1,)}
    meta = __import__("json").loads((folder / "meta.json").read_text())
    _create(folder, shapes, meta)
    assert [p.name for p in folder.parent.iterdir()] == ["key"]  # no staging folder left
    reader = TeacherCache(folder, 4, ViewSpace(1, True), 3, 2, writable=False)
    values, filled = reader.lookup(torch.tensor([1, 0]), torch.tensor([2, 0]))
    assert filled.tolist() == [True, False] and values[0].tolist() == [1.0, 2.0, 3.0]
    reader.store(torch.tensor([0]), torch.tensor([0]), torch.tensor([[9.0, 9.0, 9.0]]))
    reader.store_test_logits(torch.zeros(2, 3))
    assert not bool(first.lookup(torch.tensor([0]), torch.tensor([0]))[1][0])
    assert first.test_logits() is None
