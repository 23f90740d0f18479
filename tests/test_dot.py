"""DOT: the distillation-oriented trainer's two momentum buffers, against a transcription of
mdistiller's update rule, and as an optimiser option of any run."""
import pytest
import torch

from kdzoo.engine import RunDir, Trainer, build, fit, read_metrics
from kdzoo.engine.dot import DistillationOrientedSGD, is_task_term
from kdzoo.errors import ConfigError
from states import assert_same_state


def reference_dot(params, task_grads, kd_grads, task_bufs, kd_bufs, lr, m, m_kd, wd):
    """mdistiller's ``dot()`` (engine/dot.py), written out for lists of tensors: ``task_grads``
    and ``kd_grads`` map a parameter index to its gradient (absent: no such gradient)."""
    for i, p in enumerate(params):
        if i not in task_grads:
            continue
        d_p = task_grads[i] + wd * p
        if task_bufs.get(i) is None:
            task_bufs[i] = d_p.clone()
        elif i in kd_grads:
            task_bufs[i] = m * task_bufs[i] + d_p
        else:
            task_bufs[i] = (m + m_kd) / 2 * task_bufs[i] + d_p
        params[i] = p - lr * task_bufs[i]
    for i, g in kd_grads.items():
        p = params[i]
        if kd_bufs.get(i) is None:
            kd_bufs[i] = g.clone()
        elif i in task_grads:
            kd_bufs[i] = m_kd * kd_bufs[i] + g
        else:
            kd_bufs[i] = (m + m_kd) / 2 * kd_bufs[i] + (g + wd * p)
        params[i] = p - lr * kd_bufs[i]
    return params


def test_updates_equal_mdistillers_rule_for_every_kind_of_parameter():
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(3, generator=gen, dtype=torch.float64) for _ in range(3)]
    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = DistillationOrientedSGD(params, lr=0.1, momentum=0.825, momentum_kd=0.975,
                                  weight_decay=5e-4)
    expected = [p.clone() for p in start]
    task_bufs, kd_bufs = {}, {}
    # parameter 0: both gradients; 1: the task gradient only; 2: the distillation one only
    for _ in range(3):
        task = {i: torch.randn(3, generator=gen, dtype=torch.float64) for i in (0, 1)}
        kd = {i: torch.randn(3, generator=gen, dtype=torch.float64) for i in (0, 2)}
        for i, p in enumerate(params):
            p.grad = kd.get(i)
        opt.step_kd()
        for i, p in enumerate(params):
            p.grad = task.get(i)
        opt.step()
        expected = reference_dot(expected, task, kd, task_bufs, kd_bufs, 0.1, 0.825, 0.975,
                                 5e-4)
        for mine, theirs in zip(params, expected, strict=True):
            assert torch.allclose(mine.detach(), theirs, rtol=1e-12, atol=1e-14)
    state = opt.state_dict()["state"]
    assert set(state[0]) == {"momentum_buffer", "momentum_kd_buffer"}
    assert set(state[1]) == {"momentum_buffer"} and set(state[2]) == {"momentum_kd_buffer"}


def test_task_terms_are_the_cross_entropies():
    assert is_task_term("ce") and is_task_term("peer_ce")
    assert not is_task_term("st") and not is_task_term("peer_dml")


def dot_config(make_config, **kw):
    return make_config(optim={"epochs": 2, "nesterov": False, "dot_delta": 0.075}, **kw)


def test_a_run_with_dot_keeps_two_momenta(make_config, tmp_path):
    config = dot_config(make_config)
    parts = build(config)
    trainer = Trainer(parts, RunDir.prepare(tmp_path / "steps"), progress=False)
    stage = parts.stages[0]
    setup = trainer.begin_epoch(stage, 0.1)
    (optimizer,) = setup.optimizers
    assert isinstance(optimizer, DistillationOrientedSGD)
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.825)
    assert optimizer.param_groups[0]["momentum_kd"] == pytest.approx(0.975)
    batches = parts.loader.train_batches(config.seed, 1)
    for step in range(2):
        assert trainer.train_step(setup, next(batches), stage, 1, step) is not None
    conv = parts.student.conv1.weight
    assert {"momentum_buffer", "momentum_kd_buffer"} <= set(optimizer.state[conv])
    assert fit(config).summary["finished"]


def test_dot_resumes_exactly(make_config, tmp_path, crashed_and_resumed):
    whole = fit(dot_config(make_config, out=str(tmp_path / "whole")))
    resumed = crashed_and_resumed(dot_config(make_config, out=str(tmp_path / "broken")),
                                  crash_at=2)
    assert_same_state(whole.student.state_dict(), resumed.student.state_dict())
    assert [m["epoch"] for m in read_metrics(resumed.path)] == [1, 2]


@pytest.mark.parametrize("bad,message", [
    ({"nesterov": True, "dot_delta": 0.075}, "without Nesterov"),
    ({"nesterov": False, "dot_delta": 0.95}, "must be in"),
])
def test_bad_dot_settings_are_refused(make_config, bad, message):
    with pytest.raises(ConfigError, match=message):
        fit(make_config(optim=bad))
