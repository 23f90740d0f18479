"""A local, checksummed store of trained teachers (the command is ``kdzoo teachers
import|list|verify``: :mod:`kdzoo.cli.teachers`).

The store (``$KDZOO_TEACHERS``, else ``default_cache_dir() / "teachers"``, or ``store=``) holds
copies of the checkpoints under ``files/`` (a user's file is only read) and an index
``teachers.json`` (written atomically). A teacher is named ``<model>/<dataset>`` and given to a
run as ``teachers:<name>``; :func:`resolve_teacher` checks its sha256 first.

How :func:`import_teachers` tells the model and the dataset of PATH:

* mdistiller's layout, ``[cifar_teachers/]<arch>_vanilla/ckpt_epoch_240.pth`` (arch: resnet56,
  resnet110, resnet32x4, ResNet50, wrn_40_2, vgg13), as a folder (searched at its own level and
  two levels down) or as ``cifar_teachers.tar`` (``.tar``/``.tar.gz``/``.tgz``, read member by
  member, never unpacked; refused whole for an absolute or ``..`` member, a link or a special
  file): the model is the folder name less ``_vanilla``, the dataset cifar100, and the file the
  ``ckpt_epoch_<N>.pth`` with the highest N.
* one checkpoint file: the model is ``model``, else the one a kdzoo export records, else the
  arch of a parent ``<arch>_vanilla`` folder; the dataset is ``dataset``, else a ``dataset`` the
  export records, else cifar100 in an ``<arch>_vanilla`` folder. Unknown: a one-line error.

Classes: ``num_classes``, else the export's, else the dataset's. RepDistiller/mdistiller files
hold an ``argparse.Namespace`` and numpy scalars besides the weights, which kdzoo's checkpoint
reader accepts (:func:`kdzoo.models.checkpoint.community_safe_globals`). An import is all or
nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any

from .environment import default_cache_dir, resolve_device
from .errors import CheckpointError, ConfigError, DatasetError, KdzooError
from .io import atomic_write_json
from .registry import did_you_mean
from .version import __version__

log = logging.getLogger("kdzoo")

PREFIX = "teachers:"
INDEX = "teachers.json"
INDEX_FORMAT = "kdzoo-teachers/1"
MDISTILLER_DATASET = "cifar100"
KNOWN_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10, "fashion-mnist": 10}
_EPOCH = re.compile(r"^ckpt_epoch_(\d+)\.pth$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+/-]*$")


def default_store() -> Path:
    """``$KDZOO_TEACHERS``, else ``default_cache_dir() / "teachers"``."""
    if os.environ.get("KDZOO_TEACHERS"):
        return Path(os.environ["KDZOO_TEACHERS"]).expanduser()
    return default_cache_dir() / "teachers"


def store_root(store: str | Path | None = None) -> Path:
    """The store folder: ``store``, else :func:`default_store`."""
    return default_store() if store is None else Path(store).expanduser()


def command_hint(command: str, store: str | Path | None = None) -> str:
    """The ``kdzoo teachers COMMAND`` a message suggests, with the same ``--store``."""
    return f"`kdzoo teachers {command}{'' if store is None else f' --store {store}'}`"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_index(root: Path) -> list[dict[str, Any]]:
    path = root / INDEX
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text("utf-8"))
        if data.get("format") != INDEX_FORMAT or not all(
                {"name", "file", "sha256"} <= set(e) for e in data["teachers"]):
            raise ValueError(f"not a {INDEX_FORMAT} index")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"the teacher index {path} is unreadable ({str(exc)[:80]}): restore "
                              "it, or import the teachers again into a fresh --store") from None
    return data["teachers"]


def _entry_path(root: Path, entry: dict[str, Any]) -> Path:
    path = (root / entry["file"]).resolve()
    if root.resolve() not in path.parents:
        raise CheckpointError(f"the teacher index {root / INDEX} points outside the store "
                              f"({entry['file']}): restore the index or import the teacher again")
    return path


def _intact(root: Path, entry: dict[str, Any]) -> bool:
    path = _entry_path(root, entry)
    return path.is_file() and file_sha256(path) == entry["sha256"]


# ---- finding PATH's teachers and copying them into a staging folder of the store ------------

def _arch_of(folder: str) -> str | None:
    return folder[: -len("_vanilla")] if folder.endswith("_vanilla") and folder != "_vanilla" \
        else None


def _pick(names: list[str]) -> list[str]:
    """Of relative paths, the ``<arch>_vanilla/ckpt_epoch_<N>.pth`` with the highest N per
    folder."""
    newest: dict[str, tuple[int, str]] = {}
    for name in names:
        path = PurePosixPath(name)
        match = _EPOCH.match(path.name)
        if match and _arch_of(path.parent.name):
            newest[str(path.parent)] = max(newest.get(str(path.parent), (-1, "")),
                                           (int(match.group(1)), name))
    return [name for _, name in sorted(newest.values(), key=lambda v: v[1])]


def _stage(src: Path, staging: Path) -> list[dict[str, Any]]:
    """Copy ``src``'s teachers into ``staging``: [{file, sha256, source, label, arch}]."""
    out: list[dict[str, Any]] = []

    def stage(handle: IO[bytes], name: str, **info: Any) -> None:
        file, digest = staging / f"{len(out)}.pth", hashlib.sha256()
        try:
            with open(file, "wb") as copy:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
                    copy.write(chunk)
        except OSError as exc:  # the store's disk, not the source: the source reads raise later
            raise CheckpointError(f"cannot copy {info['label']} into the store {staging.parent} "
                                  f"({exc.strerror or exc}): free some space or pass another "
                                  "--store") from None
        out.append({"file": file, "sha256": digest.hexdigest(),
                    "arch": _arch_of(PurePosixPath(name).parent.name), **info})

    if src.is_dir():
        found = [p for pattern in ("*.pth", "*/*.pth", "*/*/*.pth") for p in src.glob(pattern)]
        names = {p.relative_to(src.parent).as_posix(): p for p in found if p.is_file()}
        for name in _pick(list(names)):
            with open(names[name], "rb") as handle:
                stage(handle, name, source=str(names[name].resolve()), label=str(names[name]))
    elif src.name.endswith((".tar", ".tar.gz", ".tgz")):
        try:
            with tarfile.open(src, "r:*") as tar:
                members = {m.name: m for m in tar.getmembers()}
                for m in members.values():
                    if m.name.startswith(("/", "\\")) or ".." in PurePosixPath(m.name).parts \
                            or re.match(r"^[A-Za-z]:", m.name) or not (m.isfile() or m.isdir()):
                        raise CheckpointError(
                            f"archive {src} has an unsafe member '{m.name}' (an absolute path, "
                            "'..', a link or a special file); nothing was imported: use the "
                            "original cifar_teachers.tar")
                for name in _pick([n for n, m in members.items() if m.isfile()]):
                    with tar.extractfile(members[name]) as handle:  # type: ignore[union-attr]
                        stage(handle, name, source=f"{src.resolve()}:{name}",
                              label=f"{src}:{name}", archive=str(src.resolve()))
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise CheckpointError(f"cannot read archive {src} ({str(exc)[:100]}): it is corrupt "
                                  "or truncated; use an intact copy") from None
    else:
        with open(src, "rb") as handle:
            stage(handle, src.resolve().as_posix(), source=str(src.resolve()), label=str(src))
    if not out:
        raise CheckpointError(f"no teachers in mdistiller's layout in {src} (<arch>_vanilla/"
                              "ckpt_epoch_240.pth, e.g. resnet32x4_vanilla/ckpt_epoch_240.pth): "
                              "import a single file with --model NAME --dataset NAME")
    return out


