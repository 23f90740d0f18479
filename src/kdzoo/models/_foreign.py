"""Any torchvision or timm classification model as a kdzoo network: ``torchvision/<name>``
(a classification builder of ``torchvision.models``) and ``timm/<name>`` (a
``timm.create_model`` name; timm is the optional extra ``kdzoo[timm]``).

The adapters keep the wrapped library model under ``self.model``, so their state-dict keys are
the library's keys prefixed ``model.`` (:attr:`checkpoint_prefix`); a plain torchvision or timm
state dict loads into them (:mod:`kdzoo.models.checkpoint` adds the prefix).

**torchvision** models carry no feature metadata, so the stages are found from the data flow:
the model is traced with torch.fx (torchvision's feature-extraction tracer, whose node names
``create_feature_extractor`` accepts) and its shapes propagated with a probe image on the meta
device (no arithmetic, no memory), at 224x224 and, where the model accepts it, 160x160. Then

* the **logits** are the graph's output and the **final layer** the nearest Linear (or 1x1
  Conv2d: SqueezeNet) before it;
* the **pool** is the input of the final layer, before any dropout: the feature the last
  Linear reads, as timm's ``forward_head(pre_logits=True)`` (1024 for MobileNetV3, the
  penultimate 4096 for VGG); where that input is a map (SqueezeNet) its spatial mean;
* the **stages**: the maps among the pool's ancestors are grouped by reduction (input size
  / map size, rounded to a power of two): a (1, C, h, h) output, h > 1 (NHWC maps such as
  Swin's are accepted and permuted), downstream of a learned layer, not an adaptive pooling,
  whose size follows the input (second probe), and never after a coarser map (inception's
  branches). The last group's stage output is its last map; any other group's is the map
  entering the module that first reduces further (``layer1.1.relu_1`` entering ``layer2.0``;
  MobileNetV3's ``features.3.add`` entering ``features.4.block``, not the expansion
  convolution inside it), see :func:`_stage_outputs`. The last stage must reach the first
  flattened (2-D) feature without a learned layer on a spatial map in between, otherwise
  (ViT: transformer blocks follow the patch embedding) the model has no spatial stages,
  ``stages=()``. Stem-level maps count as stages (ResNet's ``relu`` at 1/2, as timm's
  ``feature_info`` lists ``act1``); ``stem`` is None, ``preact`` False, ``bn_before_relu``
  None. Reductions are nominal: for unpadded networks (Inception v3, AlexNet, SqueezeNet) the
  real map sizes are a little smaller than ``ceil(size / reduction)``.

One ``create_feature_extractor`` GraphModule (train and eval graphs) returns all of them in one
pass, so ``forward_features`` is one call, traceable by torch.fx (BatchNorm folding), and
``deepcopy``, ``train()``/``eval()`` and channels_last work as for any module.

**timm** models describe themselves: ``model.feature_info`` (channels, reduction) and
``forward_intermediates`` (final map and every stage in one pass), ``forward_head(x,
pre_logits=True)`` for the pool and the classifier (``get_classifier()``) applied to it for the
logits. A timm model without ``forward_intermediates`` goes through the fx discovery above.
timm's ViTs list every block as a stage (their token maps, 1/16), where torchvision's ViTs have
none. Traced with torch.fx, timm's BatchNormAct2d (MobileNetV3, EfficientNet) appears as an
``F.batch_norm`` call on the module's statistics, not as a BatchNorm2d module call.
"""
from __future__ import annotations

import copy
import itertools
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..errors import ConfigError
from ..registry import did_you_mean
from .features import FeatureInfo, FeatureNet, RawFeatures, StageInfo

PROBE = 224         # discovery input size (torchvision's models all accept 224x224)
SECOND_PROBE = 160  # checks that a stage's size follows the input (adaptive pools do not)
PREFIXES = ("torchvision", "timm")

_ADAPTIVE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_ADAPTIVE_FUNCTIONS = (F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                       torch._C._nn.adaptive_avg_pool2d)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_DROPOUT_FUNCTIONS = (F.dropout, torch.dropout, F.dropout1d, F.dropout2d)


# --------------------------------------------------------------------------------------------
# Names


