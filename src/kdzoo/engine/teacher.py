"""The frozen teacher's fast path.

A frozen teacher only ever runs inference, so kdzoo runs a copy of it

* traced with torch.fx, with every BatchNorm folded into the convolution that feeds it, found
  from the data flow of the traced graph (never from module names: on pre-activation blocks,
  bn1 -> relu -> conv1, the BatchNorm comes before the convolution of the same name). Exact in
  real arithmetic; every feature keeps its value up to float rounding;
* in ``torch.inference_mode`` (no autograd bookkeeping), handing its outputs over as ordinary
  tensors (a clone: inference tensors cannot be saved for backward),
* in channels_last layout when the run uses it, optionally compiled with TorchInductor's
  freezing (``--compile``), which on CPU reaches ~80% of the matmul peak,
* returning only the features the method asked for,
* on the CPU, in chunks of 32 images: an inference pass keeps no activations, so small chunks
  keep each layer's input and output in the core's cache (resnet110 -> 1.7x faster than whole
  batches of 128 on a 2-core AVX-512 machine). Exact: eval-mode networks treat every image
  independently.

The original teacher module is kept for what needs autograd through it (Sobolev, LwM, BSS).
"""
from __future__ import annotations

import copy
import logging
from collections import Counter
from typing import Callable

import torch
from torch import Tensor, fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..models.features import FeatureNet, FeatureRequest, Features, RawFeatures, select

log = logging.getLogger("kdzoo")


class _ForwardFeatures(nn.Module):
    """``net.forward_features`` as a module's forward, so torch.fx can trace it."""

    def __init__(self, net: FeatureNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> RawFeatures:
        return self.net.forward_features(x)


def foldable_pairs(graph: fx.Graph, modules: dict[str, nn.Module]) -> list[tuple[fx.Node, fx.Node]]:
    """(conv node, BatchNorm node) for every BatchNorm2d whose input is a Conv2d output used by
    nothing else, where each of the two modules is called exactly once in the graph (folding a
    module that is called elsewhere would change that other call too)."""
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        conv = modules[source.target]
        if (isinstance(conv, nn.Conv2d) and len(source.users) == 1
                and calls[source.target] == 1 and calls[node.target] == 1
                and modules[node.target].track_running_stats):
            pairs.append((source, node))
    return pairs


def fold_batchnorm(model: FeatureNet) -> nn.Module:
    """A frozen module computing ``model.forward_features`` with its BatchNorms folded into the
    convolutions that feed them (see :func:`foldable_pairs`). A network torch.fx cannot trace
    is returned unfolded (a frozen copy), which is slower but computes the same features."""
    frozen = copy.deepcopy(model).eval()
    try:
        traced = fx.symbolic_trace(_ForwardFeatures(frozen))
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: do not fold
        log.debug("teacher %s is not traceable by torch.fx (%s): BatchNorms not folded",
                  model.model_name, exc)
        return _ForwardFeatures(frozen).requires_grad_(False)
    modules = dict(traced.named_modules())
    for conv_node, bn_node in foldable_pairs(traced.graph, modules):
        fused = fuse_conv_bn_eval(modules[conv_node.target], modules[bn_node.target])
        parent, _, name = conv_node.target.rpartition(".")
        setattr(traced.get_submodule(parent) if parent else traced, name, fused)
        bn_node.replace_all_uses_with(conv_node)
        traced.graph.erase_node(bn_node)
        traced.delete_submodule(bn_node.target)
    traced.graph.lint()
    traced.recompile()
    return traced.eval().requires_grad_(False)


def fast_module(teacher: FeatureNet, fold_bn: bool = True,
                memory_format: torch.memory_format = torch.contiguous_format) -> nn.Module:
    """The frozen module the fast path runs: ``teacher``'s ``forward_features`` with its
    BatchNorms folded (``fold_bn``), in ``memory_format``. It never changes, so runs built in
    one process may share it (:class:`~kdzoo.engine.shared.SharedParts`)."""
    model = fold_batchnorm(teacher) if fold_bn else _ForwardFeatures(teacher)
    return model.to(memory_format=memory_format)


class TeacherRunner:
    """Calls the frozen teacher for a fixed request, as fast as it may (``module``: a
    :func:`fast_module` of the teacher made before, to share)."""

    def __init__(self, teacher: FeatureNet, request: FeatureRequest, *, fold_bn: bool = True,
                 compile: bool = False, memory_format: torch.memory_format =
                 torch.contiguous_format, chunk: int | None = None,
                 module: nn.Module | None = None) -> None:
        self.request = request
        self.chunk = chunk
        self.model = module if module is not None else fast_module(teacher, fold_bn,
                                                                   memory_format)
        raw: Callable[[Tensor], RawFeatures] = self.model
        if compile:
            import torch._inductor.config as inductor_config

            # Freezing treats the (frozen) weights as constants: layout conversion and fusions
            # happen at compile time.
            inductor_config.freezing = True
            raw = torch.compile(self.model)
        self.forward: Callable[[Tensor], Features] = lambda x: select(raw(x), request)

    def __call__(self, images: Tensor) -> Features:
        chunks = [images] if self.chunk is None else images.split(self.chunk)
        with torch.inference_mode():
            parts = [self.forward(piece) for piece in chunks]
        # Outside inference mode, clone/cat make the ordinary tensors autograd may save.
        if len(parts) == 1:
            return parts[0].map(torch.Tensor.clone)
        return concatenate(parts)


def concatenate(parts: list[Features]) -> Features:
    """The features of consecutive chunks of a batch, joined along the batch dimension."""
    def cat(items: list[Tensor | None]) -> Tensor | None:
        return None if items[0] is None else torch.cat(items)  # type: ignore[arg-type]

    def cat_lists(lists: list[list[Tensor | None] | None]) -> list[Tensor | None] | None:
        if lists[0] is None:
            return None
        return [cat([chunk[i] for chunk in lists]) for i in range(len(lists[0]))]  # type: ignore

    return Features(logits=torch.cat([p.logits for p in parts]),
                    pool=cat([p.pool for p in parts]),
                    stages=cat_lists([p.stages for p in parts]) or [],
                    stages_pre=cat_lists([p.stages_pre for p in parts]),
                    stem=cat([p.stem for p in parts]), pre_pool=cat([p.pre_pool for p in parts]))
