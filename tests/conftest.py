import logging

import pytest
import torch

from kdzoo.spec import resolve_config


@pytest.fixture(autouse=True)
def _quiet_and_threads():
    # Keep the test run predictable on the 2-core machine.
    torch.set_num_threads(2)
    logging.getLogger("kdzoo").setLevel(logging.WARNING)
    yield


def small_config(tmp_path, **overrides):
    """A seconds-long run on the synthetic dataset (tiny models, 2 epochs)."""
    base = {
        "method": {"name": "st"},
        "teacher": {"name": "resnet8", "untrained": True},
        "student": {"name": "resnet8"},
        "data": {"name": "synthetic", "train_size": 96, "test_size": 32, "image_size": 16},
        "optim": {"epochs": 2, "batch_size": 32, "lr": 0.05},
        "out": str(tmp_path / "run"),
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return resolve_config(overrides=base)


@pytest.fixture(scope="session")
def shared_parts():
    """Datasets and frozen teachers built once for the whole test run, as ``kdzoo zoo`` shares
    them between the runs of a grid (:class:`kdzoo.engine.SharedParts`)."""
    from kdzoo.engine import SharedParts

    return SharedParts()


@pytest.fixture
def make_config(tmp_path):
    return lambda **overrides: small_config(tmp_path, **overrides)


@pytest.fixture
def crashed_and_resumed(monkeypatch):
    """``run(config, crash_at)``: fit ``config``, interrupted as its ``crash_at``-th epoch
    starts (after the previous epochs' checkpoints), then resume it; returns the resumed run."""
    from kdzoo.engine import Trainer, fit

    def run(config, crash_at, **fit_kwargs):
        original = Trainer.train_epoch
        calls = {"n": 0}

        def crashing(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise KeyboardInterrupt
            return original(self, *args, **kwargs)

        monkeypatch.setattr(Trainer, "train_epoch", crashing)
        with pytest.raises(KeyboardInterrupt):
            fit(config, **fit_kwargs)
        monkeypatch.setattr(Trainer, "train_epoch", original)
        return fit(config, resume=True, **fit_kwargs)

    return run


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device: skipped, with the reason, where none is."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