# ---- import -----------------------------------------------------------------------------------

def _refused(exc: KdzooError, item: dict[str, Any]) -> CheckpointError:
    message = str(exc).replace(str(item["file"]), item["label"])
    return CheckpointError(f"{message} (nothing was imported)")


def _identify(item: dict[str, Any], model: str | None, dataset: str | None,
              trust: bool) -> tuple[str, str, dict[str, Any]]:
    """(canonical model, dataset, the kdzoo export's header or {}) of a staged file."""
    from .data.base import DATASETS
    from .models.checkpoint import KDZOO_FORMAT, read_checkpoint_file
    from .models.registry import canonical_model_name

    try:
        obj = read_checkpoint_file(item["file"], trust=trust)
    except KdzooError as exc:
        raise _refused(exc, item) from None
    header = ({k: v for k, v in obj.items() if k != "state_dict"} if isinstance(obj, dict)
              and obj.get("kdzoo_format") == KDZOO_FORMAT else {})
    arch = model or header.get("model_name") or item["arch"]
    if arch is None:
        raise ConfigError(f"cannot tell which model {item['label']} holds: pass --model NAME "
                          "(`kdzoo list models`)")
    try:
        arch = canonical_model_name(arch)
    except ConfigError as exc:
        raise ConfigError(f"{item['label']}: {exc}; pass --model NAME") from None
    data_name = dataset or header.get("dataset") or (MDISTILLER_DATASET if item["arch"] else None)
    if data_name is None:
        raise ConfigError(f"cannot tell which dataset {item['label']} was trained on: pass "
                          "--dataset NAME (`kdzoo list datasets`)")
    DATASETS.get(data_name)
    return arch, data_name, header


