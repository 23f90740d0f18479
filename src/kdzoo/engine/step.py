"""The step module: everything that trains, computed in one module call.

The trainable networks of a run (the student and any trained peers) and the method's trainable
parts (connectors, embeddings, memory banks) live in one ``nn.Module`` whose ``forward`` runs
them for a batch and returns the named loss terms. This is the call that DistributedDataParallel
wraps (DDP all-reduces the gradients of what flows through its own forward only), that hooks see
and that ``kdzoo bench`` times. Frozen teachers are not part of it: they run before, without
autograd, and their features come in as an argument. A method that needs a role's features on
other inputs (MLKD's strong view, BSS's adversarial samples) asks ``Step.run``, which this module
answers with the same forwards (so DDP and ``torch.compile`` see those passes too) or, for a
frozen role, with its inference path.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import LossConfig
from ..core import Role, Stage, Step
from ..functional import soft_target
from ..data.loader import Batch
from ..methods import Method
from ..models.features import FeatureNet, Features, RawFeatures


class StepModule(nn.Module):
    """The trainable roles' networks and the method, run together for one batch."""

    def __init__(self, method: Method, networks: dict[str, FeatureNet], compile: bool = False,
                 seed: int = 0, loss: LossConfig | None = None) -> None:
        super().__init__()
        self.method = method
        self.loss = loss or LossConfig()
        self.roles: tuple[Role, ...] = type(method).trainable_roles()
        self.trained = nn.ModuleDict({role.name: networks[role.name] for role in self.roles})
        # Frozen networks are handed to the method (to read their parts) but are not
        # submodules: they are not trained, not wrapped by DDP and not in this module's state.
        self._all_networks = dict(networks)
        self.seed = seed
        self.forwards: dict[str, Callable[[Tensor], RawFeatures]] = {}
        for role in self.roles:
            forward = networks[role.name].forward_features
            # Methods that differentiate through input gradients (Sobolev, LwM) need a double
            # backward, which compiled graphs do not support: their networks stay eager.
            if compile and not method.needs_input_grad:
                forward = torch.compile(forward)
            self.forwards[role.name] = forward

    def forward(self, batch: Batch, stage: Stage, epoch: int, step_index: int,
                frozen: dict[str, Features], runners: dict[str, Callable[[Tensor], Features]]
                | None = None) -> tuple[dict[str, Tensor], Tensor | None]:
        """The named loss terms of one batch (a cross-entropy term per trainable role that ran,
        then the method's terms) and the student's logits (None when it did not run).
        ``frozen`` holds the frozen roles' features of the batch, ``runners`` their inference
        paths (for other inputs the method makes, through ``Step.run``)."""
        features = dict(frozen)
        terms: dict[str, Tensor] = {}
        if stage.uses_student:
            for role in self.roles:
                features[role.name] = found = Features.from_raw(
                    self.forwards[role.name](batch.images))
                # Kept even when ce_weight is 0 (unless the stage says otherwise): the
                # classifier then gets zero (not missing) gradients, so weight decay still
                # applies, as in the reference zoo's init stages.
                if stage.ce_weight != 0 or stage.keep_zero_ce:
                    terms[f"{role.prefix}ce"] = stage.ce_weight * self.loss.ce * \
                        F.cross_entropy(found.logits, batch.labels)
        if stage.method_weight != 0:
            step = Step(batch, stage, epoch, step_index, self.seed, self._all_networks,
                        partial(self.run, runners or {}))
            found_terms = self.method(features, step)
            if self.loss.kd and "student" in features:  # RepDistiller's alpha x loss_div
                found_terms = {"hinton_kd": self.loss.kd * soft_target(
                    features["student"].logits, features["teacher"].logits,
                    self.loss.kd_temperature), **found_terms}
            for name, value in found_terms.items():
                terms[name] = stage.method_weight * value
        student = features.get("student") if stage.uses_student else None
        return terms, None if student is None else student.logits

    def run(self, runners: dict[str, Callable[[Tensor], Features]], role: str, images: Tensor,
            input_grad: bool) -> Features:
        """``Step.run``: ``role``'s features on ``images``. A trainable role's forward of this
        module (compiled when the run compiles, with autograd); a frozen role's inference path
        (``runners``, no autograd), or with ``input_grad`` its network with autograd, so
        gradients flow to ``images`` (BSS's attack)."""
        if role in self.forwards:
            return Features.from_raw(self.forwards[role](images))
        if input_grad or role not in runners:
            return self._all_networks[role].features(images)
        return runners[role](images)
