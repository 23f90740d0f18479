"""``kdzoo zoo``: a grid runs, reruns do nothing, a killed run is resumed, ``--jobs 2`` equals
``--jobs 1``, ``--dry-run`` prints the commands that make the same folders, failures are
reported; and the packaged grids expand."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from kdzoo.cli import main
from kdzoo.layers import flatten
from kdzoo.errors import ConfigError
from kdzoo.zoo import expand, load_grid_spec, packaged_grids

SYNTH = ["--data", "synthetic", "--set", "data.train_size=48", "--set", "data.test_size=16",
         "--set", "data.image_size=8", "--batch-size", "16", "--no-progress"]
#: In float64: the --jobs 2 workers run with one thread each, the in-process runs with two, and
#: only float64 training keeps their different summation orders at rounding level.
GRID = ["zoo", "--methods", "baseline,st", "--teacher", "resnet8", "--student", "resnet8",
        "--seeds", "2", "--epochs", "1", "--precision", "float64", *SYNTH]
TIMING = ("wall_seconds", "train_seconds", "device", "versions")


def summaries(root):
    found = {}
    for path in sorted(Path(root).glob("*/summary.json")):
        summary = json.loads(path.read_text())
        found[path.parent.name] = {k: v for k, v in summary.items() if k not in TIMING}
    return found


def assert_same_summaries(a, b):
    """The same runs with the same summaries, numbers to float64 rounding (other thread
    counts sum in other orders)."""
    assert a.keys() == b.keys()
    for name in a:
        flat_a, flat_b = flatten(a[name]), flatten(b[name])
        assert flat_a.keys() == flat_b.keys(), name
        for key, value in flat_a.items():
            if isinstance(value, float):
                assert flat_b[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
            else:
                assert flat_b[key] == value, (name, key)


def student_state(folder):
    return torch.load(Path(folder) / "student.pt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """One small grid: a trained teacher, 2 methods x 2 seeds."""
    root = tmp_path_factory.mktemp("zoo") / "grid"
    assert main([*GRID, "--out", str(root)]) == 0
    return root


def test_a_grid_runs_its_teacher_once_and_every_run(zoo):
    found = summaries(zoo)
    # method, pair, data, seed, and a hash of the other settings (1 epoch, batch 16, ...)
    prefixes = ["baseline-resnet8-synthetic-s0-", "baseline-resnet8-synthetic-s1-",
                "st-resnet8-resnet8-synthetic-s0-", "st-resnet8-resnet8-synthetic-s1-"]
    assert [name[:-8] for name in sorted(found)] == prefixes
    assert len({name[-8:] for name in found if name.startswith("st")}) == 1
    # the teacher is the seed-0 baseline of resnet8 (the grid's own run), trained once
    (teacher,) = [n for n in found if n.startswith(prefixes[0])]
    (distilled,) = [n for n in found if n.startswith(prefixes[3])]
    config = yaml.safe_load((zoo / "configs" / f"{distilled}.yaml").read_text())
    assert config["teacher"]["checkpoint"] == str(zoo / teacher / "student.pt")
    assert all(s["finished"] for s in found.values())
    roles = {r["name"]: r["role"] for r in json.loads((zoo / "zoo.json").read_text())["runs"]}
    assert roles[teacher] == "teacher"


def test_a_second_call_runs_nothing(zoo, capsys):
    before = {p: p.stat().st_mtime_ns for p in zoo.glob("*/summary.json")}
    capsys.readouterr()
    assert main([*GRID, "--out", str(zoo)]) == 0
    assert "4 runs, 4 finished, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in zoo.glob("*/summary.json")} == before


def test_other_settings_get_their_own_folders(zoo, capsys):
    assert main([*GRID, "--out", str(zoo), "--dry-run", "--set", "method.temperature=2",
                 "--methods", "st"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 2  # both seeds; the teacher exists already
    names = [Path(yaml.safe_load(Path(shlex.split(c)[3]).read_text())["out"]).name
             for c in commands]
    assert all(n.startswith("st-resnet8-resnet8-synthetic-s") and len(n.split("-")[-1]) == 8
               for n in names)


@pytest.mark.process
def test_jobs_2_gives_the_same_summaries_as_jobs_1(zoo, tmp_path):
    assert main([*GRID, "--out", str(tmp_path / "parallel"), "--jobs", "2"]) == 0
    assert_same_summaries(summaries(tmp_path / "parallel"), summaries(zoo))


def test_dry_run_commands_make_the_same_folders(zoo, tmp_path, capsys):
    root = tmp_path / "dry"
    capsys.readouterr()
    assert main([*GRID, "--out", str(root), "--dry-run"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 4 and "baseline-resnet8-synthetic-s0-" in commands[0]  # teacher
    assert not any(root.glob("*/summary.json"))  # nothing ran
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "kdzoo"
        assert main(argv[1:]) == 0
    assert summaries(root) == summaries(zoo)
    for name in summaries(zoo):
        for key, value in student_state(zoo / name).items():
            assert torch.equal(value, student_state(root / name)[key]), (name, key)


def test_a_failed_run_is_reported_and_the_grid_goes_on(tmp_path, capsys):
    argv = [*GRID, "--out", str(tmp_path / "z"), "--teacher-checkpoint",
            str(tmp_path / "missing.pt"), "--seeds", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "1 of 2 runs failed" in err and "missing.pt does not exist" in err
    (baseline,) = (tmp_path / "z").glob("baseline-resnet8-synthetic-s0-*/summary.json")
    assert json.loads(baseline.read_text())["finished"]


@pytest.mark.process
def test_a_killed_run_is_resumed_by_the_next_call(tmp_path):
    root = tmp_path / "killed"
    argv = ["zoo", "--methods", "st", "--teacher", "resnet8", "--untrained-teacher",
            "--student", "resnet8", "--seeds", "1", "--epochs", "4", *SYNTH,
            "--set", "data.train_size=400", "--out", str(root)]
    process = subprocess.Popen([sys.executable, "-m", "kdzoo", *argv], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    killed = False
    while time.time() < deadline and process.poll() is None:
        runs = [p for p in root.glob("st-*") if (p / "metrics.jsonl").is_file()]
        if runs and len((runs[0] / "metrics.jsonl").read_text().splitlines()) >= 2:
            os.killpg(process.pid, signal.SIGKILL)  # a real kill, mid-run
            killed = True
            break
        time.sleep(0.05)
    process.wait()
    assert killed, "the run finished before it could be killed"
    (run,) = [p for p in root.glob("st-*")]
    assert not json.loads((run / "summary.json").read_text())["finished"]
    assert main(argv) == 0  # the next call resumes it
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    config = run.parent / "configs" / f"{run.name}.yaml"
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "whole"),
                 "--no-progress"]) == 0
    for key, value in student_state(tmp_path / "whole").items():
        assert torch.equal(value, student_state(run)[key]), key


@pytest.mark.parametrize("name", packaged_grids())
def test_packaged_grids_expand_with_published_numbers(name, tmp_path):
    spec = load_grid_spec(name)
    grid = expand(spec, tmp_path)
    published = [r for r in grid if r.published]
    assert published and all(r.published["metric"] in ("best", "last") for r in published)
    # every published number of the file meets a run of the grid (no entry is silently unused)
    met = {(r.label or r.method, r.teacher, r.student, r.data) for r in published}
    for entry in spec["published"]:
        assert (entry["method"], entry.get("teacher"), entry["student"], entry["data"]) in met, \
            entry
    teachers = [r for r in grid if r.role == "teacher"]
    assert grid.runs[:len(teachers)] == teachers  # teachers first


def test_labels_name_variants_of_one_method(tmp_path):
    spec = {"data": "digits", "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
            "teachers": {"resnet8": "t.pt"},
            "methods": ["crd", {"name": "crd", "label": "crd+kd", "settings": {"loss": {"kd": 1}}}],
            "published": [{"method": "crd", "teacher": "resnet8", "student": "resnet8",
                           "data": "digits", "top1": 90.0},
                          {"method": "crd+kd", "teacher": "resnet8", "student": "resnet8",
                           "data": "digits", "top1": 91.0}]}
    runs = {r.name.split("-")[0]: r for r in expand(spec, tmp_path)}
    assert set(runs) == {"crd", "crd+kd"}
    assert runs["crd"].published["top1"] == 90.0 and runs["crd+kd"].published["top1"] == 91.0
    assert runs["crd+kd"].config.loss.kd == 1 and runs["crd+kd"].label == "crd+kd"
    spec["cells"] = "published"
    spec["published"] = spec["published"][1:]
    assert [r.name.split("-")[0] for r in expand(spec, tmp_path)] == ["crd+kd"]
    spec["methods"] = [{"name": "crd", "label": "crd kd"}]
    with pytest.raises(ConfigError, match="label 'crd kd' of crd must be letters"):
        expand(spec, tmp_path)


def test_reference_zoo_grid_has_the_reference_table():
    grid = expand(load_grid_spec("reference-zoo"), "/tmp/unused")
    crd = {(r.teacher, r.student, r.data): r for r in grid if r.method == "crd"}
    assert crd[("resnet110", "resnet20", "cifar100")].published["top1"] == 70.80
    assert crd[("resnet110", "resnet20", "cifar100")].config.method.params.weight == 0.8
    assert crd[("resnet110", "resnet20", "cifar10")].config.method.params.weight == 0.2
    assert {r.method for r in grid} >= {"baseline", "st", "dml", "bss", "afd"}


def test_bad_grids_are_refused_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [st]\npairs: [{teacher: resnet8, student: resnet8}]\ndata: digits\n"
                   "seed: 3\n")
    assert main(["zoo", "--grid", str(bad), "--out", str(tmp_path / "z")]) == 2
    assert "unknown key 'seed' (did you mean 'seeds'?)" in capsys.readouterr().err
    assert main(["zoo", "--grid", "referenze-zoo", "--out", str(tmp_path / "z")]) == 2
    assert "did you mean 'reference-zoo'" in capsys.readouterr().err
    assert main(["zoo", "--methods", "stt", "--student", "resnet8", "--data", "digits",
                 "--out", str(tmp_path / "z")]) == 2
    assert "did you mean 'st'" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_a_method_entry_may_name_its_pairs(tmp_path):
    spec = {"data": "digits", "pairs": [{"teacher": "resnet20", "student": "resnet8"},
                                        {"teacher": "resnet56", "student": "resnet20"}],
            "settings": {"teacher": {"untrained": True}},
            "methods": ["st", {"name": "at", "pairs": [{"teacher": "resnet56",
                                                        "student": "resnet20"}]}]}
    runs = [(r.method, r.teacher, r.student) for r in expand(spec, tmp_path)]
    assert ("at", "resnet56", "resnet20") in runs and ("at", "resnet20", "resnet8") not in runs
    assert {("st", "resnet20", "resnet8"), ("st", "resnet56", "resnet20")} <= set(runs)