def import_teachers(path: str | Path, store: str | Path | None = None, dataset: str | None = None,
                    data_dir: str | Path | None = None, model: str | None = None,
                    name: str | None = None, evaluate: bool = True, device: str = "cpu", *,
                    overwrite: bool = False, data_options: dict[str, Any] | None = None,
                    num_classes: int | None = None, trust_checkpoint: bool = False,
                    ) -> list[dict[str, Any]]:
    """Copy the teachers of ``path`` (a checkpoint file, an mdistiller-layout folder or
    ``cifar_teachers.tar``; the module docstring says how model and dataset are told) into the
    store, each proven to load into its architecture and, when ``evaluate`` and
    ``load_dataset(dataset, data_dir, **data_options)`` succeeds, tested on the test split.

    The same file (sha256) under an existing name is a no-op (or repairs a damaged stored
    copy); another file under an existing name is refused unless ``overwrite``. ``model`` and
    ``name`` need exactly one teacher in ``path``. Returns the entries of ``path``'s teachers."""
    src, root = Path(path).expanduser(), store_root(store)
    if not src.exists():
        raise CheckpointError(f"{src} does not exist: give a checkpoint file, a folder of "
                              "<arch>_vanilla teachers, or cifar_teachers.tar")
    name = None if name is None else name.removeprefix(PREFIX)
    if name is not None and not _NAME.match(name):
        raise ConfigError(f"teacher name '{name}' must be letters, digits and _.+/- (e.g. "
                          "resnet32x4/cifar100)")
    entries = {e["name"]: e for e in _read_index(root)}
    try:
        (root / "files").mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
    except OSError as exc:
        raise ConfigError(f"cannot use {root} as the teacher store ({exc.strerror or exc}): "
                          "pass --store DIR, a folder you can write") from None
    try:
        found = _stage(src, staging)
        if (model or name) and len(found) != 1:
            raise ConfigError(f"--model and --name name one teacher, but {src} holds "
                              f"{len(found)}: import them one file at a time")
        loaded: dict[str, tuple[Any, str | None]] = {}
        kept, new, seen = [], [], set()
        for item in found:
            arch, data_name, header = _identify(item, model, dataset, trust_checkpoint)
            key = name or f"{arch}/{data_name}"
            old = entries.get(key)
            if key in seen:
                raise ConfigError(f"{src} holds two teachers named '{key}': import them one "
                                  "at a time with --name")
            seen.add(key)
            if old and old["sha256"] == item["sha256"] and not overwrite and _intact(root, old):
                log.info("%s: already stored (same sha256 %s); nothing to do", key,
                         old["sha256"][:12])
                kept.append(old)
                continue
            if old and old["sha256"] != item["sha256"] and not overwrite:
                raise CheckpointError(
                    f"teacher '{key}' is already stored from another file ({old['source']}, "
                    f"sha256 {old['sha256'][:12]}); pass --overwrite to replace it, or --name "
                    "to store this one under another name")
            if evaluate and data_name not in loaded:
                loaded[data_name] = _load_data(data_name, data_dir, data_options)
            data, note = loaded[data_name] if evaluate else (None, "not measured (--no-eval)")
            entry = _check(item, arch, data_name, header, data, num_classes, data_options,
                           trust_checkpoint, device)
            new.append(({"name": key, **entry, "note": note,
                         "kdzoo_version": __version__}, item["file"]))
        return kept + _commit(root, entries, new)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load_data(name: str, data_dir: str | Path | None,
               options: dict[str, Any] | None) -> tuple[Any, str | None]:
    from .data import load_dataset

    try:
        return load_dataset(name, data_dir, **(options or {})), None
    except DatasetError as exc:
        return None, f"not measured: {exc}"


