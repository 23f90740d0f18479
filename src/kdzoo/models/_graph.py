"""A library model as a kdzoo network through its torch.fx graph: the machinery shared by the
torchvision adapter (:mod:`._torchvision`) and timm's fallback (:mod:`._timm`).

The model is traced with torchvision's feature-extraction tracer, so node names are the ones
``torchvision.models.feature_extraction.create_feature_extractor`` accepts (see
https://pytorch.org/vision/stable/feature_extraction.html and ``get_graph_node_names``), and
the shape of every node comes from ``torch.fx.passes.shape_prop.ShapeProp`` on one probe image,
run on the meta device (a copy of the model whose weights are meta tensors: no arithmetic, no
memory) and, where an op has no meta kernel, for real. From the graph and its shapes:

* the **logits** are the graph's output and the **final layer** the nearest Linear (or 1x1
  Conv2d: SqueezeNet) before it;
* the **pool** is the input of the final layer, before any dropout: the feature the last
  Linear reads, as timm's ``forward_head(pre_logits=True)`` (1024 for MobileNetV3, the
  penultimate 4096 for VGG); where that input is a map (SqueezeNet) its spatial mean;
* the **stages** are *named*, never guessed: the caller gives their return nodes (the
  torchvision table, timm's ``feature_info`` modules or the user's ``stage_nodes``). A name is
  a node or a module prefix, as ``create_feature_extractor`` reads it: ``layer1`` is the last
  node inside ``layer1`` (``layer1.1.relu_1``). Each must give a 4-D map; its channels and
  reduction (probe size / map size, rounded to a power of two) come from its shape, and a map
  whose first two sizes are equal and its last differs is channels-last (Swin's NHWC blocks)
  and is permuted to NCHW. ``stem`` is None, ``preact`` False, ``bn_before_relu`` None.
  Reductions are nominal: for unpadded networks (Inception v3, AlexNet, SqueezeNet) the real
  map sizes are a little smaller than ``ceil(size / reduction)``.

One ``create_feature_extractor`` GraphModule (train and eval graphs) returns all of them in one
pass, so ``forward_features`` is one call, traceable by torch.fx (BatchNorm folding), and
``deepcopy``, ``train()``/``eval()`` and channels_last work as for any module.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..errors import ConfigError
from ..registry import did_you_mean
from .features import FeatureInfo, FeatureNet, RawFeatures, StageInfo

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_DROPOUT_FUNCTIONS = (F.dropout, torch.dropout, F.dropout1d, F.dropout2d)

Shapes = dict[fx.Node, tuple[int, ...] | None]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Tracing and shapes


def _tracer_kwargs() -> dict[str, Any]:
    """The tracer arguments of torchvision's feature extraction (so node names match)."""
    from torchvision.models import feature_extraction

    defaults = getattr(feature_extraction, "_set_default_tracer_kwargs", None)
    if defaults is not None:
        return defaults(None)
    import torchvision.ops  # pragma: no cover - older/newer torchvision without the helper

    return {"autowrap_modules": (math, torchvision.ops),  # pragma: no cover
            "leaf_modules": feature_extraction._get_leaf_modules_for_ops()}


def trace(model: nn.Module, label: str) -> tuple[fx.Graph, dict[fx.Node, str]]:
    """The eval-mode graph of ``model`` and each node's torchvision node name."""
    from torchvision.models.feature_extraction import NodePathTracer

    training = model.training
    model.eval()
    try:
        tracer = NodePathTracer(**_tracer_kwargs())
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure: the model is not traceable
        raise ConfigError(f"{label} cannot be traced with torch.fx ({_reason(exc)}), so kdzoo "
                          "cannot adapt it") from None
    finally:
        model.train(training)
    return graph, dict(tracer.node_to_qualname)


