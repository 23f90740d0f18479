"""The local teacher store: import (file, mdistiller folder, cifar_teachers.tar), list, verify,
resolve, and the ``kdzoo teachers`` command pieces."""
import argparse
import hashlib
import io
import json
import logging
import tarfile

import numpy as np
import pytest
import torch

from kdzoo.cli import _Parser
from kdzoo.cli.teachers import add_teachers_parser, cmd_teachers
from kdzoo.data import BatchLoader, load_dataset
from kdzoo.engine import evaluate
from kdzoo.errors import CheckpointError, ConfigError, KdzooError
from kdzoo.models import create_model, export_model
from kdzoo.teachers import (check_teacher_fits, default_store, import_teachers, is_teacher_spec,
                            list_teachers, resolve_teacher, teacher_entry, verify_teachers)

SYNTH = {"num_classes": 100, "train_size": 8, "test_size": 200, "image_size": 16}


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mdistiller_file(path, model="resnet8", seed=0, extra=False):
    """A RepDistiller/mdistiller checkpoint: {'model': state_dict, 'epoch', 'best_acc'}."""
    torch.manual_seed(seed)
    net = create_model(model, num_classes=100)
    state = {"model": net.state_dict(), "epoch": 240, "best_acc": 79.4}
    if extra:  # what the real files carry beside the weights
        state.update(opt=argparse.Namespace(model=model, lr=0.05), acc=np.float64(79.4))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def mdistiller_folder(root):
    for arch in ("resnet8", "resnet8x4"):
        mdistiller_file(root / "cifar_teachers" / f"{arch}_vanilla" / "ckpt_epoch_240.pth", arch)
    return root / "cifar_teachers"


def no_data(tmp_path):
    return tmp_path / "no-datasets"  # an empty --data-dir: cifar100 is "missing"


def one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message and message
    return message


def test_import_file_records_the_entry_and_the_measured_accuracy(tmp_path):
    src = mdistiller_file(tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth")
    before = src.read_bytes()
    store = tmp_path / "store"
    [entry] = import_teachers(src, store, dataset="synthetic", data_options=SYNTH)
    stored = store / entry["file"]
    assert entry["name"] == "resnet8/synthetic" and entry["model"] == "resnet8"
    assert entry["dataset"] == "synthetic" and entry["num_classes"] == 100
    assert entry["sha256"] == sha(stored) == sha(src) and entry["source"] == str(src.resolve())
    assert src.read_bytes() == before and stored.read_bytes() == before  # copied, untouched
    data = load_dataset("synthetic", **SYNTH)
    model = create_model("resnet8", num_classes=100, checkpoint=stored)
    expected = evaluate(model, BatchLoader(data, 256, "cpu"))
    assert entry["test_top1"] == expected["top1"] and entry["test_top5"] == expected["top5"]
    assert entry["test_images"] == 200 and entry["note"] is None and entry["kdzoo_version"]
    index = json.loads((store / "teachers.json").read_text())
    assert index["teachers"] == [entry] and list_teachers(store) == [entry]
    assert sorted(p.name for p in store.iterdir()) == ["files", "teachers.json"]  # no staging
    assert resolve_teacher("teachers:resnet8/synthetic", store) == stored.resolve()


def test_import_folder_without_the_dataset_records_null_accuracy(tmp_path, caplog):
    folder = mdistiller_folder(tmp_path / "download_ckpts")
    store = tmp_path / "store"
    with caplog.at_level(logging.WARNING, logger="kdzoo"):
        logging.getLogger("kdzoo").addHandler(caplog.handler)
        try:
            entries = import_teachers(folder.parent, store, data_dir=no_data(tmp_path))
        finally:
            logging.getLogger("kdzoo").removeHandler(caplog.handler)
    assert [e["name"] for e in entries] == ["resnet8/cifar100", "resnet8x4/cifar100"]
    assert all(e["test_top1"] is None and e["test_top5"] is None for e in entries)
    assert all("cifar100 not found" in e["note"] for e in entries)
    assert "test accuracy not measured" in caplog.text
    assert entries[1]["source"] == str((folder / "resnet8x4_vanilla" /
                                        "ckpt_epoch_240.pth").resolve())
    assert [r["status"] for r in verify_teachers(store)] == ["ok", "ok"]


def test_import_tar_reads_members_into_the_store_only(tmp_path):
    folder = mdistiller_folder(tmp_path / "src")
    archive = tmp_path / "cifar_teachers.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="cifar_teachers")
    store = tmp_path / "store"
    entries = import_teachers(archive, store, data_dir=no_data(tmp_path))
    assert [e["name"] for e in entries] == ["resnet8/cifar100", "resnet8x4/cifar100"]
    member = "cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth"
    assert entries[0]["source"] == f"{archive.resolve()}:{member}"
    assert entries[0]["sha256"] == sha(folder / "resnet8_vanilla" / "ckpt_epoch_240.pth")
    assert sorted(p.name for p in store.iterdir()) == ["files", "teachers.json"]
    assert not (tmp_path / "cifar_teachers").exists()  # nothing unpacked beside the tar


def test_tar_with_an_unsafe_member_is_refused(tmp_path):
    folder = mdistiller_folder(tmp_path / "src")
    archive = tmp_path / "deep" / "evil.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="cifar_teachers")
        info = tarfile.TarInfo("../evil")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    store = tmp_path / "store"
    with pytest.raises(CheckpointError) as exc:
        import_teachers(archive, store, evaluate=False)
    assert "unsafe member '../evil'" in one_line(exc)
    assert not (tmp_path / "evil").exists() and list_teachers(store) == []
    assert list((store / "files").iterdir()) == []


def test_reimport_is_a_no_op_and_another_file_needs_overwrite(tmp_path, caplog):
    store = tmp_path / "store"
    first = mdistiller_file(tmp_path / "a" / "resnet8_vanilla" / "ckpt_epoch_240.pth", seed=0)
    [entry] = import_teachers(first, store, evaluate=False)
    logging.getLogger("kdzoo").addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="kdzoo"):
            assert import_teachers(first, store, evaluate=False) == [entry]
    finally:
        logging.getLogger("kdzoo").removeHandler(caplog.handler)
    assert "already stored" in caplog.text and list_teachers(store) == [entry]
    second = mdistiller_file(tmp_path / "b" / "resnet8_vanilla" / "ckpt_epoch_240.pth", seed=1)
    with pytest.raises(CheckpointError) as exc:
        import_teachers(second, store, evaluate=False)
    assert "--overwrite" in one_line(exc) and list_teachers(store) == [entry]
    [other] = import_teachers(second, store, evaluate=False, name="resnet8/alt")
    [replaced] = import_teachers(second, store, evaluate=False, overwrite=True)
    assert replaced["sha256"] == sha(second) != entry["sha256"]
    assert not (store / entry["file"]).exists()  # the replaced copy is dropped
    assert sorted(e["name"] for e in list_teachers(store)) == ["resnet8/alt", "resnet8/cifar100"]
    assert other["file"] == replaced["file"]  # one copy per content


