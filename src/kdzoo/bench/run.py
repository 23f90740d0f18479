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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..spec import resolve_config
from ..data.cifar import write_cifar_folder
from ..data.loader import Batch, batch_bounds
from ..engine.build import build
from ..engine.rundir import NullRecorder
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
    compile: bool = False           # also time kdzoo with --compile
    amp: str | None = None          # also time kdzoo with --amp AMP
    epoch: bool = False             # also time one whole epoch + evaluation per side
    threads: int | None = None
    workdir: str | None = None      # where data and caches go (default: a temporary folder)
    seed: int = 0


class KdzooRunner:
    """kdzoo's real training step (the loop's own ``train_step``) on a CIFAR-format folder."""

    def __init__(self, method: str, data_root: Path, options: BenchOptions, batch_size: int,
                 teacher_cache: bool, cache_dir: Path, teacher_file: Path,
                 compile: bool = False, amp: str | None = None) -> None:
        overrides: dict[str, Any] = {
            "method": {"name": method},
            "student": {"name": options.student},
            "data": {"name": "cifar10", "data_dir": str(data_root)},
            "optim": {"epochs": 1, "batch_size": batch_size, "lr": 0.05},
            "device": options.device, "compile": compile, "amp": amp, "seed": options.seed,
            "teacher_cache": teacher_cache, "cache_dir": str(cache_dir),
        }
        if method != "baseline":
            overrides["teacher"] = {"name": options.teacher, "checkpoint": str(teacher_file)}
        self.config = resolve_config(overrides=overrides)
        self.parts = build(self.config)
        self.trainer = Trainer(self.parts, NullRecorder(), progress=False)
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
            cache.logits_for(batch.indices, views, batch.images, lambda x: runner(x).logits)
        cache.flush()

    def warm_up_last_batch(self) -> None:
        """Run one step at the epoch's last, shorter batch size: a compiled side compiles for
        that shape here (start-up cost), not inside a timed epoch."""
        bounds = batch_bounds(len(self.parts.data.train_labels), self.config.optim.batch_size)
        size = bounds[-1][1] - bounds[-1][0]
        epoch, step, batch = next(self.batches)
        part = Batch(*(None if v is None else v[:size] for v in (
            batch.images, batch.labels, batch.indices, batch.offsets, batch.flips)))
        self.trainer.train_step(self.setup, part, self.stage, epoch, step)

    def step(self) -> int:
        epoch, step, batch = next(self.batches)
        self.trainer.train_step(self.setup, batch, self.stage, epoch, step)
        return len(batch)

    def epoch(self) -> dict[str, Any]:
        return {**self.trainer.train_epoch(self.stage, 1, 0.05),
                **self.trainer.evaluate_epoch()}


def calibrated_teacher(name: str, data_root: Path, path: Path, batches: int = 4) -> Path:
    """A teacher file whose BatchNorm statistics are measured on the benchmark's images, as a
    trained teacher's are: its outputs then have a realistic scale (an untrained deep ResNet's
    logits explode in eval mode). Its speed is that of any teacher of this architecture."""
    from ..data import BatchLoader, load_dataset
    from ..models import create_model, export_model

    data = load_dataset("cifar10", data_root)
    teacher = create_model(name, num_classes=data.num_classes).train()
    for module in teacher.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calibration batches
    with torch.no_grad():
        for _, batch in zip(range(batches), BatchLoader(data, 128).train_batches(0, 1)):
            teacher(batch.images)
    export_model(teacher.eval(), path)
    return path


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
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
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
        teacher_file = calibrated_teacher(options.teacher, data_root, work / "teacher.pt")
        for case in options.cases:
            results["cases"][case] = run_case(case, data_root, work, teacher_file, options,
                                              peak, report)
    return results


