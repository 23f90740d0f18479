"""``kdzoo bench``: kdzoo's training step against the conventional loop, in one process.

Both sides train the same models at the same batch size on the same CIFAR-format files (random
images written to a temporary folder), and their steps are timed in interleaved rounds
(conventional, kdzoo, conventional, kdzoo, ...), because the speed of a shared machine drifts by
15-25% over minutes: interleaving exposes both sides to the same drift. Each case reports images
per second (best and median step), their ratio, and the kdzoo side's achieved GFLOP/s against a
matmul peak measured in the same process.
"""
from __future__ import annotations

import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..config import resolve_config
from ..data.cifar import write_cifar_folder
from ..engine.build import build
from ..engine.rundir import RunDir
from ..engine.trainer import Trainer
from .conventional import ConventionalRunner
from .measure import flops_per_image, matmul_peak_gflops, summarize, time_interleaved

#: case -> (kdzoo method, conventional case, teacher cache)
CASES: dict[str, tuple[str, str, bool]] = {
    "baseline": ("baseline", "baseline", False),
    "st": ("st", "st", False),
    "at": ("at", "at", False),
    "crd": ("crd", "crd", False),
    "st-cached": ("st", "st", True),
}


@dataclass
class BenchOptions:
    cases: tuple[str, ...] = tuple(CASES)
    teacher: str = "resnet110"
    student: str = "resnet20"
    batch_size: int | None = None   # None: 128, and 64 for crd (RepDistiller's recipe)
    steps: int = 8                  # timed steps per round and side
    rounds: int = 3
    warmup: int = 2
    images: int = 50_000            # training images written (CIFAR-10's size)
    test_images: int = 10_000
    device: str = "cpu"
    compile: bool = False
    epoch: bool = False             # also time one whole epoch + evaluation per side
    threads: int | None = None
    workdir: str | None = None      # where data and caches go (default: a temporary folder)
    seed: int = 0


class KdzooRunner:
    """kdzoo's real training step (the loop's own ``train_step``) on a CIFAR-format folder."""

    def __init__(self, method: str, data_root: Path, options: BenchOptions, batch_size: int,
                 teacher_cache: bool, cache_dir: Path) -> None:
        overrides: dict[str, Any] = {
            "method": {"name": method},
            "student": {"name": options.student},
            "data": {"name": "cifar10", "data_dir": str(data_root)},
            "optim": {"epochs": 1, "batch_size": batch_size, "lr": 0.05},
            "device": options.device, "compile": options.compile, "seed": options.seed,
            "teacher_cache": teacher_cache, "cache_dir": str(cache_dir),
        }
        if method != "baseline":
            overrides["teacher"] = {"name": options.teacher, "untrained": True}
        self.config = resolve_config(overrides=overrides)
        self.parts = build(self.config)
        self.trainer = Trainer(self.parts, RunDir(cache_dir / "unused-run"), progress=False)
        self.stage = self.parts.stages[-1]  # the distillation stage
        self.setup = self.trainer.begin_epoch(self.stage, 0.05)
        self.batches = self._stream()

    def _stream(self) -> Iterator[tuple[int, int, Any]]:
        epoch = 0
        while True:
            epoch += 1
            for step, batch in enumerate(self.parts.loader.train_batches(self.config.seed, epoch)):
                yield epoch, step, batch

    def prefill_cache(self, steps: int) -> None:
        """Fill the teacher cache with the views the next ``steps`` steps will use (the cache
        case measures a filled cache; filling it is a one-time cost)."""
        cache, runner = self.parts.teacher_cache, self.parts.teacher_runner
        assert cache is not None and runner is not None
        stream = self._stream()
        for _ in range(steps):
            _, _, batch = next(stream)
            views = cache.views.index(batch.offsets, batch.flips)
            cache.logits_for(batch.indices, views, batch.images, lambda x: runner(x)["logits"])
        cache.flush()

    def step(self) -> int:
        epoch, step, batch = next(self.batches)
        self.trainer.train_step(self.setup, batch, self.stage, epoch, step)
        return len(batch)

    def epoch(self) -> dict[str, float]:
        stats = self.trainer.train_epoch(self.stage, 1, 0.05)
        stats.update(self.trainer.evaluate_epoch())
        return stats


def write_bench_data(root: Path, images: int, test_images: int, seed: int) -> Path:
    gen = torch.Generator().manual_seed(seed)
    train = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=gen)
    test = torch.randint(0, 256, (test_images, 3, 32, 32), dtype=torch.uint8, generator=gen)
    write_cifar_folder(root, "cifar10", train, torch.arange(images) % 10, test,
                       torch.arange(test_images) % 10)
    return root