def test_a_file_for_another_architecture_is_refused_with_nothing_added(tmp_path):
    store = tmp_path / "store"
    wrong = mdistiller_file(tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth", "resnet8x4")
    with pytest.raises(CheckpointError) as exc:
        import_teachers(wrong, store, evaluate=False)
    message = one_line(exc)
    assert "does not fit resnet8" in message and str(wrong) in message and ".import-" not in message
    assert list_teachers(store) == [] and list((store / "files").iterdir()) == []
    with pytest.raises(ConfigError) as exc:  # a plain file: the model must be named
        import_teachers(mdistiller_file(tmp_path / "t.pth"), store, dataset="cifar100")
    assert "--model" in one_line(exc)


def test_mdistiller_extras_load_without_trust(tmp_path):
    src = mdistiller_file(tmp_path / "t.pth", extra=True)
    create_model("resnet8", num_classes=100, checkpoint=src)  # plain data: no trust needed
    [entry] = import_teachers(src, tmp_path / "store", model="resnet8", dataset="cifar100",
                              evaluate=False)
    assert entry["name"] == "resnet8/cifar100" and entry["note"] == "not measured (--no-eval)"


def test_kdzoo_export_gives_model_and_classes(tmp_path):
    path = tmp_path / "student.pt"
    export_model(create_model("resnet8", num_classes=100), path)
    store = tmp_path / "store"
    with pytest.raises(ConfigError) as exc:
        import_teachers(path, store, evaluate=False)
    assert "--dataset" in one_line(exc)
    [entry] = import_teachers(path, store, dataset="synthetic", data_options=SYNTH)
    assert (entry["model"], entry["num_classes"], entry["in_chans"]) == ("resnet8", 100, 3)
    assert entry["test_top1"] is not None
    with pytest.raises(ConfigError) as exc:  # 100 classes are not digits' 10
        import_teachers(path, store, dataset="digits")
    assert "pass the --dataset it was trained on" in one_line(exc)


def test_resolve_checks_the_file_and_suggests_names(tmp_path):
    store = tmp_path / "store"
    [entry] = import_teachers(mdistiller_folder(tmp_path / "src") / "resnet8_vanilla", store,
                              data_dir=no_data(tmp_path))
    assert is_teacher_spec("teachers:resnet8/cifar100") and not is_teacher_spec("t.pth")
    assert teacher_entry("teachers:resnet8/cifar100", store) == entry
    with pytest.raises(CheckpointError) as exc:
        resolve_teacher("teachers:resnet8/cifar10", store)
    assert "did you mean 'resnet8/cifar100'" in one_line(exc)
    stored = store / entry["file"]
    stored.write_bytes(stored.read_bytes() + b"x")
    assert verify_teachers(store)[0]["status"] == "mismatch"
    with pytest.raises(CheckpointError) as exc:
        resolve_teacher("teachers:resnet8/cifar100", store)
    assert "has changed" in one_line(exc) and "kdzoo teachers verify" in str(exc.value)
    stored.unlink()
    assert verify_teachers(store)[0]["status"] == "missing"
    with pytest.raises(CheckpointError) as exc:
        resolve_teacher("teachers:resnet8/cifar100", store)
    assert "kdzoo teachers import" in one_line(exc)
    import_teachers(entry["source"], store, evaluate=False)  # the same file repairs the copy
    assert verify_teachers(store)[0]["status"] == "ok"


def test_check_teacher_fits():
    entry = {"name": "ResNet50/cifar100", "model": "ResNet50", "dataset": "cifar100",
             "num_classes": 100, "in_chans": 3}
    check_teacher_fits(entry, "resnet50", 100)  # an alias of the same model
    for model, classes in (("resnet56", 100), ("ResNet50", 10)):
        with pytest.raises(ConfigError) as exc:
            check_teacher_fits(entry, model, classes)
        assert "--teacher ResNet50" in one_line(exc)


def test_default_store(monkeypatch, tmp_path):
    monkeypatch.delenv("KDZOO_TEACHERS", raising=False)
    monkeypatch.setenv("KDZOO_CACHE", str(tmp_path / "cache"))
    assert default_store() == tmp_path / "cache" / "teachers"
    monkeypatch.setenv("KDZOO_TEACHERS", str(tmp_path / "t"))
    assert default_store() == tmp_path / "t"


def run(argv):
    """What ``kdzoo.cli.main`` will do: parse, run, turn a KdzooError into its exit status."""
    parser = _Parser(prog="kdzoo")
    add_teachers_parser(parser.add_subparsers(dest="command", parser_class=_Parser))
    try:
        return cmd_teachers(parser.parse_args(argv)), ""
    except KdzooError as exc:
        return exc.exit_status, str(exc)


def test_cli(tmp_path, capsys):
    folder = mdistiller_folder(tmp_path / "src")
    store = ["--store", str(tmp_path / "store")]
    assert run(["teachers", "list", *store]) == (0, "")
    assert "no teachers" in capsys.readouterr().out
    assert run(["teachers", "import", str(folder), "--data-dir", str(no_data(tmp_path)),
                *store]) == (0, "")
    capsys.readouterr()
    assert run(["teachers", "list", *store]) == (0, "")
    table = capsys.readouterr().out
    digest = list_teachers(tmp_path / "store")[0]["sha256"]
    assert table.splitlines()[0].split() == ["name", "model", "dataset", "test", "top-1",
                                             "sha256", "source"]
    assert "resnet8x4/cifar100" in table and digest[:12] in table and digest[:13] not in table
    assert run(["teachers", "verify", *store]) == (0, "")
    stored = tmp_path / "store" / list_teachers(tmp_path / "store")[0]["file"]
    stored.write_bytes(b"corrupt")
    assert run(["teachers", "verify", *store])[0] == 1
    assert "mismatch" in capsys.readouterr().out
    code, message = run(["teachers", "import", str(tmp_path / "nowhere.pth"), *store])
    assert code == 2 and "does not exist" in message and "\n" not in message
    code, message = run(["teachers", "import", str(folder), "--model", "resnet8", *store])
    assert code == 2 and "one teacher" in message
    code, message = run(["teachers"])
    assert code == 2 and "ACTION" in message and "\n" not in message


def test_a_run_distils_from_a_stored_teacher(tmp_path, monkeypatch, capsys):
    from kdzoo.cli import main

    store = tmp_path / "store"
    monkeypatch.setenv("KDZOO_TEACHERS", str(store))
    synth = {"num_classes": 10, "train_size": 32, "test_size": 16, "image_size": 16}
    teacher = mdistiller_file(tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth", extra=True)
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, teacher)
    import_teachers(teacher, dataset="synthetic", data_options=synth, name="resnet8/synthetic")
    run = ["train", "--method", "st", "--teacher", "resnet8", "--teacher-checkpoint",
           "teachers:resnet8/synthetic", "--student", "resnet8", "--data", "synthetic",
           "--epochs", "1", "--batch-size", "16", "--no-progress"] + \
        [f"--set=data.{k}={v}" for k, v in synth.items()]
    assert main([*run, "--out", str(tmp_path / "run")]) == 0
    assert main([*run, "--out", str(tmp_path / "wrong"), "--teacher", "resnet8x4"]) == 2
    assert "is a resnet8 for 10 classes" in capsys.readouterr().err
    stored = resolve_teacher("teachers:resnet8/synthetic")
    stored.write_bytes(stored.read_bytes()[:-10] + b"0123456789")
    assert main([*run, "--out", str(tmp_path / "changed")]) == 2
    err = capsys.readouterr().err
    assert "has changed since its import" in err and err.count("\n") == 1
    assert not (tmp_path / "changed").exists()

