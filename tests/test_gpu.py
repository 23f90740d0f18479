"""GPU readiness (``benchmarks/gpu_check.sh`` runs these on a CUDA machine; skipped elsewhere):
mixed precision with and without loss scaling, channels_last, torch.compile, data held on the
device, the teacher cache and a 1-GPU torchrun run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from kdzoo.engine import fit

pytestmark = pytest.mark.gpu


def gpu_config(make_config, **overrides):
    return make_config(device="cuda", **overrides)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains(make_config, amp):
    result = fit(gpu_config(make_config, amp=amp, optim={"epochs": 2}))
    assert result.summary["finished"] and result.summary["device"].startswith("cuda")
    state = torch.load(result.path / "checkpoint.pt", weights_only=False)
    assert (state["scaler"] is not None) == (amp == "fp16")  # loss scaling only for fp16


def test_channels_last_agrees_with_contiguous(make_config, tmp_path):
    fast = fit(gpu_config(make_config, channels_last=True, out=str(tmp_path / "a")))
    plain = fit(gpu_config(make_config, channels_last=False, out=str(tmp_path / "b")))
    for key, value in fast.student.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, plain.student.state_dict()[key], atol=1e-3,
                                       rtol=1e-3)


def test_compiled_run_trains(make_config):
    result = fit(gpu_config(make_config, compile=True))
    assert result.summary["finished"]


def test_data_lives_on_the_device(make_config):
    from kdzoo.engine.build import build

    parts = build(gpu_config(make_config))
    assert parts.loader.data.train_images.is_cuda
    batch = next(parts.loader.train_batches(0, 1))
    assert batch.images.is_cuda and batch.labels.is_cuda


def test_teacher_cache_on_the_gpu(make_config, tmp_path):
    from kdzoo.engine.build import build

    config = gpu_config(make_config, teacher_cache=True, cache_dir=str(tmp_path / "c"),
                        out=str(tmp_path / "cached"))
    assert fit(config).summary["finished"]
    cache = build(config).teacher_cache
    assert cache is not None and cache.filled_fraction() > 0  # filled by the first run


def test_one_gpu_torchrun_run(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
         "-m", "kdzoo", "train", "--method", "st", "--teacher", "resnet8",
         "--untrained-teacher", "--student", "resnet8", "--data", "synthetic", "--set",
         "data.train_size=64", "--set", "data.test_size=32", "--epochs", "1",
         "--batch-size", "32", "--no-progress", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["world_size"] == 1
