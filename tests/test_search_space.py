"""Each method's default search space (``configs/search-spaces.yaml``), the distribution syntax
and key checks of :mod:`kdzoo.tune.space`, and ``kdzoo list methods --search-space``."""
from __future__ import annotations

import dataclasses
import typing
from functools import lru_cache

import pytest

from kdzoo.cli import main
from kdzoo.errors import ConfigError
from kdzoo.methods import METHODS
from kdzoo.spec import resolve_config
from kdzoo.tune.space import (
    KINDS,
    Distribution,
    build_space,
    check_keys,
    default_space,
    method_spaces,
    parse_distribution,
)

#: (method, hyper-parameter) pairs of the kinds test_loss_weights_... requires that the default
#: space leaves out on purpose (the YAML's header says why)
NOT_SEARCHED = {
    # a cross-entropy weight the authors fix: 1 in every config of theirs
    *((m, "ce_weight") for m in ("catkd", "dist", "dkd", "ickd", "kdsvd", "nkd", "reviewkd",
                                 "rld", "sdd", "srd", "ttm", "wkd", "wsld", "wttm")),
    ("simkd", "ce_weight"),   # SimKD drops the cross-entropy (-c 0); 0 has no log scale
    # a global weight that only rescales weights already searched
    ("irg", "weight"),        # multiplies w_vert, w_edge, w_tran
    ("rkd", "weight"),        # multiplies w_dist, w_angle
    ("sdd", "weight"),        # multiplies alpha, beta under the default DKD base
    # unused by the default variant ("logit"); WKD-F's weight
    ("wkd", "feature_weight"),
}

TUNED_NAMES = {"weight", "ce_weight", "temperature", "alpha", "beta", "gamma", "exponent"}


def params_of(method: str) -> dict[str, typing.Any]:
    """The hyper-parameters of ``method``: name -> annotated type."""
    cls = METHODS.get(method).Params
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def is_float(tp: typing.Any) -> bool:
    return tp is float or float in typing.get_args(tp)  # float | None too (SDD's weights)


def config(method: str, **params: typing.Any):
    return resolve_config(overrides={
        "method": {"name": method, **params},
        "teacher": {"name": "resnet20", "untrained": True},
        "student": {"name": "resnet8"},
        "data": {"name": "synthetic", "val_split": 0.2},
    })


@lru_cache(maxsize=None)
def spaces() -> dict[str, dict[str, str]]:
    return method_spaces()


# ----------------------------------------------------------------- the packaged spaces
def test_every_method_has_an_entry_whose_keys_are_its_hyper_parameters():
    assert set(spaces()) == set(METHODS.names())
    assert spaces()["baseline"] == {}
    for method, entries in spaces().items():
        params = params_of(method)
        for key in entries or {}:
            assert key in params, f"{method}: {key} is not a hyper-parameter"


def test_loss_weights_temperatures_and_tuned_knobs_are_searched():
    missing = []
    for method in METHODS.names():
        entries = spaces()[method] or {}
        for name, tp in params_of(method).items():
            tuned = name in TUNED_NAMES or name.endswith("_weight")
            if tuned and is_float(tp) and name not in entries \
                    and (method, name) not in NOT_SEARCHED:
                missing.append(f"{method}.{name}")
    assert not missing
    # the exclusions name real hyper-parameters that the space indeed leaves out
    for method, name in NOT_SEARCHED:
        assert name in params_of(method) and name not in spaces()[method]
    # the knobs the papers tune
    for method, name in [("dkd", "beta"), ("ttm", "exponent"), ("wttm", "exponent"),
                         ("dist", "beta"), ("dist", "gamma"), ("nkd", "gamma"), ("cc", "gamma"),
                         ("rkd", "w_dist"), ("rkd", "w_angle"), ("at", "p"), ("ft", "k")]:
        assert name in spaces()[method]


def test_no_structural_switch_is_searched():
    structural = {"variant", "standardize", "ctkd", "protocol", "mode", "feat_dim", "nce_k",
                  "base", "scales", "cost", "cost_path", "warmup", "warmup_epochs",
                  "init_epochs", "paraphraser_epochs"}
    for method, entries in spaces().items():
        assert not structural & set(entries or {}), method


def test_every_space_builds_and_both_bounds_are_valid_runs():
    checked = 0
    for method in METHODS.names():
        base = config(method)
        if method == "baseline":
            with pytest.raises(ConfigError, match="nothing to search"):
                build_space(base)
            assert list(build_space(base, assignments=["optim.lr=loguniform:0.01:0.2"])) \
                == ["optim.lr"]
            continue
        space = build_space(base)
        assert space == default_space(method) and space
        for key, dist in space.items():
            assert key.startswith("method.")
            name = key.removeprefix("method.")
            for value in dist.bounds():
                resolved = config(method, **{name: value})
                assert getattr(resolved.method.params, name) == value
                checked += 1
    assert checked > 2 * len(METHODS.names())