def _meta_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` whose parameters and buffers are meta tensors (deepcopy
    with every weight pre-placed in the memo, so no weight is copied)."""
    memo: dict[int, Any] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        empty = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(empty, tensor.requires_grad) \
            if isinstance(tensor, nn.Parameter) else empty
    return copy.deepcopy(model, memo).eval()


def _propagate(root: nn.Module, graph: fx.Graph, probe: Tensor) -> None:
    for node in graph.nodes:
        node.meta.pop("tensor_meta", None)
    with torch.no_grad(), warnings.catch_warnings(), \
            contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints its failures
        warnings.simplefilter("ignore")
        ShapeProp(fx.GraphModule(root, graph)).propagate(probe)


def propagate_shapes(model: nn.Module, graph: fx.Graph, in_chans: int, size: int,
                     label: str) -> Shapes:
    """Every node's output shape (None where it is not one tensor) for a (1, in_chans, size,
    size) probe, by ``ShapeProp`` on the meta device, else on the real (eval-mode) model."""
    try:
        _propagate(_meta_copy(model), graph, torch.empty(1, in_chans, size, size,
                                                         device="meta"))
    except Exception:  # noqa: BLE001 - an op without a meta kernel, or mixed devices
        training = model.training
        model.eval()
        try:
            _propagate(model, graph, torch.zeros(1, in_chans, size, size))
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{label} does not run on a {size}x{size} probe image "
                              f"({_reason(exc)}), so kdzoo cannot adapt it") from None
        finally:
            model.train(training)
    return {node: tuple(meta.shape) if isinstance(meta := node.meta.get("tensor_meta"),
                                                  TensorMetadata) else None
            for node in graph.nodes}


# --------------------------------------------------------------------------------------------
# The plan: which nodes to return


@dataclass
class Plan:
    """The nodes a GraphFeatureNet returns: the stages (concrete node names, their layout
    and metadata), the pool (and whether it is a map to average) and the logits, plus the
    final layer's module name."""

    stage_nodes: list[str] = field(default_factory=list)
    stage_layouts: list[str] = field(default_factory=list)
    stages: list[StageInfo] = field(default_factory=list)
    pool_node: str = ""
    pool_is_map: bool = False
    pool: int = 0
    logits_node: str = ""
    logits: int = 0
    final_layer: str = ""


def _final_layer_name(node: fx.Node, root: nn.Module) -> str | None:
    """The module name when ``node`` applies a Linear or a Conv2d (a module call, or
    ``F.linear`` on a module's weight, as in timm's Linear), else None."""
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        return str(node.target) if isinstance(module, (nn.Linear, nn.Conv2d)) else None
    if node.op == "call_function" and node.target in (F.linear, torch._C._nn.linear) and \
            len(node.args) > 1 and isinstance(node.args[1], fx.Node) and \
            node.args[1].op == "get_attr":
        return str(node.args[1].target).rpartition(".")[0]
    return None


def _is_dropout(node: fx.Node, root: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(root.get_submodule(node.target), _DROPOUTS)
    return node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS


def _head(plan: Plan, graph: fx.Graph, names: dict[fx.Node, str], shapes: Shapes,
          root: nn.Module, label: str) -> None:
    """The logits (the graph's output), the final layer (the nearest Linear or Conv2d before
    them) and the pool (its input, before any dropout)."""
    output = next(n for n in graph.nodes if n.op == "output")
    logits = output.args[0]
    if not isinstance(logits, fx.Node) or shapes.get(logits) is None or \
            len(shapes[logits]) != 2:
        raise ConfigError(f"{label} does not return one (batch, classes) logits tensor in eval "
                          "mode, so kdzoo cannot adapt it")
    plan.logits_node, plan.logits = names[logits], shapes[logits][1]
    final, todo, seen = None, [logits], {logits}
    while todo:
        node = todo.pop(0)
        if _final_layer_name(node, root) is not None:
            final = node
            break
        for arg in node.all_input_nodes:
            if arg not in seen:
                seen.add(arg)
                todo.append(arg)
    if final is None or not final.all_input_nodes:
        raise ConfigError(f"{label} has no Linear or Conv2d classifier before its logits, so "
                          "kdzoo cannot find its pooled feature")
    plan.final_layer = _final_layer_name(final, root) or ""
    pool = final.all_input_nodes[0]
    while _is_dropout(pool, root) and pool.all_input_nodes:
        pool = pool.all_input_nodes[0]
    pool_shape = shapes.get(pool)
    if pool_shape is None or len(pool_shape) not in (2, 4):
        raise ConfigError(f"{label}'s classifier reads a {pool_shape} tensor, not a pooled "
                          "feature or a map, so kdzoo cannot adapt it")
    plan.pool_node, plan.pool_is_map, plan.pool = names[pool], len(pool_shape) == 4, pool_shape[1]


def node_choices(names: dict[fx.Node, str]) -> list[str]:
    """Every name ``create_feature_extractor`` accepts: the nodes and their module prefixes."""
    choices: dict[str, None] = {}
    for name in names.values():
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            choices.setdefault(".".join(parts[:depth]))
    return list(choices)


def resolve_node(query: str, names: dict[fx.Node, str], label: str) -> fx.Node:
    """The node ``create_feature_extractor`` returns for ``query``: the last node named
    ``query`` or inside the module ``query``; a one-line ConfigError for an unknown name."""
    found = [node for node, name in names.items()
             if name == query or name.startswith(query + ".")]
    if found:
        return found[-1]
    choices = node_choices(names)
    tops = list(dict.fromkeys(n.split(".")[0] for n in names.values()))
    some = ", ".join(f"'{n}'" for n in tops[:8]) + (", ..." if len(tops) > 8 else "")
    raise ConfigError(f"{label} has no node '{query}'{did_you_mean(query, choices)}; its nodes "
                      f"include {some} (torchvision.models.feature_extraction."
                      "get_graph_node_names lists them all)")


def _power_of_two(ratio: float) -> int:
    return 2 ** max(0, round(math.log2(ratio)))


def _stage(query: str, shape: tuple[int, ...] | None, size: int,
           label: str) -> tuple[str, StageInfo]:
    """The layout and metadata of a stage node of ``shape`` at a square probe of ``size``: a
    map whose last two sizes are equal is NCHW, else one whose middle two are is NHWC."""
    if shape is None or len(shape) != 4:
        what = "no tensor" if shape is None else f"a {tuple(shape)} tensor"
        raise ConfigError(f"{label}'s stage node '{query}' gives {what}, not a (batch, "
                          "channels, height, width) feature map")
    if shape[2] == shape[3] or shape[1] != shape[2]:
        layout, channels, side = "NCHW", shape[1], shape[2]
    else:
        layout, channels, side = "NHWC", shape[3], shape[1]
    return layout, StageInfo(channels, _power_of_two(size / max(side, 1)))


def make_plan(model: nn.Module, graph: fx.Graph, names: dict[fx.Node, str],
              stage_nodes: Sequence[str], in_chans: int, size: int, label: str) -> Plan:
    """The plan of ``model`` (traced as ``graph``) with the named ``stage_nodes``, its shapes
    from one probe of ``size`` (see the module doc)."""
    shapes = propagate_shapes(model, graph, in_chans, size, label)
    plan = Plan()
    _head(plan, graph, names, shapes, model, label)
    for query in stage_nodes:
        node = resolve_node(query, names, label)
        layout, stage = _stage(query, shapes.get(node), size, label)
        plan.stage_nodes.append(names[node])
        plan.stage_layouts.append(layout)
        plan.stages.append(stage)
    check_return_nodes(plan, names, label)
    return plan


def check_return_nodes(plan: Plan, names: dict[fx.Node, str], label: str) -> None:
    """torchvision matches a return node by name prefix, so no later node may extend a name."""
    order = list(names.values())
    for wanted in {*plan.stage_nodes, plan.pool_node, plan.logits_node}:
        position = order.index(wanted)
        if any(n.startswith(wanted + ".") for n in order[position + 1:]):
            raise ConfigError(f"{label}: node '{wanted}' cannot be extracted unambiguously")


# --------------------------------------------------------------------------------------------
# The network


def feature_extractor(model: nn.Module, plan: Plan, label: str) -> tuple[fx.GraphModule,
                                                                       dict[str, str]]:
    """One GraphModule (train and eval graphs) returning the plan's nodes; and the output key
    of each node name (a node wanted twice is returned once)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    keys: dict[str, str] = {}
    for name in [*plan.stage_nodes, plan.pool_node, plan.logits_node]:
        keys.setdefault(name, f"f{len(keys)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # graph differences between train and eval
            gm = create_feature_extractor(model, train_return_nodes=dict(keys),
                                          eval_return_nodes=dict(keys))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"cannot build a feature extractor for {label} ({_reason(exc)})") \
            from None
    return gm, keys


class GraphFeatureNet(FeatureNet):
    """A FeatureNet around one feature-extractor GraphModule (``self.model``)."""

    checkpoint_prefix = "model."

    def _setup(self, model: nn.Module, plan: Plan, label: str) -> None:
        self.model, keys = feature_extractor(model, plan, label)
        self.model.train(self.training)
        self._stage_keys = [keys[n] for n in plan.stage_nodes]
        self._nhwc = [layout == "NHWC" for layout in plan.stage_layouts]
        self._pool_key, self._logits_key = keys[plan.pool_node], keys[plan.logits_node]
        self._pool_is_map = plan.pool_is_map
        self.plan = plan
        self.classifier_module = f"model.{plan.final_layer}"
        self.feature_info = FeatureInfo(stages=tuple(plan.stages), pool=plan.pool,
                                        logits=plan.logits)

    def __deepcopy__(self, memo: dict[int, Any]) -> GraphFeatureNet:
        # torchvision's DualGraphModule comes out of deepcopy in train mode (its __deepcopy__
        # re-runs __init__): copy as usual, then give every module its mode back.
        modes = {name: module.training for name, module in self.named_modules()}
        new = object.__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        new.model.train(modes["model"])  # switches the graph
        for name, module in new.named_modules():
            module.training = modes.get(name, module.training)
        return new

    def forward_features(self, x: Tensor) -> RawFeatures:
        out = self.model(x)
        stages = [out[k].permute(0, 3, 1, 2) if nhwc else out[k]
                  for k, nhwc in zip(self._stage_keys, self._nhwc)]
        pool = out[self._pool_key]
        if self._pool_is_map:
            pool = pool.mean((2, 3))
        return {"stages": stages, "pool": pool, "logits": out[self._logits_key]}