def split_name(name: str) -> tuple[str, str] | None:
    """``("torchvision", "resnet18")`` for ``torchvision/resnet18``; None for a name without a
    slash (a kdzoo model); a one-line ConfigError for an unknown prefix or an empty model."""
    prefix, slash, rest = name.partition("/")
    if not slash:
        return None
    if prefix not in PREFIXES:
        hint = did_you_mean(prefix, list(PREFIXES))
        raise ConfigError(f"unknown model '{name}': a name with a slash must start with "
                          f"'torchvision/' or 'timm/', not '{prefix}/'{hint}")
    if not rest.strip():
        example = "resnet18" if prefix == "torchvision" else "mobilenetv3_small_050"
        raise ConfigError(f"model name '{name}' names no {prefix} model after the slash, e.g. "
                          f"'{prefix}/{example}'")
    return prefix, rest


def torchvision_names() -> list[str]:
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def import_timm(name: str = "") -> Any:
    """The timm module, or a one-line ConfigError naming the extra that installs it."""
    try:
        import timm
    except ImportError:  # also where ``sys.modules["timm"] is None``
        what = f"model '{name}'" if name else "a timm/ model"
        raise ConfigError(f'{what} needs timm, which is not installed: pip install '
                          '"kdzoo[timm]" (or pip install timm)') from None
    return timm


def resolve_torchvision(rest: str) -> str:
    """The torchvision builder name for ``rest`` (case-insensitive), or a one-line ConfigError
    with the nearest names."""
    names = torchvision_names()
    if rest.lower() in names:
        return rest.lower()
    hint = did_you_mean(rest, names)
    raise ConfigError(f"unknown model 'torchvision/{rest}': torchvision has no classification "
                      f"model '{rest}'{hint}; torchvision.models.list_models"
                      "(module=torchvision.models) lists them")


def resolve_timm(rest: str) -> str:
    """``rest`` when timm knows it (with or without a pretrained tag such as ``.a1_in1k``; a
    ``hf-hub:``/``local-dir:`` name is passed through), else a one-line ConfigError."""
    timm = import_timm(f"timm/{rest}")
    if rest.startswith(("hf-hub:", "local-dir:")) or timm.is_model(rest):
        return rest
    hint = did_you_mean(rest, timm.list_models())
    raise ConfigError(f"unknown model 'timm/{rest}': timm has no model '{rest}'{hint}; "
                      "timm.list_models() lists them")


def foreign_factory(name: str) -> Callable[..., FeatureNet] | None:
    """The factory ``f(num_classes, in_chans, pretrained=False)`` for a ``torchvision/`` or
    ``timm/`` name, None for a name without a slash, a one-line ConfigError for a bad name."""
    parts = split_name(name)
    if parts is None:
        return None
    prefix, rest = parts
    if prefix == "torchvision":
        arch = resolve_torchvision(rest)
        build: Callable[..., FeatureNet] = TorchvisionNet
    else:
        arch = resolve_timm(rest)
        build = build_timm

    def factory(num_classes: int = 10, in_chans: int = 3, pretrained: bool = False) -> FeatureNet:
        return build(arch, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)

    factory.__name__ = f"{prefix}_{arch}".replace("-", "_").replace(".", "_")
    factory.__doc__ = f"{prefix} model {arch}, adapted to kdzoo's feature contract."
    factory.model_name = f"{prefix}/{arch}"  # type: ignore[attr-defined]
    factory.supports_pretrained = True  # type: ignore[attr-defined]
    return factory


# --------------------------------------------------------------------------------------------
# Module surgery


def adapt_conv_weight(weight: Tensor, in_chans: int) -> Tensor:
    """An RGB kernel for ``in_chans`` input channels, as timm's ``adapt_input_conv``: summed
    over the channels for one channel, otherwise repeated and rescaled by 3 / in_chans."""
    if weight.shape[1] != 3:
        raise ConfigError(f"cannot adapt a first convolution of {weight.shape[1]} input "
                          "channels (expected 3)")
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = math.ceil(in_chans / 3)
    return weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (3 / in_chans)


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _replace_first_conv(model: nn.Module, target: str, in_chans: int) -> None:
    """Swap the Conv2d at ``target`` for one reading ``in_chans`` channels, its kernel adapted
    from the existing one (pretrained or the builder's own initialisation)."""
    conv = model.get_submodule(target)
    assert isinstance(conv, nn.Conv2d)
    if conv.groups != 1:
        raise ConfigError(f"cannot adapt the grouped first convolution {target} to {in_chans} "
                          "input channels")
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, 1, conv.bias is not None, conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(adapt_conv_weight(conv.weight, in_chans))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set_submodule(model, target, new)


