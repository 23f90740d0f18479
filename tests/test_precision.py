"""``precision: float64``: networks, method parts, batches, the frozen teacher and the loss in
double precision on the CPU, for comparisons that must not depend on a CPU's float32 rounding;
refused in one line with what cannot keep it."""
import pytest
import torch

import kdzoo
from kdzoo.engine import build, fit
from kdzoo.engine.rundir import NullRecorder
from kdzoo.engine.trainer import Trainer
from kdzoo.errors import ConfigError
from kdzoo.methods import METHODS


@pytest.mark.parametrize("setting,flag", [({"amp": "bf16"}, "--amp"),
                                          ({"compile": True}, "--compile"),
                                          ({"teacher_cache": True}, "--teacher-cache")])
def test_what_cannot_keep_float64_is_refused(make_config, setting, flag):
    with pytest.raises(ConfigError) as caught:
        build(make_config(precision="float64", **setting))
    assert str(caught.value) == (f"--precision float64 cannot be combined with {flag}: drop one "
                                 "of them")


def test_float64_runs_on_the_cpu_only(make_config):
    with pytest.raises(ConfigError, match="runs on the CPU only: use --device cpu"):
        build(make_config(precision="float64", device="cuda"))


def test_a_float64_run_trains_and_records_float64_weights(make_config):
    result = fit(make_config(precision="float64", optim={"epochs": 1}))
    state = torch.load(result.path / "checkpoint.pt", weights_only=False)
    floats = [v for v in state["networks"]["student"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float64 for v in floats)
    assert result.summary["finished"]
    assert "precision: float64" in (result.path / "config.yaml").read_text()


def test_the_default_precision_is_float32(make_config):
    parts = build(make_config())
    batch = next(parts.loader.train_batches(0, 1))
    assert batch.images.dtype == torch.float32
    assert next(parts.student.parameters()).dtype == torch.float32


@pytest.mark.parametrize("name", kdzoo.list_methods())
def test_every_method_computes_its_terms_in_float64(name, shared_parts):
    cls = METHODS.get(name)
    overrides = {"method": {"name": name}, "student": {"name": "resnet8"},
                 "precision": "float64", "optim": {"batch_size": 16, "epochs": 1},
                 "data": {"name": "synthetic", "train_size": 16, "test_size": 8,
                          "image_size": 16}}
    for role in cls.roles:
        if role.name != "student":
            overrides[role.source] = {"name": "resnet8", "untrained": not role.trainable}
    if name == "crd":
        overrides["method"]["nce_k"] = 4
    parts = build(kdzoo.resolve_config(overrides=overrides), shared=shared_parts)
    trainer = Trainer(parts, NullRecorder(), progress=False)
    for stage in parts.stages:
        setup = trainer.begin_epoch(stage, 0.01)
        batch = next(parts.loader.train_batches(0, 1, views=parts.method.views))
        assert batch.images.dtype == torch.float64
        result = trainer.train_step(setup, batch, stage, 1, 0)
        assert result is not None
        loss, terms, _ = result
        assert loss.dtype == torch.float64
        assert {k: v.dtype for k, v in terms.items()} == {k: torch.float64 for k in terms}
