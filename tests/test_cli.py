import json

import pytest

from kdzoo.cli import main

SMALL = ["--data", "synthetic", "--set", "data.train_size=64", "--set", "data.test_size=32",
         "--set", "data.image_size=16", "--epochs", "1", "--batch-size", "32", "--no-progress"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_writes_the_run_folder_and_eval_reads_it(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--method", "st", "--teacher", "resnet8",
                       "--untrained-teacher", "--student", "resnet8", "--out", str(out), *SMALL)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "st" and summary["epochs"] == 1
    code, printed, err = run(capsys, "eval", "--model", "resnet8", "--checkpoint",
                             str(out / "student.pt"), "--data", "synthetic")
    assert code == 0, err
    assert "top-1" in printed


def test_quiet_silences_the_console_not_the_run_log(tmp_path, capsys):
    out = tmp_path / "run"
    code, printed, err = run(capsys, "-q", "train", "--method", "st", "--teacher", "resnet8",
                             "--untrained-teacher", "--student", "resnet8", "--out", str(out),
                             *SMALL)
    assert code == 0, err
    assert "epoch" not in printed and "done" not in printed
    log = (out / "log.txt").read_text()
    assert "run folder" in log and "epoch 1/1" in log


@pytest.mark.process
def test_python_dash_m_entry_point():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "kdzoo", "list", "methods"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "st" in done.stdout


@pytest.mark.parametrize("what,expected", [("models", "resnet32x4"), ("methods", "Hinton"),
                                           ("datasets", "fashion-mnist"),
                                           ("presets", "repdistiller")])
def test_list(capsys, what, expected):
    code, out, _ = run(capsys, "list", what)
    assert code == 0 and expected in out


def assert_refused(capsys, tmp_path, argv, message):
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_unknown_method_gets_did_you_mean(tmp_path, capsys):
    assert_refused(capsys, tmp_path, ["train", "--method", "sst", "--out",
                                      str(tmp_path / "x"), *SMALL], "did you mean 'st'")


def test_teacher_without_checkpoint_is_refused(tmp_path, capsys):
    assert_refused(capsys, tmp_path, ["train", "--method", "st", "--teacher", "resnet8",
                                      "--student", "resnet8", "--out", str(tmp_path / "x"),
                                      *SMALL], "--untrained-teacher")


def test_existing_output_folder_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_refused(capsys, tmp_path, ["train", "--out", str(out), "--student", "resnet8",
                                      *SMALL], "already exists")
    assert (out / "notes.txt").read_text() == "mine"
    code, _, _ = run(capsys, "train", "--out", str(out), "--student", "resnet8", "--overwrite",
                     *SMALL)
    assert code == 0 and (out / "notes.txt").read_text() == "mine"


def test_missing_dataset_says_how_to_get_it(tmp_path, capsys):
    assert_refused(capsys, tmp_path, ["train", "--data", "cifar10", "--data-dir",
                                      str(tmp_path / "none"), "--out", str(tmp_path / "x")],
                   "--download")


def test_bad_flag_is_one_line(tmp_path, capsys):
    assert_refused(capsys, tmp_path, ["train", "--epochs", "ten"], "invalid int value")


def test_demo_runs_and_prints_the_table(tmp_path, capsys):
    code, out, err = run(capsys, "demo", "--out", str(tmp_path / "demo"), "--epochs", "1",
                         "--no-progress")
    assert code == 0, err
    assert "| `st` | resnet20 → resnet8 | digits | 1 |" in out
    assert "| `baseline` | resnet8 | digits | 1 |" in out
    for prefix in ("baseline-resnet20-digits-s0-", "baseline-resnet8-digits-s0-",
                   "st-resnet20-resnet8-digits-s0-"):
        (run_dir,) = (tmp_path / "demo").glob(f"{prefix}*")
        assert (run_dir / "summary.json").is_file()
    # a second demo finds its runs finished and only prints the table
    code, out, err = run(capsys, "demo", "--out", str(tmp_path / "demo"), "--epochs", "1")
    assert code == 0 and "3 runs, 3 finished, 0 to run" in out


@pytest.mark.slow
def test_full_demo_within_three_minutes(tmp_path, capsys):
    import time

    start = time.perf_counter()
    code, out, _ = run(capsys, "demo", "--out", str(tmp_path / "demo"), "--no-progress")
    assert code == 0 and time.perf_counter() - start < 180
    assert "| `st` | resnet20 → resnet8 |" in out


def test_list_methods_shows_every_method_with_its_paper(capsys):
    import kdzoo
    from kdzoo.methods import get_method_class

    code, out, _ = run(capsys, "list", "methods")
    assert code == 0
    for name in kdzoo.list_methods():
        line = next(l for l in out.splitlines() if l.split()[0] == name)
        assert get_method_class(name).paper in line


def test_list_methods_differences_prints_docs_differences(capsys):
    from pathlib import Path

    code, out, _ = run(capsys, "list", "methods", "--differences")
    assert code == 0
    written = (Path(__file__).parent.parent / "docs" / "differences.md").read_text()
    assert out == written and "## wkd-cost-fc" in out
    code, _, err = run(capsys, "list", "models", "--differences")
    assert code == 2 and "--differences goes with `kdzoo list methods`" in err
