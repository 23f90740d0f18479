"""``kdzoo tune``: the refusals (default run), and the search itself, pruning, a killed search
continued, and two processes sharing one study (marked ``slow`` and ``process``)."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdzoo.cli import main

optuna = pytest.importorskip("optuna")

#: A small st run: untrained teacher, synthetic data, 2 epochs of 128 images.
RUN = ["--method", "st", "--teacher", "resnet20", "--untrained-teacher", "--student", "resnet8",
       "--data", "synthetic", "--epochs", "2", "--set", "data.train_size=160",
       "--set", "data.test_size=64", "--set", "optim.batch_size=32", "--no-progress"]


def tune_args(out: Path, *extra: str) -> list[str]:
    return ["-q", "tune", *RUN, "--out", str(out), *extra]


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("extra, message", [
    (["--val-split", "0"], "--val-split must be a fraction in (0, 1)"),
    (["--space", "method.wieght=uniform:0.1:1"], "method st has no hyper-parameter 'wieght'"),
    (["--space", "method.weight=uniform:1:0.1"], "empty or inverted"),
    (["--space", "method.weight=uniform:1:1"], "empty or inverted"),
    (["--space", "method.weight=loguniform:0:1"], "log-scale range"),
    (["--space", "method.weight=normal:0:1"], "unknown distribution 'normal'"),
    (["--space", "data.data_dir=categorical:a,b"], "not a setting to tune"),
    (["--space", "optim.lrr=loguniform:0.01:0.1"], "unknown config key"),
    (["--space", "optim.lr=uniform:-0.1:0.1"], "the value -0.1 is refused"),
    (["--set", "method.weight=0.5", "--space", "method.weight=uniform:0.1:1"],
     "both set (--set) and searched"),
    (["--storage", "sqlite:////no/such/folder/study.db"], "cannot open the study storage"),
    (["--storage", "nosuchdb://user:secret@host/db"], "cannot open the study storage"),
    (["--n-trials", "0"], "--n-trials must be at least 1"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "T"
    assert main(tune_args(out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert "secret" not in err  # a storage password is never printed
    assert not out.exists()


def test_a_method_without_the_hyperparameter_is_refused(tmp_path, capsys):
    args = tune_args(tmp_path / "T", "--space", "method.temperature=uniform:1:8")
    args[args.index("st")] = "fitnet"
    assert main(args) == 2
    assert "method fitnet has no hyper-parameter 'temperature'" in capsys.readouterr().err


def test_a_run_that_never_reads_the_test_split_needs_a_validation_split():
    from kdzoo.errors import ConfigError
    from kdzoo.spec import resolve_config

    with pytest.raises(ConfigError, match="needs a validation split"):
        resolve_config(overrides={"evaluate_test": False})


# ------------------------------------------------------------------------------ searching
def study_trials(out: Path, name: str = "st-resnet20-resnet8-synthetic") -> list:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    return study.trials


def test_trials_never_read_the_test_split(tmp_path):
    """A trial's run evaluates validation only (no test accuracy in its metrics or summary,
    the teacher checked on validation); the final runs report test top-1 and record the
    study, the trial and the space."""
    out = tmp_path / "T"
    assert main(tune_args(out, "--n-trials", "2", "--final-seeds", "1", "--val-split", "0.2",
                          "--pruner", "none")) == 0
    trials = sorted((out / "trials").iterdir())
    assert [t.name for t in trials] == ["trial-0000", "trial-0001"]
    for folder in trials:
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["best_top1"] is None and summary["last_top1"] is None
        assert summary["teacher_top1"] is None and summary["teacher_val_top1"] is not None
        assert summary["best_val_top1"] is not None and summary["selection"] == "val"
        for line in (folder / "metrics.jsonl").read_text().splitlines():
            assert "test" not in json.loads(line)
    tuned = json.loads((out / "final" / "tuned-s0" / "summary.json").read_text())
    assert tuned["best_top1"] is not None and tuned["selection"] == "val"
    assert tuned["tuned"]["study"] == "st-resnet20-resnet8-synthetic"
    assert set(tuned["tuned"]["params"]) == set(tuned["tuned"]["space"]) == \
        {"method.weight", "method.temperature"}
    best = max((t for t in study_trials(out) if t.value is not None), key=lambda t: t.value)
    assert tuned["tuned"]["trial"] == best.number
    assert tuned["hyperparameters"]["weight"] == best.params["method.weight"]
    default = json.loads((out / "final" / "default-s0" / "summary.json").read_text())
    assert default["tuned"] is None and default["hyperparameters"]["weight"] == 0.1
    assert "tuned (trial" in (out / "tune.md").read_text()


def test_report_and_plot_read_a_tune_folder(tmp_path, capsys):
    """`kdzoo report` lists the best trials and the final runs (tuned rows marked);
    `kdzoo plot` draws Optuna's history, importances and one slice per hyper-parameter."""
    out = tmp_path / "T"
    assert main(tune_args(out, "--n-trials", "3", "--final-seeds", "1", "--pruner", "none",
                          "--space", "method.weight=loguniform:0.01:1",
                          "--no-default-space")) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "`st (tuned)`" in text and "`st`" in text
    assert "study st-resnet20-resnet8-synthetic: 3 trials (3 complete)" in text
    assert text.count("| trial-") == 0 and "| 1 | " in text and "| 3 | " in text
    assert main(["report", str(out / "trials")]) == 0  # trials read like any run
    trials = capsys.readouterr().out
    assert "best val top-1" in trials and trials.count("| `st` |") == 3
    assert main(["plot", str(out), "--out", str(tmp_path / "P")]) == 0
    written = {p.name for p in (tmp_path / "P").iterdir()}
    assert {"optimization_history.png", "param_importances.png", "slice_method.weight.png",
            "accuracy.png", "results.png"} <= written
    assert main(["plot", str(out), "--out", str(tmp_path / "P")]) == 0  # its own files again


