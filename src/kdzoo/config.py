"""The run specification: typed, frozen dataclasses, and which of their fields change a result.

A :class:`TrainConfig` is what :func:`kdzoo.spec.resolve_config` returns: every setting of one run
at its effective value (defaults, preset, recipes, config file, flags and ``--set`` applied
once), the method's hyper-parameters as the method's own typed :class:`MethodParams`, frozen.
Every consumer (building the run, fitting it, the resume check, the grid's run names, the
report) reads this one object; nobody re-resolves it.

Every field says whether it can change a result (:func:`changes_result`): the learning rate,
the method's hyper-parameters, the augmentation do; where the data lives, the device, the thread
count, logging, progress and the speed options that are exact up to float rounding
(channels_last, BatchNorm folding, chunking, ``--compile``) do not. That one classification
decides what a resume may change, which settings name a grid's run folder, and which settings
make two rows of a report.

Values are checked when a section is built (ranges here; names against the registries in
:mod:`kdzoo.spec`), so an out-of-range spec cannot exist, even through ``dataclasses.replace``.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Mapping

import yaml

from .errors import ConfigError
from .layers import flatten
from .registry import did_you_mean

#: Field metadata of a setting that cannot change a result (where and how fast a run runs).
RUNTIME = MappingProxyType({"changes_result": False})
#: Dataset options that only say how the data is read (imagefolder's decoding workers).
RUNTIME_DATA_OPTIONS = frozenset({"workers"})


def _positive(section: str, **values: float | int | None) -> None:
    for key, value in values.items():
        if value is not None and not value > 0:
            kind = "a positive integer" if isinstance(value, int) else "positive"
            raise ConfigError(f"{section}{key} must be {kind}, got {value}")


def _non_negative(section: str, **values: float) -> None:
    for key, value in values.items():
        if value < 0:
            raise ConfigError(f"{section}{key} must not be negative, got {value}")


_Params = typing.TypeVar("_Params", bound="MethodParams")


@dataclass(frozen=True)
class MethodParams:
    """Base class of a method's hyper-parameters: a frozen dataclass whose fields are the
    hyper-parameters, typed, with the method's defaults (each method declares its own subclass).
    ``check`` raises a one-line :class:`ConfigError` for values out of range (types are checked
    from the annotations by :meth:`build`)."""

    #: Defaults that a ``variant`` hyper-parameter's value brings (RepDistiller's weights when
    #: ``variant="repdistiller"``), for the hyper-parameters the user leaves unset.
    variant_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    def check(self, method: str) -> None:
        """Refuse values out of range; called once the types are checked."""

    @classmethod
    def build(cls: type[_Params], method: str, values: Mapping[str, Any]) -> _Params:
        """The defaults updated with ``values``: unknown keys and wrong types are refused."""
        values = {**cls.variant_defaults.get(values.get("variant"), {}), **values}
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        checked = {}
        for key, value in values.items():
            if key not in names:
                known = ", ".join(names) or "none"
                raise ConfigError(f"method {method} has no hyper-parameter '{key}'"
                                  f"{did_you_mean(key, names)}; its hyper-parameters: {known}")
            checked[key] = check_value(key, value, hints[key],
                                       what=f"method {method} hyper-parameter")
        params = cls(**checked)
        params.check(method)
        return params

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MethodConfig:
    name: str = "baseline"
    #: the method's hyper-parameters at their effective values (written flat beside ``name``)
    params: MethodParams = field(default_factory=MethodParams)


@dataclass(frozen=True)
class StudentConfig:
    name: str = "resnet20"
    init: str | None = None  # initial weights (the reference's --s_init); default: seeded init
    pretrained: bool = False  # torchvision/timm models: start from the library's weights
    #: torchvision/timm models: the graph nodes whose outputs are the stages (default: kdzoo's
    #: table for the model's family, or timm's feature_info)
    stage_nodes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TeacherConfig:
    name: str | None = None
    checkpoint: str | None = None
    untrained: bool = False  # allow a randomly initialised teacher (smoke tests, benchmarks)
    pretrained: bool = False  # torchvision/timm models: the library's pretrained weights
    stage_nodes: tuple[str, ...] | None = None  # as StudentConfig.stage_nodes


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    data_dir: str | None = field(default=None, metadata=RUNTIME)
    download: bool = field(default=False, metadata=RUNTIME)
    val_split: float = 0.0  # held-out validation fraction of the training data (0: none)
    train_subset: int | None = None  # a stratified subset of the training images (quick runs)
    #: the crop's padding, in torchvision's names: "reflect" (the reference zoo's) or "constant"
    #: zeros (RepDistiller's, mdistiller's and most authors' RandomCrop(32, padding=4))
    padding_mode: Literal["reflect", "constant"] = "reflect"
    #: per-channel normalisation constants (None: the dataset's own); the presets set each
    #: convention's own for CIFAR (their fourth decimals differ)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    #: the dataset's own options (written flat beside ``name``)
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not 0 <= self.val_split < 1:
            raise ConfigError(f"--val-split must be a fraction in [0, 1), got {self.val_split}")
        _positive("data.", train_subset=self.train_subset)
        if (self.mean is None) != (self.std is None) or \
                (self.mean is not None and self.std is not None and
                 len(self.mean) != len(self.std)):
            raise ConfigError("data.mean and data.std go together, one value per channel each "
                              f"(got {self.mean} and {self.std})")
        if self.std is not None and not all(s > 0 for s in self.std):
            raise ConfigError(f"data.std must be positive, got {list(self.std)}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = True
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: tuple[float, ...] = (0.5, 0.75)  # below 1: fractions of the epochs
    gamma: float = 0.1
    dot_delta: float | None = None  # DOT (ICCV 2023): task/distillation momentum -/+ delta

    def __post_init__(self) -> None:
        _positive("optim.", epochs=self.epochs, batch_size=self.batch_size)
        if not self.lr > 0:
            raise ConfigError(f"optim.lr (the learning rate) must be positive, got {self.lr}")
        _non_negative("optim.", momentum=self.momentum, weight_decay=self.weight_decay)
        if self.schedule == "multistep" and (any(m <= 0 for m in self.milestones) or
                                             list(self.milestones) != sorted(self.milestones)):
            raise ConfigError(f"optim.milestones must be increasing and positive, got "
                              f"{list(self.milestones)}")
        if self.dot_delta is not None:
            if not 0 < self.dot_delta < self.momentum:
                raise ConfigError(f"optim.dot_delta must be in (0, momentum={self.momentum}), "
                                  f"got {self.dot_delta} (mdistiller's DOT uses 0.075)")
            if self.nesterov:
                raise ConfigError("DOT (optim.dot_delta) is plain momentum SGD, without "
                                  "Nesterov: add --set optim.nesterov=false (the repdistiller "
                                  "preset has it)")


@dataclass(frozen=True)
class LossConfig:
    """RepDistiller's composition (``train_student.py``'s ``-r/-a/-b``): loss =
    ``ce`` x cross-entropy + ``kd`` x Hinton's KD at ``kd_temperature`` (the term ``hinton_kd``)
    + the method's own terms (their weight, RepDistiller's beta, is the method's ``weight``).
    The defaults (1, 0) leave every method as it is."""

    ce: float = 1.0              # gamma (-r): multiplies every cross-entropy term
    kd: float = 0.0              # alpha (-a): Hinton's KD on the frozen teacher's logits
    kd_temperature: float = 4.0  # --kd_T

    def __post_init__(self) -> None:
        _non_negative("loss.", ce=self.ce, kd=self.kd)
        _positive("loss.", kd_temperature=self.kd_temperature)


@dataclass(frozen=True)
class TrainConfig:
    """One run, resolved (see the module docstring); build it with
    :func:`kdzoo.resolve_config` or :func:`kdzoo.config_from_dict`."""

    method: MethodConfig = field(default_factory=MethodConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    #: the preset the defaults came from (its values are compared, not its name)
    preset: str | None = field(default="reference", metadata=RUNTIME)
    seed: int = 0
    device: str = field(default="auto", metadata=RUNTIME)  # auto | cpu | cuda | cuda:N
    out: str | None = field(default=None, metadata=RUNTIME)
    threads: int | None = field(default=None, metadata=RUNTIME)  # torch threads (None: torch's)
    #: float64 trains, evaluates and runs the frozen teacher in double precision (CPU): runs
    #: then agree to float64 rounding across process counts and batch shapes, which float32
    #: training does not (it amplifies a 1e-7 rounding difference wherever a ReLU flips)
    precision: Literal["float32", "float64"] = "float32"
    # The fast path (on by default where it is exact up to float rounding):
    channels_last: bool = field(default=True, metadata=RUNTIME)  # NHWC: +20-30% (oneDNN, GPUs)
    fold_teacher_bn: bool = field(default=True, metadata=RUNTIME)  # BatchNorms folded in convs
    #: teacher/eval images per forward (None: 32 on a CPU, the whole batch on a GPU)
    inference_chunk: int | None = field(default=None, metadata=RUNTIME)
    # Opt-in speed-ups (compile is exact up to float rounding; AMP and the float16 teacher cache
    # change the numbers, so they count as settings of the result):
    sync_bn: bool = False           # under torchrun: BatchNorm statistics of the global batch
    compile: bool = field(default=False, metadata=RUNTIME)  # torch.compile student and teacher
    amp: Literal["bf16", "fp16"] | None = None  # autocast (fp16 needs CUDA)
    cudnn_benchmark: bool = field(default=False, metadata=RUNTIME)  # cuDNN autotuning (CUDA)
    teacher_cache: bool = False     # reuse/fill the on-disk float16 logits of every view
    cache_dir: str | None = field(default=None, metadata=RUNTIME)  # $KDZOO_CACHE, ~/.cache/kdzoo
    eval_batch_size: int | None = field(default=None, metadata=RUNTIME)
    log_interval: int = field(default=50, metadata=RUNTIME)  # steps between progress updates
    tensorboard: bool = field(default=False, metadata=RUNTIME)  # TensorBoard event files too
    trust_checkpoint: bool = field(default=False, metadata=RUNTIME)
    deterministic: bool = field(default=False, metadata=RUNTIME)  # CPU runs always are
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss or gradient: stop, or skip it
    #: evaluate on the test split after every epoch; False never reads it (the teacher is
    #: checked on the validation split): `kdzoo tune`'s trials, which must not see the test set
    evaluate_test: bool = field(default=True, metadata=RUNTIME)
    #: the study a run's settings were tuned by (``kdzoo tune``: study, storage, trial, its
    #: validation top-1, the space searched); recorded in config.yaml and summary.json
    tuned: dict[str, Any] | None = field(default=None, metadata=RUNTIME)
    #: apply the authors' published settings for method and pair (their values are compared)
    use_recipes: bool = field(default=True, metadata=RUNTIME)
    recipes: tuple[str, ...] = field(default=(), metadata=RUNTIME)  # the recipes applied

    def __post_init__(self) -> None:
        _positive("", inference_chunk=self.inference_chunk,
                  eval_batch_size=self.eval_batch_size, log_interval=self.log_interval,
                  threads=self.threads)
        if not self.evaluate_test and self.data.val_split == 0:
            raise ConfigError("evaluate_test=false needs a validation split to evaluate on: "
                              "pass --val-split FRACTION")
        if self.optim.dot_delta is not None and self.amp == "fp16":
            raise ConfigError("DOT (optim.dot_delta) does not support --amp fp16 (loss "
                              "scaling), as mdistiller's: use --amp bf16 or no --amp")
        if self.precision == "float64":
            for flag, given in (("--amp", self.amp is not None), ("--compile", self.compile),
                                ("--teacher-cache", self.teacher_cache)):
                if given:
                    raise ConfigError(f"--precision float64 cannot be combined with {flag}: "
                                      "drop one of them")
            if self.device.startswith("cuda"):
                raise ConfigError("--precision float64 runs on the CPU only: use --device cpu")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what config.yaml holds), with the method's hyper-parameters and
        the dataset's options flat beside their ``name``."""
        return _plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def result_settings(self) -> dict[str, Any]:
        """``{"optim.lr": 0.1, ...}``: every setting that can change the result."""
        return {k: v for k, v in flatten(self.to_dict()).items() if changes_result(k)}


