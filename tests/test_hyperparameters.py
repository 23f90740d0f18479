"""Method hyper-parameters are typed data: validated before any data is loaded, and their
effective values (defaults included) recorded in config.yaml, the checkpoint and summary.json,
and compared on resume."""
import json
import sys

import pytest
import torch
import yaml

from kdzoo.spec import method_params
from kdzoo.cli import main
from kdzoo.engine import fit
from kdzoo.errors import ConfigError
from kdzoo.methods import method_defaults


def test_defaults_are_recorded_everywhere(make_config, tmp_path):
    config = make_config(method={"name": "st", "temperature": 3}, optim={"epochs": 1})
    assert config.method.params.temperature == 3.0  # what the user typed, typed
    result = fit(config)
    expected = {"weight": 0.1, "temperature": 3.0, "standardize": False, "ctkd": False}
    saved = yaml.safe_load((result.path / "config.yaml").read_text())
    assert saved["method"] == {"name": "st", **expected}
    assert result.summary["hyperparameters"] == expected
    assert json.loads((result.path / "summary.json").read_text())["hyperparameters"] == expected
    state = torch.load(result.path / "checkpoint.pt", weights_only=True)
    assert state["config"]["method"] == {"name": "st", **expected}


def test_values_are_checked_before_any_data_is_loaded(make_config, monkeypatch):
    build_module = sys.modules["kdzoo.engine.build"]
    monkeypatch.setattr(build_module, "load_dataset",
                        lambda *a, **k: pytest.fail("data loaded before the check"))
    for bad, message in ((dict(mode="fast"), "must be one of exact, relax"),
                         (dict(nce_k=0), "nce_k >= 1"),
                         (dict(weight="heavy"), "'weight' must be a number")):
        with pytest.raises(ConfigError, match=message):
            fit(make_config(method={"name": "crd", **bad}))


def test_resume_compares_the_effective_values(make_config, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--method", "st", "--teacher", "resnet8", "--untrained-teacher", "--student",
            "resnet8", "--data", "synthetic", "--set", "data.train_size=32",
            "--set", "data.test_size=16", "--set", "data.image_size=8", "--batch-size", "16",
            "--out", str(out), "--no-progress"]
    assert main([*base, "--epochs", "1"]) == 0
    # the default, spelled out, is the same run
    assert main([*base, "--epochs", "1", "--resume", "--set", "method.weight=0.1"]) == 0
    capsys.readouterr()
    assert main([*base, "--epochs", "1", "--resume", "--set", "method.temperature=2"]) == 2
    assert "method.temperature (4.0 in the run, 2.0 now)" in capsys.readouterr().err


def test_a_run_recorded_without_defaults_still_resumes(make_config, tmp_path):
    config = make_config(optim={"epochs": 2})
    result = fit(config)
    path = result.path / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    saved["method"] = {"name": "st"}  # as kdzoo 0.1 wrote it: only what the user typed
    path.write_text(yaml.safe_dump(saved, sort_keys=False))
    assert fit(config, resume=True).summary["finished"]


def test_registry_gives_defaults_and_resolves():
    assert method_defaults("crd")["nce_k"] == 16384
    assert method_params("crd", {"nce_k": 7}).to_dict()["nce_k"] == 7
    with pytest.raises(ConfigError, match="no hyper-parameter 'temprature'"):
        method_params("st", {"temprature": 2}).to_dict()