def test_a_space_file_adds_and_drops_keys(tmp_path):
    from kdzoo.spec import resolve_config
    from kdzoo.tune.space import build_space

    config = resolve_config(overrides={"method": {"name": "kd"}, "teacher": {
        "name": "resnet20", "untrained": True}, "data": {"val_split": 0.1}})
    file = tmp_path / "space.yaml"
    file.write_text("method: {ce_weight: null, temperature: 'uniform:2:6'}\n"
                    "optim.lr: 'loguniform:0.01:0.2'\n")
    space = build_space(config, str(file), ["method.weight=uniform:0.5:1"])
    assert {k: d.text() for k, d in space.items()} == {
        "method.weight": "uniform:0.5:1", "method.temperature": "uniform:2:6",
        "optim.lr": "loguniform:0.01:0.2"}


@pytest.mark.slow
def test_timeout_stops_starting_trials(tmp_path):
    out = tmp_path / "T"
    assert main(tune_args(out, "--n-trials", "5", "--final-seeds", "0", "--timeout",
                          "0.001")) == 0
    assert len(study_trials(out)) == 1


@pytest.mark.slow
def test_pruned_trials_stop_early(tmp_path, monkeypatch):
    """A trial the pruner stops ends after the epoch it was judged on; it is PRUNED in the
    study and its folder holds that one epoch."""
    from kdzoo.tune import study as study_module

    monkeypatch.setattr(study_module, "make_pruner",
                        lambda name, epochs: optuna.pruners.ThresholdPruner(lower=101.0))
    monkeypatch.setattr("kdzoo.tune.search.make_pruner", study_module.make_pruner)
    out = tmp_path / "T"
    assert main(tune_args(out, "--n-trials", "2", "--final-seeds", "0", "--epochs", "3")) == 0
    trials = study_trials(out)
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    for trial in trials:
        lines = (Path(trial.user_attrs["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 1


def _kdzoo(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdzoo", *args]


def _counted(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as connection:
        try:
            rows = connection.execute("SELECT state FROM trials").fetchall()
        except sqlite3.OperationalError:
            return 0
    return sum(state == "COMPLETE" for (state,) in rows)


@pytest.mark.process
def test_a_killed_search_continues_to_n_trials_not_twice_as_many(tmp_path):
    """The issue's command, killed mid-search and run again: the study ends with 6 counted
    trials (the interrupted one failed and continued), and the final seeds' report."""
    out = tmp_path / "T"
    command = _kdzoo("-q", "tune", "--method", "st", "--teacher", "resnet20",
                     "--untrained-teacher", "--student", "resnet8", "--data", "synthetic",
                     "--epochs", "2", "--n-trials", "6", "--val-split", "0.2", "--out", str(out),
                     "--no-progress")
    process = subprocess.Popen(command, cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 240
    while _counted(out / "study.db") < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)  # into the next trial
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert 2 <= _counted(out / "study.db") < 6
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    trials = study_trials(out)
    counted = [t for t in trials if not t.user_attrs.get("interrupted")]
    assert len(counted) == 6
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in counted)
    for kind in ("tuned", "default"):
        for seed in range(3):
            summary = json.loads((out / "final" / f"{kind}-s{seed}" / "summary.json").read_text())
            assert summary["finished"] and summary["best_top1"] is not None
    assert "defaults (untuned)" in done.stdout


@pytest.mark.process
def test_jobs_run_trials_in_several_processes(tmp_path):
    out = tmp_path / "T"
    done = subprocess.run(_kdzoo(*tune_args(out, "--n-trials", "6", "--final-seeds", "0",
                                            "--jobs", "2")),
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    trials = study_trials(out)
    assert 6 <= len(trials) <= 7
    assert len({t.user_attrs["owner"]["pid"] for t in trials}) == 2
    assert len({t.params["method.weight"] for t in trials}) == len(trials)  # not repeated


@pytest.mark.process
def test_two_processes_share_one_study(tmp_path):
    """Two `kdzoo tune` processes on one --storage fill one study together."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    processes = [subprocess.Popen(
        _kdzoo(*tune_args(tmp_path / f"T{i}", "--n-trials", "10", "--final-seeds", "0",
                          "--storage", storage, "--study-name", "shared", "--threads", "1")),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert 10 <= len(trials) <= 11  # each process checks the count before it starts a trial
    owners = {t.user_attrs["owner"]["pid"] for t in trials}
    assert len(owners) == 2
    folders = {Path(t.user_attrs["run_dir"]).parent.parent.name for t in trials}
    assert folders == {"T0", "T1"}


# ------------------------------------------------------------------------------ a tuned grid
ZOO = ["zoo", "--methods", "baseline,st", "--teacher", "resnet20", "--untrained-teacher",
       "--student", "resnet8", "--data", "synthetic", "--epochs", "2",
       "--set", "data.train_size=160", "--set", "data.test_size=64", "--no-progress"]


@pytest.mark.parametrize("extra, message", [
    (["--val-split", "0.2", "--tune-trials", "0"], "tune.trials must be a positive integer"),
    (["--tune-trials", "2"], "a tuned grid searches on the validation split"),
    (["--val-split", "0.2", "--trial-epochs", "1"], "--trial-epochs goes with --tune-trials"),
    (["--val-split", "0.2", "--tune-trials", "2", "--dry-run"], "--dry-run cannot print"),
])
def test_a_tuned_grid_refuses_bad_input(tmp_path, capsys, extra, message):
    out = tmp_path / "Z"
    assert main(["-q", *ZOO, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (out / "tune").exists()


def test_a_grid_tune_section_is_checked(tmp_path):
    from kdzoo.errors import ConfigError
    from kdzoo.tune.grid import tune_section

    assert tune_section({}) is None
    assert tune_section({"tune": {"trials": 4, "pruner": "none"}})["trials"] == 4
    for bad in ({"trials": 2, "budget": 1}, {"trials": 2, "pruner": "mean"}, {"trials": True},
                {"trials": 2, "trial_epochs": 0}):
        with pytest.raises(ConfigError):
            tune_section({"tune": bad})


@pytest.mark.slow
def test_zoo_tune_trials_tunes_every_method_at_equal_budget(tmp_path, capsys):
    """Each method with a space gets its own study of K trials; the grid's runs (every seed)
    train with the study's best settings and say so; the baseline runs untuned; a rerun adds
    no trial and no run."""
    out = tmp_path / "Z"
    args = ["-q", *ZOO, "--methods", "baseline,st,kd", "--seeds", "2", "--val-split", "0.2",
            "--tune-trials", "3", "--out", str(out)]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "tune").iterdir()) == \
        ["kd-resnet20-resnet8-synthetic", "st-resnet20-resnet8-synthetic"]
    for method in ("st", "kd"):
        trials = study_trials(out / "tune" / f"{method}-resnet20-resnet8-synthetic",
                              f"{method}-resnet20-resnet8-synthetic")
        assert len(trials) == 3
        best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
        runs = sorted(out.glob(f"{method}-resnet20-resnet8-synthetic-s*"))
        assert len(runs) == 2
        for run in runs:
            summary = json.loads((run / "summary.json").read_text())
            assert summary["tuned"]["trial"] == best.number
            for key, value in best.params.items():
                assert summary["hyperparameters"][key.removeprefix("method.")] == value
    baseline = json.loads(next(out.glob("baseline-*-s0*")).joinpath("summary.json").read_text())
    assert baseline["tuned"] is None
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    table = capsys.readouterr().out
    assert "`st (tuned)`" in table and "`kd (tuned)`" in table and "`baseline`" in table
    before = sorted(p.name for p in out.iterdir())
    assert main(args) == 0  # the studies are complete and the runs finished: nothing to do
    assert sorted(p.name for p in out.iterdir()) == before
    assert len(study_trials(out / "tune" / "st-resnet20-resnet8-synthetic",
                            "st-resnet20-resnet8-synthetic")) == 3