def _plain(value: Any) -> Any:
    if isinstance(value, MethodConfig):
        return {"name": value.name, **_plain(value.params.to_dict())}
    if isinstance(value, DataConfig):
        found = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                 if f.name != "options"}
        return {**found, **_plain(dict(value.options))}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


#: The sections whose other keys are not fields: the method's hyper-parameters and the dataset's
#: options.
OPEN_SECTIONS = {"method": MethodConfig, "data": DataConfig}


@functools.lru_cache(maxsize=None)
def changes_result(key: str) -> bool:
    """Whether the setting ``key`` (dotted, as in config.yaml: ``optim.lr``, ``data.data_dir``,
    ``method.weight``) can change a run's result. Unknown keys are taken to (the safe side)."""
    section, _, rest = key.partition(".")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if section not in fields:
        return True
    found = fields[section]
    if not rest or not found.metadata.get("changes_result", True):  # a runtime section's keys
        return found.metadata.get("changes_result", True)
    cls = typing.get_type_hints(TrainConfig)[section]
    inner = {f.name: f for f in dataclasses.fields(cls)}
    if rest in inner:
        return inner[rest].metadata.get("changes_result", True)
    if section == "data":
        return rest not in RUNTIME_DATA_OPTIONS
    return True


# ----------------------------------------------------------------------- typed values
def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def check_value(key: str, value: Any, tp: Any, what: str = "config key") -> Any:
    """``value`` converted to type ``tp`` (an int is a fine float, a YAML string "1e-4" too, a
    list a fine tuple), or a one-line :class:`ConfigError` naming ``what`` and ``key``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
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
    if origin in (list, tuple):
        inner = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{what} '{key}' must be a list, got {value!r}")
        checked = [check_value(f"{key}[{i}]", v, inner, what) for i, v in enumerate(value)]
        return tuple(checked) if origin is tuple else checked
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
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


ParamsBuilder = typing.Callable[[str, Mapping[str, Any]], MethodParams]


def build_section(cls: type, data: Mapping[str, Any], prefix: str,
                  params: ParamsBuilder) -> Any:
    """The frozen section ``cls`` from a nested dict: unknown keys and wrong types are refused
    in one line; the method section's other keys become its typed hyper-parameters (through
    ``params(method name, values)``), the data section's its options."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    open_section = OPEN_SECTIONS.get(prefix.rstrip("."))
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if open_section is not None and (key not in names or key in ("params", "options")):
            extra[key] = value
            continue
        if key not in names:
            candidates = [f"{prefix}{n}" for n in names]
            raise ConfigError(f"unknown config key '{full}'{did_you_mean(full, candidates)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{full}' must be a mapping, got {value!r}")
            kwargs[key] = build_section(hint, value, f"{full}.", params)
        else:
            kwargs[key] = check_value(full, value, hint)
    if open_section is MethodConfig:
        kwargs["params"] = params(kwargs.get("name", MethodConfig.name), extra)
    elif open_section is DataConfig:
        kwargs["options"] = extra
    return cls(**kwargs)
