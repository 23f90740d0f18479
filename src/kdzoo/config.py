"""Run configuration: typed dataclasses, safe YAML, ``--set key=value`` overrides.

A configuration is resolved in layers, each overriding the one before:
dataclass defaults < preset (``configs/presets/NAME.yaml``) < ``--config FILE.yaml`` < command-line
flags < ``--set key=value``. Unknown keys and values of the wrong type are errors (with "did you
mean"), never silently ignored. The ``method`` and ``data`` sections are open: besides ``name``
they hold the method's hyper-parameters and the dataset's options, checked against the method's
and dataset's own signatures when the run is built.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .registry import did_you_mean


@dataclass
class MethodConfig:
    name: str = "baseline"
    params: dict[str, Any] = field(default_factory=dict)  # written flat beside ``name`` in YAML


@dataclass
class StudentConfig:
    name: str = "resnet20"
    init: str | None = None  # initial weights (the reference's --s_init); default: seeded init
    pretrained: bool = False  # torchvision/timm models: start from the library's weights


@dataclass
class TeacherConfig:
    name: str | None = None
    checkpoint: str | None = None
    untrained: bool = False  # allow a randomly initialised teacher (smoke tests, benchmarks)
    pretrained: bool = False  # torchvision/timm models: the library's pretrained weights


@dataclass
class DataConfig:
    name: str = "digits"
    data_dir: str | None = None
    download: bool = False
    val_split: float = 0.0  # held-out validation fraction of the training data (0: none)
    train_subset: int | None = None  # a stratified subset of the training images (quick runs)
    options: dict[str, Any] = field(default_factory=dict)  # written flat beside ``name`` in YAML


@dataclass
class OptimConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = True
    schedule: str = "multistep"  # multistep | cosine | constant
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    dot_delta: float | None = None  # DOT (ICCV 2023): task/distillation momentum -/+ delta


@dataclass
class LossConfig:
    """RepDistiller's composition (``train_student.py``'s ``-r/-a/-b``): loss =
    ``ce`` x cross-entropy + ``kd`` x Hinton's KD at ``kd_temperature`` (the term ``hinton_kd``)
    + the method's own terms (their weight, RepDistiller's beta, is the method's ``weight``).
    The defaults (1, 0) leave every method as it is."""

    ce: float = 1.0              # gamma (-r): multiplies every cross-entropy term
    kd: float = 0.0              # alpha (-a): Hinton's KD on the frozen teacher's logits
    kd_temperature: float = 4.0  # --kd_T


@dataclass
class TrainConfig:
    method: MethodConfig = field(default_factory=MethodConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    preset: str | None = "reference"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out: str | None = None
    #: float64 trains, evaluates and runs the frozen teacher in double precision (CPU): runs
    #: then agree to float64 rounding across process counts and batch shapes, which float32
    #: training does not (it amplifies a 1e-7 rounding difference wherever a ReLU flips)
    precision: Literal["float32", "float64"] = "float32"
    # The fast path (on by default where it is exact up to float rounding):
    channels_last: bool = True      # NHWC activations: +20-30% on CPUs (oneDNN) and GPUs
    fold_teacher_bn: bool = True    # the frozen teacher runs with BatchNorm folded into its convs
    inference_chunk: int | None = None  # teacher/eval images per forward (None: 32 CPU, all GPU)
    # Opt-in speed-ups that change numerics or cost start-up time:
    sync_bn: bool = False           # under torchrun: BatchNorm statistics of the global batch
    compile: bool = False           # torch.compile the student and the frozen teacher
    amp: str | None = None          # bf16 or fp16 autocast (fp16 needs CUDA)
    cudnn_benchmark: bool = False   # cuDNN autotuning (CUDA; not bit-reproducible)
    # The teacher-output cache (methods that need only the teacher's logits):
    teacher_cache: bool = False     # reuse/fill the on-disk logits of every augmented view
    cache_dir: str | None = None    # default: $KDZOO_CACHE or ~/.cache/kdzoo
    eval_batch_size: int | None = None
    log_interval: int = 50  # steps between progress-bar updates (each costs a host sync)
    tensorboard: bool = False  # also write TensorBoard event files of every term and metric
    trust_checkpoint: bool = False
    deterministic: bool = False  # PyTorch's deterministic algorithms (CPU runs always are)
    nonfinite: str = "stop"  # a NaN/inf loss or gradient: "stop" the run or "skip" the batch
    use_recipes: bool = True  # apply the authors' published settings for method and pair
    recipes: list[str] = field(default_factory=list)  # the recipes applied (recorded)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, with method hyper-parameters and dataset options flattened."""
        data = dataclasses.asdict(self)
        data["method"] = {"name": self.method.name, **self.method.params}
        data["data"] = {k: v for k, v in data["data"].items() if k != "options"}
        data["data"].update(self.data.options)
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