def _check(item: dict[str, Any], arch: str, data_name: str, header: dict[str, Any], data: Any,
           num_classes: int | None, data_options: dict[str, Any] | None, trust: bool,
           device: str) -> dict[str, Any]:
    """Load the staged file into ``arch`` (refusing one that does not fit), test it on ``data``
    when there is one; the fields of its entry."""
    from .models import create_model

    classes = num_classes or header.get("num_classes") or (
        data.num_classes if data is not None else
        KNOWN_CLASSES.get(data_name, (data_options or {}).get("num_classes")))
    if classes is None:
        raise ConfigError(f"cannot tell how many classes {item['label']} has: pass "
                          "--num-classes N")
    chans = header.get("in_chans") or (data.in_chans if data is not None else 3)
    if data is not None and (classes, chans) != (data.num_classes, data.in_chans):
        raise ConfigError(f"{item['label']} has {classes} classes and {chans} input channels, "
                          f"but {data_name} has {data.num_classes} and {data.in_chans}: pass "
                          "the --dataset it was trained on")
    try:
        net = create_model(arch, num_classes=classes, in_chans=chans, checkpoint=item["file"],
                           trust_checkpoint=trust)
    except KdzooError as exc:
        raise _refused(exc, item) from None
    scores: dict[str, Any] = {"top1": None, "top5": None}
    if data is not None:
        from .data import BatchLoader
        from .metrics import evaluate
        from .models.features import freeze

        dev = resolve_device(device)
        scores = evaluate(freeze(net).to(dev), BatchLoader(data, 256, dev))
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", arch)
    return {"model": arch, "dataset": data_name, "num_classes": classes, "in_chans": chans,
            "file": f"files/{safe}-{item['sha256'][:16]}.pth", "sha256": item["sha256"],
            "size": item["file"].stat().st_size, "source": item["source"],
            **({"archive": item["archive"]} if "archive" in item else {}),
            "imported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "test_top1": scores["top1"], "test_top5": scores["top5"],
            "test_images": None if data is None else len(data.test_labels),
            **({"data_options": dict(data_options)} if data_options else {})}


def _commit(root: Path, entries: dict[str, dict[str, Any]],
            new: list[tuple[dict[str, Any], Path]]) -> list[dict[str, Any]]:
    """Move the checked files into the store, write the index, drop files no entry names."""
    for entry, staged in new:
        if not _intact(root, entry):
            os.replace(staged, root / entry["file"])
        verb = "replaced" if entry["name"] in entries else "imported"
        entries[entry["name"]] = entry
        if entry["test_top1"] is None:  # the dataset is missing, or --no-eval
            missing = entry["note"].startswith("not measured:")
            (log.warning if missing else log.info)(
                "%s %s from %s (sha256 %s): test accuracy %s%s", verb, entry["name"],
                entry["source"], entry["sha256"][:12], entry["note"],
                "; import again with --data-dir DIR --overwrite to measure it" if missing else "")
        else:
            log.info("%s %s from %s (sha256 %s): test top-1 %.2f%%, top-5 %.2f%% (%d images)",
                     verb, entry["name"], entry["source"], entry["sha256"][:12],
                     entry["test_top1"], entry["test_top5"], entry["test_images"])
    if new:
        atomic_write_json(root / INDEX, {"format": INDEX_FORMAT, "teachers": sorted(
            entries.values(), key=lambda e: e["name"])})
        named = {e["file"] for e in entries.values()}
        for stale in (root / "files").iterdir():
            if f"files/{stale.name}" not in named:
                stale.unlink(missing_ok=True)
    return [entry for entry, _ in new]