def _replace_final_layer(model: nn.Module, target: str, num_classes: int) -> None:
    """A fresh classifier of ``num_classes`` outputs in place of the (pretrained) one."""
    layer = model.get_submodule(target)
    if isinstance(layer, nn.Linear):
        new: nn.Module = nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
    elif isinstance(layer, nn.Conv2d):
        new = nn.Conv2d(layer.in_channels, num_classes, layer.kernel_size, layer.stride,
                        layer.padding, bias=layer.bias is not None)
    else:  # pragma: no cover - discovery only returns Linear or Conv2d
        raise ConfigError(f"cannot replace the classifier {target} ({type(layer).__name__})")
    _set_submodule(model, target, new.to(device=layer.weight.device, dtype=layer.weight.dtype))


# --------------------------------------------------------------------------------------------
# Stage discovery on the traced graph


def _tracer_kwargs() -> dict[str, Any]:
    """The tracer arguments of torchvision's feature extraction (so node names match)."""
    from torchvision.models import feature_extraction

    defaults = getattr(feature_extraction, "_set_default_tracer_kwargs", None)
    if defaults is not None:
        return defaults(None)
    import torchvision.ops  # pragma: no cover - older/newer torchvision without the helper

    return {"autowrap_modules": (math, torchvision.ops),  # pragma: no cover
            "leaf_modules": feature_extraction._get_leaf_modules_for_ops()}


def _trace(model: nn.Module) -> tuple[fx.Graph, dict[fx.Node, str]]:
    """The eval-mode graph of ``model`` and each node's torchvision node name."""
    from torchvision.models.feature_extraction import NodePathTracer

    training = model.training
    model.eval()
    try:
        tracer = NodePathTracer(**_tracer_kwargs())
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure: the model is not traceable
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{type(model).__name__} cannot be traced with torch.fx to find its "
                          f"stages ({reason})") from None
    finally:
        model.train(training)
    return graph, dict(tracer.node_to_qualname)


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.shapes: dict[fx.Node, tuple[int, ...] | None] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.shapes[n] = tuple(result.shape) if isinstance(result, Tensor) else None
        return result


class _Probe(nn.Module):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, x: Tensor) -> dict[fx.Node, tuple[int, ...] | None]:
        recorder = _ShapeRecorder(self.gm)
        recorder.run(x)
        return recorder.shapes


