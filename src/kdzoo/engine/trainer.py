"""The one training loop.

Per batch: the frozen teacher runs once, without autograd, for the feature points the method
asked for; the student runs once; the loop adds the cross-entropy to the method's named terms,
backpropagates their sum and steps the optimiser over the student's and the method's trainable
parameters. Losses and accuracies are accumulated on the device and read once per epoch (and at
progress-bar updates), so the loop does not wait on the host every step.

Multi-stage methods declare their stages (:meth:`Method.stages`); this loop runs them in order,
each with its own schedule, loss multipliers and (possibly shared) optimiser. After every epoch
the complete state is checkpointed atomically, so ``--resume`` continues exactly where the run
stopped.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ..errors import KdzooError
from ..io import atomic_torch_save
from ..methods import Stage, Step
from ..models import export_model
from .build import Components
from .evaluate import evaluate, topk_correct
from .rundir import CHECKPOINT, STUDENT, RunDir
from .state import load_run_state, run_state
from .summary import make_summary

log = logging.getLogger("kdzoo")


class Trainer:
    """Runs the stages of one distillation run and writes its folder."""

    def __init__(self, parts: Components, run: RunDir, progress: bool | None = None) -> None:
        self.parts = parts
        self.run = run
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.saved_optimizer_states: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.stage_index = 0      # stage in progress
        self.stage_epoch = 0      # epochs of that stage already done
        self.global_epoch = 0     # epochs done over all stages
        self.teacher_eval: dict[str, float] | None = None
        self.wall_before = 0.0    # seconds spent before a resume

    # ----------------------------------------------------------------------------- optimisers
    def _parameters(self, stage: Stage) -> list[torch.nn.Parameter]:
        method_params = list(self.parts.method.trainable_parameters())
        if stage.trainable == "method":
            return method_params
        return list(self.parts.student.parameters()) + method_params

    def optimizer(self, stage: Stage) -> torch.optim.Optimizer:
        """The stage's optimiser; stages naming the same one share it (momentum included)."""
        if stage.optimizer not in self.optimizers:
            optim = self.parts.config.optim
            settings = {"lr": optim.lr, "momentum": optim.momentum,
                        "weight_decay": optim.weight_decay, "nesterov": optim.nesterov,
                        **stage.optimizer_settings}
            opt = torch.optim.SGD(self._parameters(stage), **settings)
            if stage.optimizer in self.saved_optimizer_states:
                opt.load_state_dict(self.saved_optimizer_states.pop(stage.optimizer))
            self.optimizers[stage.optimizer] = opt
        return self.optimizers[stage.optimizer]

    # -------------------------------------------------------------------------------- forward
    def teacher_features(self, images: Tensor) -> dict[str, Tensor] | None:
        teacher, method = self.parts.teacher, self.parts.method
        if teacher is None:
            return None
        points = method.required_teacher_points()
        if method.needs_input_grad:  # gradients w.r.t. the input flow through the frozen teacher
            return teacher.forward_features(images, points)
        with torch.no_grad():
            return teacher.forward_features(images, points)

    def train_epoch(self, stage: Stage, epoch: int, lr: float) -> dict[str, float]:
        parts = self.parts
        student, method, loader = parts.student, parts.method, parts.loader
        optimizer = self.optimizer(stage)
        for group in optimizer.param_groups:
            group["lr"] = lr
        student.train()
        method.train()
        device = loader.device
        sums: dict[str, Tensor] = {}
        correct = torch.zeros(2, dtype=torch.long, device=device)
        seen = 0
        start = time.perf_counter()
        batches = loader.train_batches(parts.config.seed, self.global_epoch + 1)
        bar = tqdm(batches, total=loader.steps_per_epoch, disable=not self.progress, leave=False,
                   desc=f"epoch {self.global_epoch + 1} [{stage.name}]", file=sys.stderr)
        for step_index, batch in enumerate(bar):
            images = batch.images
            if method.needs_input_grad:
                images = images.requires_grad_(True)
            use_method = stage.method_weight != 0
            teacher_feats = self.teacher_features(images) if use_method else None
            student_feats = student.forward_features(images)
            logits = student_feats["logits"]
            terms = {"ce": stage.ce_weight * F.cross_entropy(logits, batch.labels)}
            if use_method:
                step = Step(batch, stage, epoch, step_index, student, parts.teacher,
                            parts.config.seed)
                for name, value in method(student_feats, teacher_feats, step).items():
                    terms[name] = stage.method_weight * value
            loss = torch.stack(list(terms.values())).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            size = len(batch)
            seen += size
            for name, value in (("loss", loss), *terms.items()):
                detached = value.detach() * size
                sums[name] = sums[name] + detached if name in sums else detached
            correct += torch.stack(topk_correct(logits.detach(), batch.labels))
            if self.progress and step_index % parts.config.log_interval == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        seconds = time.perf_counter() - start
        stats = {name: value.item() / seen for name, value in sums.items()}
        top1, top5 = (100.0 * correct.double() / seen).tolist()
        stats.update(train_top1=top1, train_top5=top5, train_seconds=seconds,
                     images_per_second=seen / seconds)
        return stats

    # ----------------------------------------------------------------------------- the run
    def fit(self, resume: bool = False) -> dict[str, Any]:
        parts = self.parts
        started = time.perf_counter()
        if resume:
            load_run_state(self)
            log.info("resuming %s after epoch %d", self.run.path, self.global_epoch)
        else:
            self.run.write_config(parts.config.to_yaml())
        if parts.teacher is not None:
            self.teacher_eval = evaluate(parts.teacher, parts.loader)
            log.info("teacher %s: test top-1 %.2f%%, top-5 %.2f%% (checked before distilling)",
                     parts.teacher.model_name, self.teacher_eval["top1"],
                     self.teacher_eval["top5"])
        total_epochs = sum(s.epochs for s in parts.stages)
        for index in range(self.stage_index, len(parts.stages)):
            stage = parts.stages[index]
            schedule = stage.schedule or parts.schedule
            for epoch in range(self.stage_epoch + 1, stage.epochs + 1):
                lr = schedule.lr(epoch)
                record: dict[str, Any] = {"epoch": self.global_epoch + 1, "stage": stage.name,
                                          "stage_epoch": epoch, "lr": lr}
                record.update(self.train_epoch(stage, epoch, lr))
                if stage.evaluate:
                    eval_start = time.perf_counter()
                    result = evaluate(parts.student, parts.loader)
                    record.update(test_top1=result["top1"], test_top5=result["top5"],
                                  test_loss=result["loss"],
                                  eval_seconds=time.perf_counter() - eval_start)
                record["epoch_seconds"] = record["train_seconds"] + record.get("eval_seconds", 0)
                self._check_finite(record)
                self.global_epoch += 1
                self.stage_epoch = epoch
                if epoch == stage.epochs:
                    parts.method.end_stage(stage)
                    self.stage_index, self.stage_epoch = index + 1, 0
                self.history.append(record)
                wall = self.wall_before + time.perf_counter() - started
                self.save(wall)
                self.run.append_metrics(record)
                self.run.write_summary(make_summary(self, wall, finished=False))
                log.info(_epoch_line(record, total_epochs))
        wall = self.wall_before + time.perf_counter() - started
        export_model(parts.student, self.run / STUDENT, method=parts.config.method.name)
        summary = make_summary(self, wall, finished=True)
        self.run.write_summary(summary)
        return summary

    def save(self, wall_seconds: float) -> None:
        atomic_torch_save(run_state(self, wall_seconds), self.run / CHECKPOINT)

    def _check_finite(self, record: dict[str, Any]) -> None:
        bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise KdzooError(
                f"non-finite loss in epoch {record['epoch']} ({', '.join(bad)}); the last good "
                "checkpoint is kept: lower the learning rate or the method's weight and rerun"
            )


def _epoch_line(record: dict[str, Any], total_epochs: int) -> str:
    skip = {"epoch", "stage", "stage_epoch", "lr", "loss", "train_top1", "train_top5",
            "train_seconds", "images_per_second", "test_top1", "test_top5", "test_loss",
            "eval_seconds", "epoch_seconds"}
    terms = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in skip)
    test = (f" | test top-1 {record['test_top1']:.2f}% top-5 {record['test_top5']:.2f}%"
            if "test_top1" in record else "")
    return (f"epoch {record['epoch']}/{total_epochs} [{record['stage']}] lr {record['lr']:.4g} | "
            f"loss {record['loss']:.4f} ({terms}) | train top-1 {record['train_top1']:.2f}%{test}"
            f" | {record['epoch_seconds']:.1f}s, {record['images_per_second']:.0f} img/s")