def run_case(case: str, data_root: Path, work: Path, teacher_file: Path,
             options: BenchOptions, peak: float | None,
             report: Callable[[str], None]) -> dict[str, Any]:
    method, conventional_case, cached = CASES[case]
    batch = options.batch_size or (64 if method == "crd" else 128)
    report(f"[{case}] building the sides (batch {batch})")
    conventional = ConventionalRunner(conventional_case, data_root, teacher=options.teacher,
                                      student=options.student, batch_size=batch,
                                      device=options.device, seed=options.seed,
                                      teacher_checkpoint=teacher_file)
    kdzoo_sides = {"kdzoo": KdzooRunner(method, data_root, options, batch, cached,
                                        work / "cache", teacher_file)}
    if options.compile:
        kdzoo_sides["kdzoo --compile"] = KdzooRunner(method, data_root, options, batch, cached,
                                                     work / "cache", teacher_file, compile=True)
    if options.amp:
        kdzoo_sides[f"kdzoo --amp {options.amp}"] = KdzooRunner(
            method, data_root, options, batch, cached, work / "cache", teacher_file,
            amp=options.amp)
    timed_steps = options.warmup + options.rounds * options.steps
    if cached:
        kdzoo_sides["kdzoo"].prefill_cache(timed_steps)
    for runner in kdzoo_sides.values():  # compile (if any) before timing starts
        runner.step()
    steps = {"conventional": conventional.step, **{k: r.step for k, r in kdzoo_sides.items()}}
    times = time_interleaved(steps, rounds=options.rounds, steps_per_round=options.steps,
                             warmup=options.warmup)
    result: dict[str, Any] = {"batch_size": batch, "seconds_per_step": times, "sides": {}}
    any_kdzoo = kdzoo_sides["kdzoo"]
    student_flops = flops_per_image(any_kdzoo.parts.student)
    teacher_flops = 0 if (method == "baseline" or cached) else flops_per_image(
        any_kdzoo.parts.teacher)
    gflop_per_image = (3 * student_flops + teacher_flops) / 1e9
    result["gflop_per_image"] = gflop_per_image
    conventional_best, conventional_median = summarize(times["conventional"]).rate(batch)
    for side, samples in times.items():
        best, median = summarize(samples).rate(batch)
        entry = {"images_per_second_best": best, "images_per_second_median": median,
                 "gflops_median": gflop_per_image * median,
                 "ratio_median": median / conventional_median,
                 "ratio_best": best / conventional_best}
        if peak:
            entry["percent_of_matmul_peak"] = 100 * entry["gflops_median"] / peak
        result["sides"][side] = entry
    report(format_case(case, result))
    if options.epoch:
        result["epoch"] = time_epochs(conventional, kdzoo_sides, cached, report)
    return result


def time_epochs(conventional: ConventionalRunner, kdzoo_sides: dict[str, KdzooRunner],
                cached: bool, report: Callable[[str], None]) -> dict[str, Any]:
    """One whole epoch (data pipeline + steps) and a test-set evaluation per side."""
    if cached:  # the epoch's views must be in the cache: fill them first (not timed)
        runner = kdzoo_sides["kdzoo"]
        runner.prefill_cache(runner.parts.loader.steps_per_epoch)
    for side, runner in kdzoo_sides.items():
        if runner.config.compile:
            runner.warm_up_last_batch()
    start = time.perf_counter()
    conventional.epoch()
    conventional.evaluate()
    seconds = {"conventional": time.perf_counter() - start}
    for side, runner in kdzoo_sides.items():
        start = time.perf_counter()
        runner.epoch()
        seconds[side] = time.perf_counter() - start
    result = {"seconds": seconds,
              "ratios": {k: seconds["conventional"] / v for k, v in seconds.items()}}
    report("    whole epoch + evaluation: " + ", ".join(
        f"{k} {v:.1f}s ({result['ratios'][k]:.2f}x)" for k, v in seconds.items()))
    return result


def format_case(case: str, result: dict[str, Any]) -> str:
    parts = []
    for side, entry in result["sides"].items():
        text = (f"{side} {entry['images_per_second_median']:.1f} img/s "
                f"(best {entry['images_per_second_best']:.1f})")
        if side != "conventional":
            text += (f" = {entry['ratio_median']:.2f}x (best {entry['ratio_best']:.2f}x), "
                     f"{entry['gflops_median']:.0f} GFLOP/s")
        parts.append(text)
    return f"[{case}] " + "; ".join(parts)
