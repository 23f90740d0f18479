"""``kdzoo list ...``: human-readable tables of what kdzoo has."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import KdzooError


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns under a header and a rule of dashes."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def describe_models() -> str:
    from ..models import create_model, list_models
    from ..models.features import count_parameters
    from ..models.registry import MODEL_FAMILIES

    rows = []
    for name in list_models():
        model = create_model(name, num_classes=10)
        stages = model.feature_info.stages
        widths = "/".join(str(s.channels) for s in stages)
        strides = "/".join(str(s.reduction) for s in stages)
        rows.append([name, MODEL_FAMILIES.get(name, ""), f"{count_parameters(model):,}",
                     f"{count_parameters(create_model(name, num_classes=100)):,}",
                     f"{widths} (stride {strides})", _yes(all(s.preact for s in stages)),
                     _yes(all(s.bn_before_relu for s in stages))])
    return text_table(["model", "family", "params (10 cl.)", "params (100 cl.)", "stages",
                   "pre-act", "BN before ReLU"], rows)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def describe_methods() -> str:
    from ..methods import METHODS, method_defaults

    rows = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        defaults = ", ".join(f"{k}={v}" for k, v in method_defaults(name).items()) or "-"
        rows.append([name, cls.paper, defaults, cls.url])
    return text_table(["method", "paper", "defaults", "link"], rows)


def describe_search_spaces() -> str:
    """Every method's default search space (``configs/search-spaces.yaml``): one row per
    searched hyper-parameter, with its distribution and the method's default value."""
    from ..methods import METHODS, method_defaults
    from ..tune.space import method_spaces

    spaces = method_spaces()
    rows = []
    for name in METHODS.names():
        defaults = method_defaults(name)
        entries = spaces.get(name) or {}
        if not entries:
            rows.append([name, "-", "(nothing searched by default)", "-"])
        for key, text in entries.items():
            rows.append([name, key, str(text), str(defaults.get(key, "-"))])
    override = ("override with `kdzoo tune --space KEY=DISTRIBUTION` (e.g. --space "
                "method.weight=loguniform:0.01:100) or `--space-file FILE.yaml`;\n"
                "optimiser settings such as optim.lr and optim.weight_decay can be searched "
                "the same way")
    return f"{text_table(['method', 'hyper-parameter', 'distribution', 'default'], rows)}" \
           f"\n\n{override}"


def describe_datasets() -> str:
    from ..data.base import DATASETS

    rows = [[n, DATASETS.get(n).description, DATASETS.get(n).how_to_get] for n in DATASETS.names()]
    return text_table(["dataset", "what", "how to get it"], rows)


def describe_presets() -> str:
    """Every setting of every preset: one row per setting, one column per preset."""
    from ..layers import flatten, list_presets, load_preset

    presets = {name: load_preset(name) for name in list_presets()}
    columns: dict[str, dict[str, str]] = {}
    for name, preset in presets.items():
        found = {k: _shown(v) for k, v in flatten(preset["settings"]).items()}
        for data, extra in preset["datasets"].items():
            found.update({f"{k} ({data})": _shown(v) for k, v in flatten(extra).items()})
        columns[name] = found
    keys = sorted({k for found in columns.values() for k in found})
    rows = [[key, *(columns[name].get(key, "-") for name in presets)] for key in keys]
    sources = "\n".join(f"{name}: {preset['source']}" for name, preset in presets.items())
    return f"{text_table(['setting', *presets], rows)}\n\nsources:\n{sources}"


def _shown(value: object) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def describe_grids() -> str:
    from ..zoo.grid import load_grid_spec, packaged_grids

    rows = [[name, str(load_grid_spec(name).get("description", ""))] for name in packaged_grids()]
    return text_table(["grid", "what (kdzoo zoo --grid NAME --out DIR)"], rows)


def describe(what: str) -> str:
    return {"models": describe_models, "methods": describe_methods,
            "datasets": describe_datasets, "presets": describe_presets,
            "grids": describe_grids}[what]()


def add_list_parser(sub: Any) -> None:
    p = sub.add_parser("list", help="list models, methods, datasets or presets")
    p.add_argument("what", choices=["models", "methods", "datasets", "presets", "grids"])
    p.add_argument("--differences", action="store_true",
                   help="with methods: where kdzoo deliberately differs from the authors' code, "
                        "and why (the text of docs/differences.md)")
    p.add_argument("--search-space", action="store_true",
                   help="with methods: each method's default search space for `kdzoo tune` "
                        "(hyper-parameter, distribution, default)")


def cmd_list(args: argparse.Namespace) -> int:
    if args.search_space:
        if args.what != "methods" or args.differences:
            raise KdzooError("--search-space goes with `kdzoo list methods` (without "
                             "--differences)")
        print(describe_search_spaces())
        return 0
    if args.differences:
        if args.what != "methods":
            raise KdzooError("--differences goes with `kdzoo list methods`")
        from ..differences import render_markdown

        print(render_markdown())
        return 0
    print(describe(args.what))
    return 0