OPEN_SECTIONS = {"method": "params", "data": "options"}


def list_presets() -> list[str]:
    folder = resources.files("kdzoo") / "configs" / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    if name not in list_presets():
        raise ConfigError(f"unknown preset '{name}'{did_you_mean(name, list_presets())}; "
                          f"presets: {', '.join(list_presets())}")
    text = (resources.files("kdzoo") / "configs" / "presets" / f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def load_yaml_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``: nested keys joined by dots."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """``["optim.lr=0.05", "method.temperature=3"]`` -> nested dict (values parsed as YAML)."""
    result: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got '{item}' (e.g. --set optim.lr=0.05)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is set twice with different shapes")
        node[parts[-1]] = value
    return result


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def check_value(key: str, value: Any, tp: Any, what: str = "config key") -> Any:
    """``value`` converted to type ``tp`` (an int is a fine float, a YAML string "1e-4" too), or
    a one-line :class:`ConfigError` naming ``what`` and ``key``."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value in choices and not (isinstance(value, bool) and bool not in map(type, choices)):
            return value
        listed = ", ".join(map(str, choices))
        raise ConfigError(f"{what} '{key}' must be one of {listed}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for inner in options[:-1]:
            try:
                return check_value(key, value, inner, what)
            except ConfigError:
                continue
        return check_value(key, value, options[-1], what)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{what} '{key}' must be a list, got {value!r}")
        return [check_value(f"{key}[{i}]", v, inner, what) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{what} '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, tp) and not (isinstance(value, bool) and tp is not bool):
        return value
    raise ConfigError(f"{what} '{key}' must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    open_field = OPEN_SECTIONS.get(prefix.rstrip("."))
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names or key == open_field:
            if open_field is not None:
                extra[key] = value
                continue
            candidates = [f"{prefix}{n}" for n in names]
            raise ConfigError(f"unknown config key '{full}'{did_you_mean(full, candidates)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}' must be a mapping, got {value!r}")
            kwargs[key] = _build(hint, value, f"{full}.")
        else:
            kwargs[key] = check_value(full, value, hint)
    if open_field is not None:
        kwargs[open_field] = extra
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Validate a nested dict (as written in YAML) into a :class:`TrainConfig`."""
    return _build(TrainConfig, data, "")


def resolve_config(
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    assignments: list[str] | None = None,
) -> TrainConfig:
    """Defaults < preset < recipes < config file < ``overrides`` (CLI flags) < ``assignments``
    (--set). The recipes (:mod:`kdzoo.recipes`) fill only keys the user did not set."""
    from .recipes import recipe_layer

    from_file = load_yaml_file(config_file) if config_file else {}
    overrides = overrides or {}
    from_set = parse_set(assignments or [])
    layers = [from_file, overrides, from_set]
    preset = TrainConfig().preset
    for layer in layers:
        if "preset" in layer:
            preset = layer["preset"]
    base = TrainConfig().to_dict()
    if preset is not None:
        if not isinstance(preset, str):
            raise ConfigError(f"config key 'preset' must be a string, got {preset!r}")
        base = deep_merge(base, load_preset(preset))
    merged = base
    for layer in layers:
        merged = _merge_open_sections(merged, layer)
    if merged.get("use_recipes", True) is not False:
        explicit: dict[str, Any] = {}
        for layer in layers:
            explicit = deep_merge(explicit, layer)
        recipes, names = recipe_layer(merged, explicit)
        if "method" in recipes:  # the recipe is for the run's method: keep its name with it
            recipes["method"] = {"name": merged["method"]["name"], **recipes["method"]}
        if names:
            merged = _merge_open_sections(base, recipes)
            for layer in layers:
                merged = _merge_open_sections(merged, layer)
            merged["recipes"] = names
    return config_from_dict(merged)


def _merge_open_sections(merged: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    # A layer that names another method drops the hyper-parameters set for the previous one
    # (a preset's or config file's ``method.weight`` must not leak into a different method).
    section = layer.get("method")
    if isinstance(section, dict) and "name" in section:
        previous = merged.get("method", {})
        if isinstance(previous, dict) and previous.get("name") != section["name"]:
            merged = {**merged, "method": {}}
    return deep_merge(merged, layer)
