"""RepDistiller's composition: gamma x CE + alpha x Hinton's KD + the method's own terms
(``--set loss.ce=G --set loss.kd=A``, the method's weight being beta)."""
import pytest
import torch
import torch.nn.functional as F

from kdzoo import functional as KF
from kdzoo.engine import RunDir, Trainer, build, fit
from kdzoo.errors import ConfigError


def first_terms(config, tmp_path):
    parts = build(config)
    trainer = Trainer(parts, RunDir.prepare(tmp_path / "steps"), progress=False)
    stage = parts.stages[0]
    trainer.begin_epoch(stage, config.optim.lr)  # the loop's modes for the stage
    batch = next(parts.loader.train_batches(config.seed, 1))
    terms, logits = trainer.step_terms(batch, stage, 1, 0)
    teacher = parts.teacher_runner(batch.images).logits
    return terms, logits, teacher, batch


def test_gamma_alpha_beta(make_config, tmp_path):
    plain, logits, teacher, batch = first_terms(make_config(method={"name": "at"}), tmp_path)
    composed, logits2, _, _ = first_terms(make_config(
        method={"name": "at"}, loss={"ce": 0.5, "kd": 0.9, "kd_temperature": 4.0}), tmp_path)
    assert list(composed) == ["ce", "hinton_kd", "at"]
    assert torch.equal(logits, logits2)
    assert composed["ce"].item() == pytest.approx(0.5 * F.cross_entropy(logits, batch.labels)
                                                  .item(), rel=1e-6)
    assert composed["hinton_kd"].item() == pytest.approx(
        0.9 * KF.soft_target(logits, teacher, 4.0).item(), rel=1e-5)
    assert composed["at"].item() == pytest.approx(plain["at"].item(), rel=1e-6)


def test_kd_needs_a_frozen_teacher(make_config):
    with pytest.raises(ConfigError, match="has no frozen teacher"):
        fit(make_config(method={"name": "baseline"}, loss={"kd": 0.9}))
    with pytest.raises(ConfigError, match="must not be negative"):
        fit(make_config(loss={"ce": -1.0}))
