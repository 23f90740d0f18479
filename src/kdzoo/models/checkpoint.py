"""Reading and writing model weights, including the formats of the other zoos.

Accepted files (``torch.load(weights_only=True)``, so loading never runs pickled code):

* kdzoo's own exports (:func:`export_model`) and a plain ``torch.save(model.state_dict(), PATH)``;
* the reference Knowledge-Distillation-Zoo: a dict holding the state dict under ``'net'``,
  ``'snet'``, ``'tnet'``, ``'net1'`` or ``'net2'`` (or a bare state dict), keys ``conv1``, ``bn1``,
  ``resK.N.{conv1,bn1,conv2,bn2}``, ``resK.0.ds.{0,1}``, ``fc``, usually prefixed ``module.``
  because that zoo always wraps its nets in ``DataParallel``;
* RepDistiller / mdistiller: ``{'model': state_dict}`` with keys ``layerK.N...`` and
  ``layerK.0.downsample.{0,1}`` (kdzoo's own naming);
* for the ``torchvision/`` and ``timm/`` adapters, a plain state dict of the library's own model
  (keys such as ``conv1.weight``): the adapter's keys are those under its
  ``checkpoint_prefix`` (``model.``), which is added where the file lacks it.

When a file holds several state dicts (a reference KD checkpoint has both 'snet' and 'tnet'), the
first one that fits the model is used, in the order of ``STATE_DICT_KEYS``; ``key=`` picks one.
"""
from __future__ import annotations

import argparse
import contextlib
import pickle
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError
from ..io import atomic_torch_save
from .features import FeatureNet

STATE_DICT_KEYS = ("state_dict", "model", "net", "snet", "net1", "tnet", "net2")
KDZOO_FORMAT = "kdzoo-model/1"
_SHOWN = 4  # how many offending keys an error message names


