"""Measuring tools for ``kdzoo bench``: the machine's practical peak, model FLOPs, and a timer for
interleaved rounds.

The conventions follow reference/performance-anchors.md: FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products only, FLOPs =
2 x MACs; BatchNorm, ReLU, adds and pooling are free), and "% of peak" is relative to the best
fp32 ``torch.mm`` rate. Because a VM's speed drifts by 15-25 % over minutes, variants are timed
in interleaved rounds (A B A B ...) in one process and reported as min and median per step.
"""
from __future__ import annotations

import copy
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """Temporarily run torch on ``threads`` intra-op threads (None: leave as is)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def matmul_peak_gflops(threads: int | None = None, size: int = 2048, repeats: int = 5) -> float:
    """Best measured fp32 ``torch.mm`` rate (GFLOP/s) for square ``size`` matrices.

    The best of ``repeats`` timed products after one warm-up, each counted as ``2 size^3``
    FLOPs: on this machine's kind about 180 GFLOP/s with 2 threads (anchors, section 2). Best,
    not median, because the peak is the machine's capability, and noise only ever slows it.
    """
    with _threads(threads), torch.no_grad():
        a = torch.randn(size, size)
        b = torch.randn(size, size)
        out = torch.empty(size, size)
        torch.mm(a, b, out=out)  # warm-up: thread pool start and MKL's first-call setup
        best = float("inf")
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def flops_per_image(model: nn.Module, image_size: int = 32, channels: int = 3) -> int:
    """Forward FLOPs of ``model`` for one ``channels x image_size x image_size`` image.

    Counted with ``FlopCounterMode`` in eval mode under ``no_grad`` (the anchors' convention:
    resnet20 81.63 MFLOPs, resnet110 506.3 MFLOPs). A training step costs about 3x this for the
    student; a distillation step adds 1x the teacher's. ``model`` itself is left untouched.
    """
    try:
        # A copy on the meta device counts the same ops without computing them: seconds faster
        # for resnet110 on a loaded 2-core machine, where even one real image is slow.
        return _count_forward(copy.deepcopy(model).to("meta"), image_size, channels, "meta")
    except (NotImplementedError, RuntimeError):  # an op without a meta kernel: run it for real
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = model.training
        try:
            return _count_forward(model, image_size, channels, device)
        finally:
            model.train(was_training)


def _count_forward(model: nn.Module, image_size: int, channels: int,
                   device: str | torch.device) -> int:
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, channels, image_size, image_size, device=device))
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class TimingSummary:
    """Per-step seconds of one variant: ``n`` samples, their min and median."""

    n: int
    min: float
    median: float

    def rate(self, items_per_step: float) -> tuple[float, float]:
        """(best, median) items per second, e.g. images/s for ``items_per_step`` = batch."""
        return items_per_step / self.min, items_per_step / self.median


def summarize(samples: list[float]) -> TimingSummary:
    if not samples:
        raise ValueError("no timing samples to summarize")
    return TimingSummary(n=len(samples), min=min(samples), median=statistics.median(samples))


def time_interleaved(fns: Mapping[str, Callable[[], object]], rounds: int = 3,
                     steps_per_round: int = 8, warmup: int = 2,
                     alternate: bool = False) -> dict[str, list[float]]:
    """Time each callable in interleaved rounds; returns every step's seconds per name.

    First each callable runs ``warmup`` untimed calls (first-call costs: allocator growth, lazy
    initialisation, a DataLoader iterator's start). Then, ``rounds`` times, each callable in
    turn runs ``steps_per_round`` timed calls (A..A B..B A..A B..B), so slow drifts of the
    machine fall on every variant alike. ``alternate`` reverses the order on odd rounds
    (A B B A ...), which also cancels a linear drift within a round pair.
    Each call is timed alone with ``time.perf_counter``; on a GPU the callable must synchronise
    itself (RepDistiller-style steps do, through ``loss.item()``).
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        order = names[::-1] if alternate and index % 2 else names
        for name in order:
            fn = fns[name]
            for _ in range(steps_per_round):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times
