"""``kdzoo report`` and ``kdzoo plot`` on a small zoo; the held-out validation split; TensorBoard
event files; the structured metrics records."""
import csv
import json
import statistics
from pathlib import Path

import pytest
import torch

from kdzoo.cli import main
from kdzoo.data.split import carve_validation, stratified_choice
from kdzoo.engine import fit, read_metrics
from kdzoo.errors import ConfigError
from kdzoo.report import CSV_COLUMNS, collect, report_data
from kdzoo.report.plot import plot

SYNTH = ["--data", "synthetic", "--set", "data.train_size=64", "--set", "data.test_size=32",
         "--set", "data.image_size=8", "--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """2 methods x 3 seeds, 3 epochs, with a validation split; one run left unfinished."""
    root = tmp_path_factory.mktemp("report") / "zoo"
    argv = ["zoo", "--methods", "baseline,st", "--teacher", "resnet8", "--student", "resnet8",
            "--seeds", "3", "--epochs", "3", "--val-split", "0.25", *SYNTH, "--out", str(root)]
    assert main(argv) == 0
    return root


def summaries(root, prefix):
    return [json.loads(p.read_text()) for p in sorted(Path(root).glob(f"{prefix}*/summary.json"))]


def test_means_and_stds_are_those_of_the_summaries(zoo, tmp_path, capsys):
    capsys.readouterr()
    assert main(["report", str(zoo), "--csv", str(tmp_path / "t.csv"),
                 "--json", str(tmp_path / "t.json")]) == 0
    text = capsys.readouterr().out
    assert "test top-1 at the epoch best on validation" in text
    with open(tmp_path / "t.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:len(CSV_COLUMNS)] == CSV_COLUMNS
    for row in rows:
        runs = summaries(zoo, f"{row['method']}-")
        assert int(row["n"]) == len(runs) == 3
        best = [s["best_top1"] for s in runs]
        last = [s["last_top1"] for s in runs]
        assert float(row["best_top1_mean"]) == pytest.approx(statistics.fmean(best), abs=1e-4)
        assert float(row["best_top1_std"]) == pytest.approx(statistics.stdev(best), abs=1e-4)
        assert float(row["last_top1_mean"]) == pytest.approx(statistics.fmean(last), abs=1e-4)
        assert float(row["last_top1_std"]) == pytest.approx(statistics.stdev(last), abs=1e-4)
        assert float(row["wall_seconds_mean"]) == pytest.approx(
            statistics.fmean(s["wall_seconds"] for s in runs), abs=1e-3)
        assert row["selection"] == "val"
    st = next(r for r in rows if r["method"] == "st")
    assert st["teacher_top1"] != "" and st["baseline_diff"] != ""
    assert float(st["baseline_diff"]) == pytest.approx(
        float(st["best_top1_mean"]) - float(next(r for r in rows if r["method"] == "baseline")[
            "best_top1_mean"]), abs=1e-3)
    data = json.loads((tmp_path / "t.json").read_text())
    assert len(data["rows"]) == 2 and data["unfinished"] == []
    assert main(["report", str(zoo), "--csv", str(tmp_path / "t.csv")]) == 2  # never overwrites


def test_one_seed_has_no_std_and_unfinished_runs_are_listed_apart(zoo, tmp_path):
    runs = collect([zoo])
    unfinished = runs[-1]
    unfinished.summary = {**unfinished.summary, "finished": False}
    data = report_data(runs)
    assert [u["name"] for u in data["unfinished"]] == [unfinished.name]
    row = next(r for r in data["rows"] if r["method"] == unfinished.summary["method"])
    assert row["n"] == 2
    single = report_data(collect([zoo / unfinished.name.replace("s2", "s0")]))
    assert single["rows"][0]["n"] == 1 and single["rows"][0]["best_top1_std"] is None


def test_runs_of_a_grid_are_not_started_until_their_folder_exists(tmp_path, capsys):
    """The zoo's configs/ holds every run's config from the start: that is no run folder."""
    root = tmp_path / "zoo"
    assert main(["zoo", "--methods", "baseline", "--student", "resnet8", "--seeds", "1",
                 "--epochs", "1", *SYNTH, "--out", str(root), "--dry-run"]) == 0
    runs = collect([root])
    assert [r.status for r in runs] == ["not started"]
    (runs[0].path).mkdir()
    (runs[0].path / "config.yaml").write_text("{}")
    assert [r.status for r in collect([root])] == ["interrupted"]


def test_published_numbers_and_their_differences(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("data: synthetic\nseeds: 1\nmethods: [st]\n"
                    "pairs: [{teacher: resnet8, student: resnet8}]\n"
                    "settings: {optim: {epochs: 1, batch_size: 16}, data: {train_size: 32, "
                    "test_size: 16, image_size: 8}}\n"
                    "published: [{method: st, teacher: resnet8, student: resnet8, "
                    "data: synthetic, top1: 50.0, metric: last}]\n")
    assert main(["zoo", "--grid", str(grid), "--out", str(tmp_path / "z")]) == 0
    (row,) = [r for r in report_data(collect([tmp_path / "z"]))["rows"] if r["method"] == "st"]
    assert row["published_top1"] == 50.0 and row["published_metric"] == "last"
    assert row["published_diff"] == pytest.approx(row["last_top1_mean"] - 50.0)
    capsys.readouterr()
    assert main(["report", str(tmp_path / "z")]) == 0
    assert "50.00 last" in capsys.readouterr().out


def test_plots_are_pngs_with_one_series_per_row(zoo, tmp_path):
    written = plot(collect([zoo]), tmp_path / "plots")
    for name, figure in written.items():
        assert Path(figure["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert written["accuracy"]["series"] == 2   # baseline and st
    assert written["terms"]["series"] == 2      # one panel each
    assert written["results"]["series"] == 2    # one bar each
    assert main(["plot", str(zoo), "--out", str(tmp_path / "plots")]) == 0  # its own files
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["plot", str(zoo), "--out", str(tmp_path / "other")]) == 2


# ------------------------------------------------------------------------ validation split
def test_validation_split_is_stratified_seeded_and_the_same_for_every_run():
    labels = torch.arange(200) % 4
    chosen, rest = stratified_choice(labels, 0.1, "data", "val", 0.1)
    assert torch.bincount(labels[chosen]).tolist() == [5, 5, 5, 5]
    assert set(chosen.tolist()).isdisjoint(rest.tolist())
    assert len(chosen) + len(rest) == 200
    again, _ = stratified_choice(labels, 0.1, "data", "val", 0.1)
    assert torch.equal(chosen, again)
    import kdzoo

    data = kdzoo.load_dataset("synthetic", train_size=100, test_size=20, image_size=8)
    split = carve_validation(data, 0.2)
    assert len(split.val_labels) == 20 and len(split.train_labels) == 80
    train = {tuple(x.flatten().tolist()) for x in split.train_images}
    assert not any(tuple(x.flatten().tolist()) in train for x in split.val_images)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        carve_validation(data, 1.5)


def test_runs_select_the_epoch_best_on_validation(zoo):
    for summary_file in zoo.glob("*/summary.json"):
        summary = json.loads(summary_file.read_text())
        metrics = read_metrics(summary_file.parent)
        best = max(metrics, key=lambda m: (m["val"]["top1"], -m["epoch"]))
        assert summary["selection"] == "val" and summary["best_top1_epoch"] == best["epoch"]
        assert summary["best_top1"] == best["test"]["top1"]
        assert summary["best_val_top1"] == best["val"]["top1"]


def test_every_method_and_seed_sees_the_same_split(zoo):
    from kdzoo.engine.build import load_run_data
    from kdzoo.spec import resolve_config

    configs = sorted((zoo / "configs").glob("*.yaml"))
    splits = [load_run_data(resolve_config(path)) for path in configs]
    assert len(splits) == 6
    for data in splits[1:]:
        assert torch.equal(data.val_labels, splits[0].val_labels)
        assert torch.equal(data.val_images, splits[0].val_images)


# ------------------------------------------------------------------ records and TensorBoard
def test_metrics_records_are_grouped(make_config):
    result = fit(make_config(optim={"epochs": 1}, data={"val_split": 0.25}))
    (record,) = read_metrics(result.path)
    assert set(record) == {"epoch", "stage", "stage_epoch", "lr", "terms", "train", "val", "test",
                           "time"}
    assert result.summary["metrics_format"] == "kdzoo-metrics/2"


def test_tensorboard_event_files(make_config, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = fit(make_config(optim={"epochs": 2}, tensorboard=True))
    events = EventAccumulator(str(result.path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"terms/loss", "terms/ce", "terms/st", "test/top1", "train/top1", "lr",
            "time/epoch_seconds"} <= tags
    assert [e.step for e in events.Scalars("test/top1")] == [1, 2]


def test_tensorboard_missing_is_one_line(make_config, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError, match="pip install"):
        fit(make_config(tensorboard=True))