@contextlib.contextmanager
def community_safe_globals() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` accept what RepDistiller/mdistiller checkpoints hold
    beside the weights: ``argparse.Namespace`` (the options), numpy scalars and dtypes (e.g. the
    best accuracy). Plain data: none of them runs code when unpickled."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5: such files need --trust-checkpoint
        yield
        return
    scalar = np.float64(0).__reduce__()[0]  # numpy(._core).multiarray.scalar
    allowed: list[Any] = [argparse.Namespace, scalar, np.dtype]
    if scalar.__module__ != "numpy.core.multiarray":  # numpy 2 reading numpy 1 pickles
        allowed.append((scalar, "numpy.core.multiarray.scalar"))
    allowed += list({type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64",
                                                 "int32", "int16", "int8", "uint8", "bool")})
    with safe_globals(allowed):
        yield


def read_checkpoint_file(path: str | Path, trust: bool = False) -> Any:
    """``torch.load`` a file safely (tensors, plain data and :func:`community_safe_globals`);
    every failure becomes a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path")
    try:
        with community_safe_globals():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:  # not a refused Python object: the bytes themselves are bad
            raise _corrupt(path, exc) from None
        if not trust:
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects besides tensors (e.g. "
                f"{found.group(1)}) and loading it could run arbitrary code; if you trust the "
                "file, pass --trust-checkpoint (trust_checkpoint=True in Python)"
            ) from None
    except Exception as exc:  # noqa: BLE001 - the unpickler fails on foreign bytes (a text file,
        # a truncated download) with IndexError, TypeError, struct.error, ...: all "not readable"
        raise _corrupt(path, exc) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure of a trusted legacy file is "corrupt"
        raise _corrupt(path, exc) from None


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CheckpointError(
        f"cannot read checkpoint {path}: the file is corrupt or truncated ({reason[:120]}); "
        "use an intact copy"
    )


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def normalise_key(key: str) -> str:
    """Map the other zoos' parameter names onto kdzoo's (RepDistiller's) names."""
    while key.startswith("module."):
        key = key[len("module.") :]
    key = re.sub(r"^res(\d+)\.", r"layer\1.", key)
    return key.replace(".ds.", ".downsample.")


def normalise_state_dict(state: Mapping[str, Tensor], model: FeatureNet) -> dict[str, Tensor]:
    """``state`` with its keys in ``model``'s naming: ``module.`` stripped; then, for a model
    with a ``checkpoint_prefix`` (the torchvision/timm adapters, whose keys are the wrapped
    library model's under that prefix), the prefix added unless every key has it already
    (a kdzoo export); for kdzoo's own models, the other zoos' names mapped
    (:func:`normalise_key`)."""
    prefix = getattr(model, "checkpoint_prefix", "")
    if not prefix:
        return {normalise_key(k): v for k, v in state.items()}
    stripped = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        stripped[key] = value
    if all(k.startswith(prefix) for k in stripped):
        return stripped
    return {prefix + k: v for k, v in stripped.items()}


def _describe(model: FeatureNet) -> str:
    channels = "channel" if model.in_chans == 1 else "channels"
    return (f"{model.model_name or type(model).__name__} ({model.num_classes} classes, "
            f"{model.in_chans} input {channels})")


def _mismatches(model: FeatureNet, state: Mapping[str, Tensor]) -> list[str]:
    """Problems that stop ``state`` from loading into ``model`` ([] when it fits)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(v.shape)} in file vs {tuple(expected[k].shape)} in model"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            problems.append(f"{label}: {', '.join(items[:_SHOWN])}{more}")
    return problems


def extract_state_dict(obj: Any, model: FeatureNet, path: str | Path = "",
                       key: str | None = None) -> dict[str, Tensor]:
    """The state dict in a loaded checkpoint object that fits ``model``, with normalised keys."""
    if isinstance(obj, Mapping) and obj.get("deployed") == "simkd":
        raise CheckpointError(f"checkpoint {path} is a deployed SimKD student (the student with "
                              "its projector and the teacher's classifier): load it with "
                              "kdzoo.methods.simkd.load_simkd_student")
    if isinstance(obj, Mapping) and obj.get("kdzoo_format") == KDZOO_FORMAT:
        saved = (obj.get("model_name"), obj.get("num_classes"), obj.get("in_chans"))
        wanted = (model.model_name, model.num_classes, model.in_chans)
        if model.model_name and saved != wanted:
            raise CheckpointError(
                f"checkpoint {path} holds a {saved[0]} with {saved[1]} classes and {saved[2]} "
                f"input channels, not a {wanted[0]} with {wanted[1]} classes and {wanted[2]}: "
                "pick the matching model or checkpoint"
            )
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj or not _is_state_dict(obj[key]):
            raise CheckpointError(f"checkpoint {path} has no state dict under key '{key}'")
        candidates = [(key, obj[key])]
    elif _is_state_dict(obj):
        candidates = [("", obj)]
    elif isinstance(obj, Mapping):
        candidates = [(k, obj[k]) for k in STATE_DICT_KEYS if k in obj and _is_state_dict(obj[k])]
    else:
        candidates = []
    if not candidates:
        raise CheckpointError(
            f"checkpoint {path} holds no state dict (looked for a bare state dict and the keys "
            f"{', '.join(STATE_DICT_KEYS)}): is it a model checkpoint?"
        )
    failures = []
    for name, state in candidates:
        normalised = normalise_state_dict(state, model)
        problems = _mismatches(model, normalised)
        if not problems:
            return normalised
        failures.append((len(problems), name, problems))
    _, name, problems = min(failures, key=lambda f: f[0])
    where = f" (state dict '{name}')" if name else ""
    raise CheckpointError(
        f"checkpoint {path}{where} does not fit {_describe(model)}: {'; '.join(problems)}; "
        "is it for another architecture or number of classes?"
    )


def load_weights(model: FeatureNet, path: str | Path, key: str | None = None,
                 trust: bool = False) -> FeatureNet:
    """Load the weights in ``path`` into ``model`` (in place) and return it."""
    state = extract_state_dict(read_checkpoint_file(path, trust=trust), model, path, key)
    model.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent
    return model


def export_model(model: FeatureNet, path: str | Path, **metadata: Any) -> None:
    """Write ``model``'s weights in kdzoo's format, loadable by ``create_model(checkpoint=)``."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_torch_save(
        {
            "kdzoo_format": KDZOO_FORMAT,
            "model_name": model.model_name,
            "num_classes": model.num_classes,
            "in_chans": model.in_chans,
            "state_dict": state,
            **getattr(model, "export_metadata", {}),  # e.g. a deployed SimKD student
            **metadata,
        },
        path,
    )