def _shapes(gm: fx.GraphModule, in_chans: int, size: int) -> dict[fx.Node, Any]:
    """Every node's output shape for a (1, in_chans, size, size) input: on the meta device
    (the weights swapped for meta tensors during the call), falling back to a real forward."""
    probe = _Probe(gm).eval()
    state = {f"gm.{k}": torch.empty_like(v, device="meta")
             for k, v in [*gm.named_parameters(), *gm.named_buffers()]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.func.functional_call(probe, state, (torch.empty(1, in_chans, size, size,
                                                                         device="meta"),))
    except Exception:  # noqa: BLE001 - an op without a meta kernel: run it for real
        with torch.no_grad():
            return probe(torch.zeros(1, in_chans, size, size))


def _is_learned(node: fx.Node, root: nn.Module) -> bool:
    """A node that applies learned weights of 2+ dimensions (a conv, linear or attention)."""
    if node.op == "call_module":
        return any(p.dim() >= 2 for p in root.get_submodule(node.target).parameters())
    return any(arg.op == "get_attr" and isinstance(_fetch(root, arg.target), Tensor)
               and _fetch(root, arg.target).dim() >= 2 for arg in node.all_input_nodes)


def _fetch(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


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


def _is_adaptive_pool(node: fx.Node, root: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(root.get_submodule(node.target), _ADAPTIVE_POOLS)
    return node.op == "call_function" and node.target in _ADAPTIVE_FUNCTIONS


def _is_dropout(node: fx.Node, root: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(root.get_submodule(node.target), _DROPOUTS)
    return node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, todo = {node}, [node]
    while todo:
        for arg in todo.pop().all_input_nodes:
            if arg not in seen:
                seen.add(arg)
                todo.append(arg)
    return seen


def _descendants(nodes: list[fx.Node], keep: Callable[[fx.Node], bool]) -> set[fx.Node]:
    """Nodes reached from ``nodes`` (inclusive) along users that satisfy ``keep``."""
    seen = {n for n in nodes}
    todo = list(nodes)
    while todo:
        for user in todo.pop().users:
            if user not in seen and keep(user):
                seen.add(user)
                todo.append(user)
    return seen


def _stage_outputs(groups: dict[int, list[fx.Node]], graph: fx.Graph,
                   names: dict[fx.Node, str], model: nn.Module) -> dict[int, fx.Node]:
    """The output node of each reduction's stage among its maps ``groups[r]`` (graph order).

    The last stage's is its last map. Any other stage ends where the network enters the
    module that first reduces further: its output is the map entering the module around the
    first coarser map (``layer2.0`` for ResNet's ``layer2.0.conv1``, ``features.2.block`` for
    MobileNetV3's strided depthwise convolution), not a map inside that module (an inverted
    residual's expansion, still at the finer size). Where that map comes from a sibling inside
    a parent that is not a plain sequence (inception's ``Mixed_7a.branch3x3_1`` feeding
    ``Mixed_7a.branch3x3_2``), the parent is the module entered. Where the module takes no map
    of this size (a plain Sequential such as VGG's ``features``) or the first coarser map is a
    top-level op (ResNet's ``maxpool``), the stage ends with the last map before it."""
    order = {node: index for index, node in enumerate(graph.nodes)}
    reductions = sorted(groups)
    chosen = {reductions[-1]: groups[reductions[-1]][-1]}
    for r, coarser in itertools.pairwise(reductions):
        first = groups[coarser][0]
        before = [n for n in groups[r] if order[n] < order[first]]
        members = set(before)
        stage = before[-1]
        scope = names[first].rpartition(".")[0]
        while scope:
            def inside(node: fx.Node, scope: str = scope) -> bool:
                return names.get(node, "").startswith(scope + ".")

            entries = [arg for node in graph.nodes if inside(node)
                       for arg in node.all_input_nodes if not inside(arg) and arg in members]
            if not entries:
                outside = [n for n in before if not inside(n)]
                stage = outside[-1] if outside else stage
                break
            entry = max(entries, key=order.__getitem__)
            parent = scope.rpartition(".")[0]
            if parent and names[entry].startswith(parent + ".") and not isinstance(
                    model.get_submodule(parent), (nn.Sequential, nn.ModuleList)):
                scope = parent  # the entry is made by a sibling part of the same block
                continue
            stage = entry
            break
        chosen[r] = stage
    return chosen


def _power_of_two(ratio: float) -> int:
    return 2 ** max(0, round(math.log2(ratio)))


def _layout(shape: Any) -> str | None:
    """'NCHW' or 'NHWC' for a batch-1 map with square spatial size > 1, else None."""
    if shape is None or len(shape) != 4 or shape[0] != 1:
        return None
    if shape[2] == shape[3] > 1 and shape[1] != shape[2]:
        return "NCHW"
    if shape[1] == shape[2] > 1 and shape[3] != shape[2]:
        return "NHWC"
    if shape[1] == shape[2] == shape[3] > 1:  # ambiguous: the second probe decides
        return "NCHW?"
    return None


class Plan:
    """What discovery found: node names of the stages (with their layout), the pool (and
    whether it is a map to average) and the logits, plus the final layer's module name."""

    def __init__(self) -> None:
        self.stage_nodes: list[str] = []
        self.stage_layouts: list[str] = []
        self.stages: list[StageInfo] = []
        self.pool_node = ""
        self.pool_is_map = False
        self.pool = 0
        self.logits_node = ""
        self.logits = 0
        self.final_layer = ""
        self.first_conv = ""


def find_first_conv(graph: fx.Graph, root: nn.Module) -> str:
    """The module name of the first Conv2d in execution order ('' where there is none); it may
    sit inside a module the tracer keeps whole (torchvision.ops' Conv2dNormActivation)."""
    for node in graph.nodes:
        if node.op == "call_module":
            for name, module in root.get_submodule(node.target).named_modules():
                if isinstance(module, nn.Conv2d):
                    return f"{node.target}.{name}" if name else str(node.target)
    return ""


def discover(model: nn.Module, graph: fx.Graph, names: dict[fx.Node, str], in_chans: int,
             label: str) -> Plan:
    """Stages, pool and logits of ``model`` from its traced ``graph`` (see the module doc)."""
    gm = fx.GraphModule(model, graph)
    try:
        shapes = _shapes(gm, in_chans, PROBE)
    except Exception as exc:  # noqa: BLE001
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{label} does not run on a {PROBE}x{PROBE} probe image, so kdzoo "
                          f"cannot find its stages ({reason})") from None
    try:
        second: dict[fx.Node, Any] | None = _shapes(gm, in_chans, SECOND_PROBE)
    except Exception:  # noqa: BLE001 - models fixed to one input size (ViT): one probe only
        second = None
    root: nn.Module = gm
    plan = Plan()
    output = next(n for n in graph.nodes if n.op == "output")
    logits = output.args[0]
    if not isinstance(logits, fx.Node) or shapes.get(logits) is None or \
            len(shapes[logits]) != 2:
        raise ConfigError(f"{label} does not return one (batch, classes) logits tensor in eval "
                          "mode, so kdzoo cannot adapt it")
    plan.logits_node, plan.logits = names[logits], shapes[logits][1]

    # The final layer: the nearest Linear or Conv2d before the logits.
    final, todo, seen = None, [logits], {logits}
    while todo and final is None:
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

    # Stage candidates: data maps that scale with the input, downstream of a learned layer.
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    learned = [n for n in graph.nodes if _is_learned(n, root)]
    upstream = _ancestors(pool)
    after_learned = _descendants(learned, lambda n: True)
    data = _descendants(placeholders, lambda n: True)
    flat = next((n for n in graph.nodes if n in upstream and n in data and shapes.get(n)
                 is not None and len(shapes[n]) == 2), pool)
    groups: dict[int, list[fx.Node]] = {}
    layouts: dict[fx.Node, tuple[str, int]] = {}
    coarsest = 0
    for node in graph.nodes:
        if node.op in ("placeholder", "output") or node not in upstream or \
                node not in after_learned or node not in data or _is_adaptive_pool(node, root):
            continue
        layout = _layout(shapes.get(node))
        if layout is None:
            continue
        shape = shapes[node]
        if second is not None:
            other = second.get(node)
            other_layout = _layout(other)
            if other_layout is None:
                continue
            if layout == "NCHW?":
                layout = "NCHW" if other_layout == "NCHW?" else other_layout
            side, other_side = (shape[2], other[2]) if layout == "NCHW" else (shape[1], other[1])
            channels = shape[1] if layout == "NCHW" else shape[3]
            other_channels = other[1] if layout == "NCHW" else other[3]
            if side == other_side or channels != other_channels:
                continue  # does not follow the input size: not a feature map
        elif layout == "NCHW?":
            layout = "NCHW"
        side = shape[2] if layout == "NCHW" else shape[1]
        channels = shape[1] if layout == "NCHW" else shape[3]
        reduction = _power_of_two(PROBE / side)
        if reduction < coarsest:
            continue  # a finer map after a coarser one: a branch inside a block
        coarsest = reduction
        groups.setdefault(reduction, []).append(node)
        layouts[node] = (layout, channels)
    if groups:
        last = groups[max(groups)][-1]
        between = _descendants([last], lambda n: n in upstream) & _ancestors(flat)
        def pooled(node: fx.Node) -> bool:
            shape = shapes.get(node)
            return shape is not None and (len(shape) == 2 or
                                          (len(shape) == 4 and shape[2] * shape[3] == 1))

        if any(_is_learned(n, root) and not pooled(n) for n in between if n is not last):
            groups = {}  # learned layers after the last map (ViT's blocks): no spatial stages
    if groups:
        for reduction, node in sorted(_stage_outputs(groups, graph, names, model).items()):
            layout, channels = layouts[node]
            plan.stage_nodes.append(names[node])
            plan.stage_layouts.append(layout)
            plan.stages.append(StageInfo(channels, reduction))
    return plan


def check_return_nodes(plan: Plan, names: dict[fx.Node, str], label: str) -> None:
    """torchvision matches a return node by name prefix, so no later node may extend a name."""
    order = list(names.values())
    for wanted in {*plan.stage_nodes, plan.pool_node, plan.logits_node}:
        position = order.index(wanted)
        if any(n.startswith(wanted + ".") for n in order[position + 1:]):
            raise ConfigError(f"{label}: node '{wanted}' cannot be extracted unambiguously")


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
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot build a feature extractor for {label} ({reason})") from None
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


# --------------------------------------------------------------------------------------------
# torchvision


_AUX_MODELS = ("googlenet", "inception_v3")


def build_torchvision(arch: str, num_classes: int, in_chans: int, pretrained: bool) -> nn.Module:
    """torchvision's own model: random (the builder's init) with ``num_classes`` outputs, or
    with the builder's DEFAULT weights (downloaded by torchvision) and its 1000-class head."""
    import torchvision.models

    builder = torchvision.models.get_model_builder(arch)
    kwargs: dict[str, Any] = {}
    if arch in _AUX_MODELS:
        if not pretrained:
            kwargs.update(aux_logits=False, init_weights=True)
        elif in_chans != 3:
            kwargs["transform_input"] = False  # its RGB re-normalisation needs 3 channels
    if pretrained:
        model = builder(weights="DEFAULT", **kwargs)
    else:
        model = builder(weights=None, num_classes=num_classes, **kwargs)
    if getattr(model, "aux_logits", False):  # pretrained inception_v3 keeps its aux head
        model.aux_logits = False
        for attr in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, attr):
                setattr(model, attr, None)
    return model


class TorchvisionNet(GraphFeatureNet):
    """A torchvision classification model with the stages found from its data flow."""

    def __init__(self, arch: str, num_classes: int = 10, in_chans: int = 3,
                 pretrained: bool = False) -> None:
        super().__init__()
        label = f"torchvision/{arch}"
        model = build_torchvision(arch, num_classes, in_chans, pretrained)
        graph, names = _trace(model)
        first = find_first_conv(graph, model)
        if in_chans != 3:
            if not first:
                raise ConfigError(f"{label} has no first Conv2d to adapt to {in_chans} input "
                                  "channels")
            _replace_first_conv(model, first, in_chans)
        plan = discover(model, graph, names, in_chans, label)
        plan.first_conv = first
        check_return_nodes(plan, names, label)
        if plan.logits != num_classes:
            if not pretrained:
                raise ConfigError(f"{label} gives {plan.logits} logits, not {num_classes}")
            _replace_final_layer(model, plan.final_layer, num_classes)
            plan.logits = num_classes
        self._setup(model, plan, label)


# --------------------------------------------------------------------------------------------
# timm


def build_timm(arch: str, num_classes: int = 10, in_chans: int = 3,
               pretrained: bool = False) -> FeatureNet:
    """``timm.create_model`` (timm adapts the head and the first convolution itself), wrapped
    by its metadata where it has ``forward_intermediates``, by fx discovery otherwise."""
    timm = import_timm(f"timm/{arch}")
    model = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes,
                              in_chans=in_chans)
    if hasattr(model, "forward_intermediates") and hasattr(model, "feature_info"):
        return TimmNet(model, num_classes)
    return TimmGraphNet(arch, model, num_classes, in_chans)


class TimmNet(FeatureNet):
    """A timm model through its own metadata (``feature_info``, ``forward_intermediates``)."""

    checkpoint_prefix = "model."

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model = model
        classifier = model.get_classifier()
        # Distilled ViTs return two heads: their logits then come from forward_head itself.
        self._classifier_only = isinstance(classifier, nn.Module)
        pool = getattr(classifier, "in_features", None) or \
            getattr(model, "head_hidden_size", None) or model.num_features
        self.feature_info = FeatureInfo(
            stages=tuple(StageInfo(int(d["num_chs"]), int(d["reduction"]))
                         for d in model.feature_info),
            pool=int(pool), logits=num_classes)

    def classifier_layer(self) -> nn.Module:
        return self.model.get_classifier()

    def forward_features(self, x: Tensor) -> RawFeatures:
        final, stages = self.model.forward_intermediates(x)
        pool = self.model.forward_head(final, pre_logits=True)
        logits = self.model.get_classifier()(pool) if self._classifier_only else \
            self.model.forward_head(final)
        return {"stages": list(stages), "pool": pool, "logits": logits}


class TimmGraphNet(GraphFeatureNet):
    """A timm model without ``forward_intermediates``: stages found as for torchvision."""

    def __init__(self, arch: str, model: nn.Module, num_classes: int, in_chans: int) -> None:
        super().__init__()
        label = f"timm/{arch}"
        graph, names = _trace(model)
        plan = discover(model, graph, names, in_chans, label)
        check_return_nodes(plan, names, label)
        self._setup(model, plan, label)
