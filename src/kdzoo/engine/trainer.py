"""The one training loop.

Per batch: the frozen teachers run once, without autograd, for the features the method asked
for; then one call of the step module (:mod:`kdzoo.engine.step`) runs the trainable roles (the
student, any trained peers) and the method, and returns the named terms (a cross-entropy per
trainable role plus the method's); the loop backpropagates their sum and steps the optimisers
of the trainable roles. Losses and accuracies are accumulated on the device and read once per
epoch (and at progress-bar updates), so the loop does not wait on the host every step.

Multi-stage methods declare their stages (:meth:`Method.stages`); this loop runs them in order,
each with its own schedule, loss multipliers and (possibly shared) optimiser. After every epoch
the complete state is checkpointed atomically, so ``--resume`` continues exactly where the run
stopped.

Under torchrun (:mod:`kdzoo.distributed`) each process trains on its slice of every global
batch through the DDP-wrapped step module; epoch sums and accuracies are all-reduced, rank 0
evaluates and every rank receives its result, and only rank 0's recorder writes.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from tqdm import tqdm

from .. import distributed
from ..data.loader import Batch
from ..core import Stage
from ..models import Features
from .build import Components
from ..metrics import accuracy_of_logits, evaluate, topk_correct
from .guard import NonFiniteError, NonFiniteGuard
from .dot import DistillationOrientedSGD, is_task_term
from .records import check_finite, epoch_line, epoch_record, upgrade_record
from ..models.features import count_parameters
from .rundir import RunDir
from .state import RUN_FORMAT, check_same_run, read_run_state
from .summary import RunFacts, make_summary

log = logging.getLogger("kdzoo")


#: Called with each epoch's record once it is checkpointed and written (``kdzoo tune`` reports
#: the validation accuracy to its trial there, and stops a pruned trial by raising).
EpochHook = Callable[[dict[str, Any]], None]


def total_loss(terms: Iterable[Tensor]) -> Tensor:
    """The sum of the loss terms in float32 or wider (bf16/fp16 terms under autocast are summed
    in float32; float64 runs stay float64)."""
    return torch.stack([t if t.dtype == torch.float64 else t.float() for t in terms]).sum()


@dataclass
class EpochSetup:
    """What every step of one epoch uses: the optimisers, their parameters, the guard."""

    optimizers: list[torch.optim.Optimizer]
    params: list[torch.nn.Parameter]
    guard: NonFiniteGuard


class Trainer:
    """Runs the stages of one distillation run and writes its folder."""

    def __init__(self, parts: Components, run: RunDir, progress: bool | None = None,
                 on_epoch: EpochHook | None = None) -> None:
        self.parts = parts
        self.on_epoch = on_epoch
        self.run = run
        self.dist = parts.dist
        self.progress = (sys.stderr.isatty() if progress is None else progress) and \
            self.dist.is_main
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.saved_optimizer_states: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.stage_index = 0      # stage in progress
        self.stage_epoch = 0      # epochs of that stage already done
        self.global_epoch = 0     # epochs done over all stages
        self.teacher_eval: dict[str, float] | None = None
        self.wall_before = 0.0    # seconds spent before a resume
        config = parts.config
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp or "")
        self.autocast = torch.autocast(parts.device.type, dtype=amp_dtype,
                                       enabled=amp_dtype is not None)
        # float16 gradients underflow without loss scaling; bfloat16 needs none.
        self.scaler = torch.amp.GradScaler(parts.device.type) if config.amp == "fp16" else None

    # ----------------------------------------------------------------------------- optimisers
    def _parameters(self, stage: Stage) -> list[torch.nn.Parameter]:
        method_params = list(self.parts.method.trainable_parameters())
        if stage.trainable == "method":
            return method_params
        return list(self.parts.student.parameters()) + method_params

    def _make_optimizer(self, name: str, params: list[torch.nn.Parameter],
                        overrides: dict[str, Any]) -> torch.optim.Optimizer:
        if name not in self.optimizers:
            optim = self.parts.config.optim
            if optim.dot_delta is not None and not overrides:  # not a method's own optimiser
                opt: torch.optim.Optimizer = DistillationOrientedSGD(
                    params, lr=optim.lr, momentum=optim.momentum - optim.dot_delta,
                    momentum_kd=optim.momentum + optim.dot_delta,
                    weight_decay=optim.weight_decay)
            else:
                settings = {"lr": optim.lr, "momentum": optim.momentum,
                            "weight_decay": optim.weight_decay, "nesterov": optim.nesterov,
                            **overrides}
                opt = torch.optim.SGD(params, **settings)
            if name in self.saved_optimizer_states:
                opt.load_state_dict(self.saved_optimizer_states.pop(name))
            self.optimizers[name] = opt
        return self.optimizers[name]

    def stage_optimizers(self, stage: Stage) -> list[torch.optim.Optimizer]:
        """The stage's optimiser (stages naming the same one share it, momentum included) and
        one per trained peer, named after its role, with the same settings: the optimisers of
        the trainable roles, stepped together (as DML steps its two networks)."""
        optimizers = [self._make_optimizer(stage.optimizer, self._parameters(stage),
                                           stage.optimizer_settings)]
        if stage.trainable != "method":
            for role in self.parts.method.trainable_roles():
                if role.name != "student":
                    params = list(self.parts.networks[role.name].parameters())
                    optimizers.append(self._make_optimizer(role.name, params,
                                                           stage.optimizer_settings))
        return optimizers

    # -------------------------------------------------------------------------------- forward
    def frozen_features(self, batch: Batch) -> dict[str, Features]:
        """The frozen roles' features for a batch: from the teacher cache, with autograd (when
        the method differentiates through the teacher) or through the fast inference path."""
        parts, method = self.parts, self.parts.method
        found: dict[str, Features] = {}
        for role in method.frozen_roles():
            cache = parts.teacher_cache if role.name == "teacher" else None
            runner = parts.teacher_runners[role.name]
            if cache is not None:
                assert batch.offsets is not None
                views = cache.views.index(batch.offsets, batch.flips)
                found[role.name] = Features(logits=cache.logits_for(
                    batch.indices, views, batch.images, lambda x: runner(x).logits))
            elif method.needs_input_grad:  # gradients w.r.t. the input flow through it
                found[role.name] = parts.networks[role.name].features(batch.images)
            else:
                found[role.name] = runner(batch.images)
        return found

    def step_terms(self, batch: Batch, stage: Stage, epoch: int,
                   step_index: int) -> tuple[dict[str, Tensor], Tensor | None]:
        """The named loss terms of one batch, and the student's logits (None if not run)."""
        if self.parts.method.needs_input_grad:
            batch.images.requires_grad_(True)
        frozen = self.frozen_features(batch) if stage.method_weight != 0 else {}
        step = self.parts.train_step
        assert step is not None
        return step(batch, stage, epoch, step_index, frozen, self.parts.teacher_runners)

    def begin_epoch(self, stage: Stage, lr: float) -> "EpochSetup":
        """Set the learning rate and the train/eval modes for an epoch of ``stage``."""
        parts = self.parts
        optimizers = self.stage_optimizers(stage)
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        parts.step.train()
        parts.student.train(stage.uses_student)
        params = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
        return EpochSetup(optimizers, params,
                          NonFiniteGuard(parts.config.nonfinite, parts.loader.device))

    def train_step(self, setup: "EpochSetup", batch: Batch, stage: Stage, epoch: int,
                   step_index: int) -> tuple[Tensor, dict[str, Tensor], Tensor | None] | None:
        """One optimisation step; returns (loss, terms, student logits), or None when the
        non-finite guard skipped the batch."""
        scaler = self.scaler
        with self.autocast:
            terms, logits = self.step_terms(batch, stage, epoch, step_index)
            loss = total_loss(terms.values())
        if all(isinstance(o, DistillationOrientedSGD) for o in setup.optimizers):
            return self._dot_step(setup, terms, loss, logits, step_index)
        for optimizer in setup.optimizers:
            optimizer.zero_grad(set_to_none=True)
        # Under DDP, a rank's share of an unevenly split batch weighs by its size.
        scaled = loss * batch.loss_scale if batch.loss_scale != 1.0 else loss
        (scaler.scale(scaled) if scaler else scaled).backward()
        # With loss scaling, infinite gradients are expected now and then: the scaler skips
        # those steps itself, so only the loss terms are checked.
        if not setup.guard.check(self.global_epoch + 1, step_index, terms,
                                 [] if scaler else setup.params):
            return None
        for optimizer in setup.optimizers:
            scaler.step(optimizer) if scaler else optimizer.step()
        if scaler:
            scaler.update()
        return loss, terms, logits

    def _dot_step(self, setup: "EpochSetup", terms: dict[str, Tensor], loss: Tensor,
                  logits: Tensor | None, step_index: int
                  ) -> tuple[Tensor, dict[str, Tensor], Tensor | None] | None:
        """DOT's step (:mod:`kdzoo.engine.dot`): the distillation gradients first, kept by
        ``step_kd``, then the task (cross-entropy) gradients, both applied by ``step``."""
        groups = {True: {}, False: {}}  # type: dict[bool, dict[str, Tensor]]
        for name, value in terms.items():
            groups[is_task_term(name)][name] = value
        for task in (False, True):
            for optimizer in setup.optimizers:
                optimizer.zero_grad(set_to_none=True)
            if groups[task]:
                total_loss(groups[task].values()).backward(
                    retain_graph=not task)
            if not setup.guard.check(self.global_epoch + 1, step_index, groups[task] or terms,
                                     setup.params):
                return None
            if not task:
                for optimizer in setup.optimizers:
                    optimizer.step_kd()  # type: ignore[attr-defined]
        for optimizer in setup.optimizers:
            optimizer.step()
        return loss, terms, logits

    def train_epoch(self, stage: Stage, epoch: int, lr: float) -> dict[str, Any]:
        """One epoch of ``stage``: ``{"terms": {"loss": ..., <term>: ...}, "train": {"top1",
        "top5", "images_per_second"[, "skipped_batches"]}, "time": {"train_seconds"}}``, the
        terms and accuracies averaged over the epoch's images."""
        parts = self.parts
        loader = parts.loader
        setup = self.begin_epoch(stage, lr)
        sums: dict[str, Tensor] = {}
        correct = torch.zeros(2, dtype=torch.long, device=loader.device)
        seen = 0
        start = time.perf_counter()
        batches = loader.train_batches(parts.config.seed, self.global_epoch + 1,
                                       views=parts.method.views, rank=self.dist.rank,
                                       world=self.dist.world)
        bar = tqdm(batches, total=loader.steps_per_epoch, disable=not self.progress, leave=False,
                   desc=f"epoch {self.global_epoch + 1} [{stage.name}]", file=sys.stderr)
        for step_index, batch in enumerate(bar):
            result = self.train_step(setup, batch, stage, epoch, step_index)
            if result is None:
                continue  # a skipped batch: no update, not counted in the epoch's means
            loss, terms, logits = result
            size = len(batch)
            seen += size
            for name, value in (("loss", loss), *terms.items()):
                detached = value.detach() * size
                sums[name] = sums[name] + detached if name in sums else detached
            if logits is not None:
                correct += torch.stack(topk_correct(logits.detach(), batch.labels))
            if step_index % parts.config.log_interval == 0:
                setup.guard.flush(self.global_epoch + 1)
                if self.progress:
                    bar.set_postfix(loss=f"{loss.item():.4f}")
        setup.guard.flush(self.global_epoch + 1)
        if parts.teacher_cache is not None:
            parts.teacher_cache.flush()
        if self.dist.active:  # every rank's images: sums, correct counts and image counts
            names = list(sums)
            packed = torch.cat([torch.stack([sums[n].double() for n in names]) if names else
                                torch.zeros(0, dtype=torch.float64, device=loader.device),
                                correct.double(), torch.tensor([float(seen)],
                                                               dtype=torch.float64,
                                                               device=loader.device)])
            packed = distributed.all_reduce_sum(packed)
            sums = dict(zip(names, packed[: len(names)]))
            correct = packed[len(names): len(names) + 2].round().long()
            seen = int(packed[-1].item())
        seconds = time.perf_counter() - start
        if seen == 0:
            raise NonFiniteError(f"every batch of epoch {self.global_epoch + 1} had a NaN or "
                                 "infinite loss or gradient and was skipped; lower the learning "
                                 "rate or the method's weight")
        train: dict[str, Any] = {}
        if stage.uses_student:
            top1, top5 = (100.0 * correct.double() / seen).tolist()
            train.update(top1=top1, top5=top5)
        train["images_per_second"] = seen / seconds
        if parts.config.nonfinite == "skip":
            train["skipped_batches"] = setup.guard.skipped
        return {"terms": {name: value.item() / seen for name, value in sums.items()},
                "train": train, "time": {"train_seconds": seconds}}

    def check_teacher(self) -> dict[str, float]:
        """The frozen teacher's accuracy on the test split (from the cache when it holds the
        test logits), or on the validation split when the run never reads the test split
        (``evaluate_test=False``); under DDP computed by rank 0 and given to every rank."""
        if not self.dist.is_main:
            return distributed.broadcast_object(None)
        return distributed.broadcast_object(self._check_teacher())

    def _check_teacher(self) -> dict[str, float]:
        parts = self.parts
        runner = parts.teacher_runner  # the fast path computes the same logits, sooner
        assert runner is not None
        if not parts.config.evaluate_test:
            logits = torch.cat([runner(b.images).logits
                                for b in parts.loader.test_batches("val")])
            labels = parts.loader.data.val_labels
            return accuracy_of_logits(logits.to(labels.device).float(), labels)
        labels = parts.loader.data.test_labels
        cache = parts.teacher_cache
        logits = cache.test_logits() if cache is not None else None
        if logits is None:
            logits = torch.cat([runner(b.images).logits for b in parts.loader.test_batches()])
            if cache is not None:
                cache.store_test_logits(logits)
        return accuracy_of_logits(logits.to(labels.device).float(), labels)

    def evaluate_epoch(self) -> dict[str, Any]:
        """Top-1/top-5 and loss of every trainable role on the test split and, when the run
        has one, the validation split: ``{"test": {...}, "val": {...}, "peers": {role:
        {"test": {...}, "val": {...}}}, "time": {"eval_seconds"}}`` (the student's at the top).
        Under DDP rank 0 evaluates (its networks are every rank's, its BatchNorm statistics
        are those DDP gives every rank) and every rank receives the same record."""
        if not self.dist.is_main:
            return distributed.broadcast_object(None)
        return distributed.broadcast_object(self._evaluate_epoch())

    def _evaluate_epoch(self) -> dict[str, Any]:
        parts = self.parts
        start = time.perf_counter()
        splits = (["test"] if parts.config.evaluate_test else []) + \
            (["val"] if parts.data.val_labels is not None else [])
        record: dict[str, Any] = {}
        for role in parts.method.trainable_roles():
            network = parts.method.deployed(role.name, parts.networks[role.name])
            scores = {split: evaluate(network, parts.loader, split) for split in splits}
            if role.name == "student":
                record.update(scores)
            else:
                record.setdefault("peers", {})[role.name] = scores
        record["time"] = {"eval_seconds": time.perf_counter() - start}
        return record

    # ---------------------------------------------------------------------------- the state
    def state_dict(self, wall_seconds: float = 0.0) -> dict[str, Any]:
        """Everything that decides what happens next: the spec, the trainable networks, the
        method (connectors, memory banks), the optimisers (momentum), where the run is (stage,
        epoch), torch's RNG states, the metrics history and the wall time so far."""
        parts = self.parts
        optimizers = dict(self.saved_optimizer_states)
        optimizers.update({name: opt.state_dict() for name, opt in self.optimizers.items()})
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "kdzoo_format": RUN_FORMAT,
            "config": parts.config.to_dict(),
            "stage_index": self.stage_index,
            "stage_epoch": self.stage_epoch,
            "global_epoch": self.global_epoch,
            "networks": {role.name: parts.networks[role.name].state_dict()
                         for role in parts.method.trainable_roles()},
            "method": parts.method.state_dict(),
            "optimizers": optimizers,
            "rng": rng,
            "history": self.history,
            "wall_seconds": wall_seconds,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (a :meth:`state_dict`): the optimisers' states are applied
        when each optimiser is made, the stages already finished are finished again (e.g. a
        frozen paraphraser stays frozen)."""
        parts = self.parts
        networks = state.get("networks")
        if networks is None:  # written by kdzoo 0.1: the student, and DML's peer under "peer"
            networks = {"student": state["student"]}
            if state.get("peer") is not None:
                networks["peer"] = state["peer"]
        for name, weights in networks.items():
            parts.networks[name].load_state_dict(weights)
        parts.method.load_state_dict(state["method"])
        self.saved_optimizer_states = dict(state["optimizers"])
        self.stage_index = state["stage_index"]
        self.stage_epoch = state["stage_epoch"]
        self.global_epoch = state["global_epoch"]
        self.history = [upgrade_record(r) for r in state["history"]]
        self.wall_before = float(state["wall_seconds"])
        if state.get("scaler") is not None and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        for stage in parts.stages[: self.stage_index]:
            parts.method.end_stage(stage)

    def facts(self) -> RunFacts:
        """What the summary says beyond the spec and the metrics."""
        parts = self.parts
        peers = {role.name: getattr(parts.config, role.source).name
                 for role in parts.method.trainable_roles() if role.name != "student"}
        return RunFacts(
            teacher=parts.teacher.model_name if parts.teacher is not None else None,
            teacher_eval=self.teacher_eval, teacher_untrained="teacher" in parts.calibrated,
            peers=peers,
            student_parameters=count_parameters(parts.method.deployed("student",
                                                                      parts.student)),
            method_parameters=count_parameters(parts.method), device=str(parts.device),
            world_size=self.dist.world)

    # ----------------------------------------------------------------------------- the run
    def resume(self) -> bool:
        """Restore the run from its folder's checkpoint (False when it stopped before its first
        one: it starts from the beginning); the metrics file is cut back to the checkpoint."""
        state = read_run_state(self.run.path)
        if state is None:
            return False
        check_same_run(self.run.path, state["config"], self.parts.config)
        self.load_state_dict(state)
        self.run.write_metrics(self.history)  # drop lines written after the checkpoint
        return True

    def fit(self, resume: bool = False) -> dict[str, Any]:
        parts = self.parts
        started = time.perf_counter()
        if resume and self.resume():
            log.info("resuming %s after epoch %d", self.run.path, self.global_epoch)
        # the spec as it runs now (a resumed run may have moved its data or device)
        self.run.write_config(parts.config.to_yaml())
        for role, batches in parts.calibrated.items():
            log.info("%s %s is untrained: its BatchNorm statistics were calibrated on %d training "
                     "batches", role, parts.networks[role].model_name, batches)
        if parts.teacher is not None:
            self.teacher_eval = self.check_teacher()
            log.info("teacher %s: %s top-1 %.2f%%, top-5 %.2f%% (checked before distilling)",
                     parts.teacher.model_name, "test" if parts.config.evaluate_test else "val",
                     self.teacher_eval["top1"], self.teacher_eval["top5"])
        facts = self.facts()
        total_epochs = sum(s.epochs for s in parts.stages)
        for index in range(self.stage_index, len(parts.stages)):
            stage = parts.stages[index]
            schedule = stage.schedule or parts.schedule
            for epoch in range(self.stage_epoch + 1, stage.epochs + 1):
                lr = schedule.lr(epoch)
                record = epoch_record(self.global_epoch + 1, stage.name, epoch, lr,
                                      self.train_epoch(stage, epoch, lr),
                                      self.evaluate_epoch() if stage.evaluate else None)
                check_finite(record)
                self.global_epoch += 1
                self.stage_epoch = epoch
                if epoch == stage.epochs:
                    parts.method.end_stage(stage)
                    self.stage_index, self.stage_epoch = index + 1, 0
                self.history.append(record)
                wall = self.wall_before + time.perf_counter() - started
                if self.dist.is_main:
                    self.run.save_checkpoint(self.state_dict(wall))
                self.run.record_epoch(record)
                self.run.write_summary(make_summary(parts.config, self.history, facts, wall,
                                                    finished=False))
                log.info(epoch_line(record, total_epochs))
                if self.on_epoch is not None:
                    self.on_epoch(record)
        wall = self.wall_before + time.perf_counter() - started
        for role in parts.method.trainable_roles():
            self.run.export(role.name, parts.method.deployed(role.name, parts.networks[role.name]),
                            method=parts.config.method.name)
        summary = make_summary(parts.config, self.history, facts, wall, finished=True)
        self.run.write_summary(summary)
        distributed.barrier()  # no rank leaves before rank 0 has written the run's files
        return summary