def test_ranges_contain_the_defaults():
    """Centred on each method's default: the default lies within the searched range."""
    from kdzoo.methods import method_defaults

    for method in METHODS.names():
        defaults = method_defaults(method)
        for key, dist in default_space(method).items():
            value = defaults[key.removeprefix("method.")]
            if dist.kind == "categorical":
                assert value in dist.choices, (method, key)
            else:
                assert dist.low <= value <= dist.high, (method, key, value)


# ----------------------------------------------------------------- distribution syntax
@pytest.mark.parametrize("text, expected", [
    ("uniform:1:8", Distribution("uniform", 1.0, 8.0)),
    ("loguniform:0.01:100", Distribution("loguniform", 0.01, 100.0)),
    ("int:1:4", Distribution("int", 1, 4)),
    ("logint:1:64", Distribution("logint", 1, 64)),
    ("categorical:2,4,8", Distribution("categorical", choices=(2, 4, 8))),
    ("categorical:1e-3,0.5,true,exact", Distribution("categorical",
                                                     choices=(0.001, 0.5, True, "exact"))),
])
def test_every_kind_parses(text, expected):
    dist = parse_distribution("method.x", text)
    assert dist == expected and dist.kind in KINDS
    assert parse_distribution("method.x", dist.text()) == dist
    assert dist.log == (dist.kind in ("loguniform", "logint"))


@pytest.mark.parametrize("text, message", [
    ("gaussian:0:1", "unknown distribution 'gaussian'"),
    ("uniform:2:2", "empty or inverted"),
    ("uniform:8:1", "empty or inverted"),
    ("loguniform:0:1", "log-scale range must start above zero"),
    ("loguniform:-1:1", "log-scale range must start above zero"),
    ("logint:0:8", "log-scale range"),
    ("uniform:a:b", "must be numbers"),
    ("int:1.5:4", "must be integers"),
    ("categorical:", "categorical needs at least one value"),
    ("categorical: , ", "categorical needs at least one value"),
    ("uniform:1", "needs LOW:HIGH"),
    ("uniform:1:", "must be numbers"),
    ("uniform:1:2:3", "needs LOW:HIGH"),
    ("0.5", "is not a distribution"),
    (0.5, "is not a distribution"),
])
def test_bad_distributions_are_refused_in_one_line(text, message):
    with pytest.raises(ConfigError) as info:
        parse_distribution("method.weight", text)
    text_of = str(info.value)
    assert message in text_of and "\n" not in text_of and "method.weight" in text_of


# ----------------------------------------------------------------- key checks
def test_check_keys_refusals():
    dkd = config("dkd")
    dist = parse_distribution("k", "uniform:0.1:1")
    check_keys({"method.beta": dist, "optim.lr": dist, "optim.weight_decay": dist}, dkd)

    with pytest.raises(ConfigError) as info:
        check_keys({"method.betta": dist}, dkd)
    text = str(info.value)
    assert "method dkd has no hyper-parameter 'betta'" in text and "beta" in text
    assert "its hyper-parameters: alpha, beta, ce_weight, ctkd, standardize, temperature, " \
        "warmup" in text and "\n" not in text
    with pytest.raises(ConfigError, match="has no hyper-parameter 'name'"):
        check_keys({"method.name": dist}, dkd)
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown config key"):
        check_keys({"optim.lrr": dist}, dkd)
    for key in ("data.data_dir", "seed", "data.val_split"):
        with pytest.raises(ConfigError, match="not a setting to tune"):
            check_keys({key: dist}, dkd)


# ----------------------------------------------------------------- the CLI
def test_list_methods_search_space(capsys):
    assert main(["list", "methods", "--search-space"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()]
    assert ["dkd", "beta", "loguniform:0.5:16", "8.0"] in rows
    assert ["baseline", "-", "(nothing", "searched", "by", "default)", "-"] in rows
    assert "kdzoo tune --space KEY=DISTRIBUTION" in out and "--space-file" in out
    assert "optim.lr" in out
    counted = sum(len(entries or {}) for entries in spaces().values())
    assert sum(1 for row in rows if row and row[0] in spaces() and row[1] != "-") == counted

    assert main(["list", "models", "--search-space"]) == 2
    err = capsys.readouterr().err
    assert "--search-space goes with `kdzoo list methods`" in err
    assert len(err.strip().splitlines()) == 1
