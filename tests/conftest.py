import logging

import pytest
import torch

from kdzoo.config import resolve_config


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


@pytest.fixture
def make_config(tmp_path):
    return lambda **overrides: small_config(tmp_path, **overrides)