def machine_info(device: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_bench(options: BenchOptions, report: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every case of ``options``; returns the results (what ``--json`` writes)."""
    if options.threads:
        torch.set_num_threads(options.threads)
    with tempfile.TemporaryDirectory(dir=options.workdir) as tmp:
        work = Path(tmp)
        report(f"writing {options.images:,} + {options.test_images:,} random CIFAR-format "
               f"images to {work}")
        data_root = write_bench_data(work / "data", options.images, options.test_images,
                                     options.seed)
        peak = matmul_peak_gflops() if options.device == "cpu" else None
        results: dict[str, Any] = {"machine": machine_info(options.device),
                                   "matmul_peak_gflops": peak, "options": vars(options),
                                   "cases": {}}
        if peak:
            report(f"measured fp32 matmul peak: {peak:.0f} GFLOP/s")
        for case in options.cases:
            results["cases"][case] = run_case(case, data_root, work, options, peak, report)
    return results


def run_case(case: str, data_root: Path, work: Path, options: BenchOptions,
             peak: float | None, report: Callable[[str], None]) -> dict[str, Any]:
    method, conventional_case, cached = CASES[case]
    batch = options.batch_size or (64 if method == "crd" else 128)
    report(f"[{case}] building both sides (batch {batch})")
    conventional = ConventionalRunner(conventional_case, data_root, teacher=options.teacher,
                                      student=options.student, batch_size=batch,
                                      device=options.device, seed=options.seed)
    kdzoo = KdzooRunner(method, data_root, options, batch, cached, work / "cache")
    timed_steps = options.warmup + options.rounds * options.steps
    if cached:
        kdzoo.prefill_cache(timed_steps)
    times = time_interleaved({"conventional": conventional.step, "kdzoo": kdzoo.step},
                             rounds=options.rounds, steps_per_round=options.steps,
                             warmup=options.warmup)
    result: dict[str, Any] = {"batch_size": batch, "seconds_per_step": times}
    student_flops = flops_per_image(kdzoo.parts.student)
    teacher_flops = 0 if (method == "baseline" or cached) else flops_per_image(
        kdzoo.parts.teacher)
    for side in ("conventional", "kdzoo"):
        summary = summarize(times[side])
        best, median = summary.rate(batch)
        result[side] = {"images_per_second_best": best, "images_per_second_median": median}
    result["ratio_median"] = (result["kdzoo"]["images_per_second_median"]
                              / result["conventional"]["images_per_second_median"])
    result["ratio_best"] = (result["kdzoo"]["images_per_second_best"]
                            / result["conventional"]["images_per_second_best"])
    gflop_per_image = (3 * student_flops + teacher_flops) / 1e9
    result["gflop_per_image"] = gflop_per_image
    result["kdzoo_gflops"] = gflop_per_image * result["kdzoo"]["images_per_second_median"]
    if peak:
        result["kdzoo_percent_of_peak"] = 100 * result["kdzoo_gflops"] / peak
    report(format_case(case, result))
    if options.epoch:
        result["epoch"] = time_epochs(conventional, kdzoo, cached, report)
    return result


def time_epochs(conventional: ConventionalRunner, kdzoo: KdzooRunner, cached: bool,
                report: Callable[[str], None]) -> dict[str, Any]:
    """One whole epoch (data pipeline + steps) and a test-set evaluation per side."""
    import time

    if cached:  # the epoch's views must be in the cache: fill them first (not timed)
        kdzoo.prefill_cache(kdzoo.parts.loader.steps_per_epoch)
    start = time.perf_counter()
    conventional.epoch()
    conventional.evaluate()
    conventional_seconds = time.perf_counter() - start
    start = time.perf_counter()
    kdzoo.epoch()
    kdzoo_seconds = time.perf_counter() - start
    result = {"conventional_seconds": conventional_seconds, "kdzoo_seconds": kdzoo_seconds,
              "ratio": conventional_seconds / kdzoo_seconds}
    report(f"    whole epoch + evaluation: conventional {conventional_seconds:.1f}s, kdzoo "
           f"{kdzoo_seconds:.1f}s, ratio {result['ratio']:.2f}x")
    return result


def format_case(case: str, result: dict[str, Any]) -> str:
    conv, kd = result["conventional"], result["kdzoo"]
    line = (f"[{case}] conventional {conv['images_per_second_median']:.1f} img/s, kdzoo "
            f"{kd['images_per_second_median']:.1f} img/s (median step; best "
            f"{conv['images_per_second_best']:.1f} vs {kd['images_per_second_best']:.1f}): "
            f"{result['ratio_median']:.2f}x (best {result['ratio_best']:.2f}x); kdzoo "
            f"{result['kdzoo_gflops']:.0f} GFLOP/s")
    if "kdzoo_percent_of_peak" in result:
        line += f" = {result['kdzoo_percent_of_peak']:.0f}% of the matmul peak"
    return line