# ---- reading the store ------------------------------------------------------------------------

def list_teachers(store: str | Path | None = None) -> list[dict[str, Any]]:
    """The index's entries, sorted by name."""
    return sorted(_read_index(store_root(store)), key=lambda e: e["name"])


def verify_teachers(store: str | Path | None = None) -> list[dict[str, Any]]:
    """[{name, file, status}], status ``ok``, ``mismatch`` (sha256 differs) or ``missing``."""
    root = store_root(store)
    report = []
    for entry in list_teachers(store):
        path = _entry_path(root, entry)
        status = ("missing" if not path.is_file() else
                  "ok" if file_sha256(path) == entry["sha256"] else "mismatch")
        report.append({"name": entry["name"], "file": str(path), "status": status})
    return report


def is_teacher_spec(spec: Any) -> bool:
    """Whether ``spec`` (e.g. a --teacher-checkpoint value) names a stored teacher."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def teacher_entry(spec: str, store: str | Path | None = None) -> dict[str, Any]:
    """The index entry of ``teachers:<name>`` (the file is not checked: see resolve_teacher)."""
    if not is_teacher_spec(spec):
        raise ConfigError(f"'{spec}' is not a stored teacher: write teachers:<name>, e.g. "
                          "teachers:resnet32x4/cifar100")
    name, entries = spec[len(PREFIX):], list_teachers(store)
    for entry in entries:
        if entry["name"] == name:
            return entry
    hint = did_you_mean(name, [e["name"] for e in entries])
    raise CheckpointError(f"no teacher '{name}' in the store {store_root(store)}{hint}: "
                          f"{command_hint('list', store)} shows them, "
                          f"{command_hint('import PATH', store)} adds one")


def resolve_teacher(spec: str, store: str | Path | None = None) -> Path:
    """The stored file of ``teachers:<name>``, after checking its sha256 against the index."""
    entry = teacher_entry(spec, store)
    path = _entry_path(store_root(store), entry)
    source = entry.get("archive") or entry["source"]
    fix = (f"run {command_hint('verify', store)}, then "
           f"{command_hint('import ' + source, store)} to restore it")
    if not path.is_file():
        raise CheckpointError(f"stored teacher '{entry['name']}' lacks its file {path}: {fix}")
    actual = file_sha256(path)
    if actual != entry["sha256"]:
        raise CheckpointError(f"stored teacher '{entry['name']}' has changed since its import "
                              f"({path}: sha256 {actual[:12]}, expected {entry['sha256'][:12]}): "
                              f"{fix}")
    return path


def check_teacher_fits(entry: dict[str, Any], model_name: str, num_classes: int,
                       in_chans: int | None = None) -> None:
    """A one-line ConfigError when a run's teacher model, class count (or input channels)
    differ from the stored teacher's."""
    from .models.registry import canonical_model_name

    stored = (entry["model"], entry["num_classes"], entry.get("in_chans", 3))
    wanted = (canonical_model_name(model_name), num_classes,
              stored[2] if in_chans is None else in_chans)
    if wanted != stored:
        raise ConfigError(
            f"stored teacher '{entry['name']}' is a {stored[0]} for {stored[1]} classes "
            f"({entry['dataset']}, {stored[2]} channels), but the run wants a {wanted[0]} for "
            f"{wanted[1]} classes ({wanted[2]} channels): pass --teacher {stored[0]} --data "
            f"{entry['dataset']}, or another stored teacher (`kdzoo teachers list`)")


def checkpoint_file(checkpoint: str | Path | None, model_name: str, num_classes: int,
                    in_chans: int) -> str | Path | None:
    """A checkpoint argument as a file: ``teachers:<name>`` becomes the stored file, after
    checking that it is a ``model_name`` for ``num_classes`` classes and that its sha256 is the
    recorded one; anything else passes through."""
    if not is_teacher_spec(checkpoint):
        return checkpoint
    assert isinstance(checkpoint, str)
    check_teacher_fits(teacher_entry(checkpoint), model_name, num_classes, in_chans)
    return resolve_teacher(checkpoint)
