"""Contrastive representation distillation (CRD): NCE against memory banks of embeddings."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed
from .. import functional as KF
from ..errors import ConfigError
from ..models.features import FeatureRequest, Features
from .base import Method, MethodContext, MethodParams, Step
from .registry import register_method

#: ``torch.randint`` bound for uniform integers reduced modulo a pool size: the modulo bias
#: (pool / 2^62) is negligible.
_RANDOM_BOUND = 2**62
#: Bound of the int32 sort keys of the draw without replacement (half the memory and time of
#: int64): a tie at the selection boundary, the only place a tie matters, has probability about
#: pool / 2^31 per row.
_KEY_BOUND = 2**31 - 1
#: RepDistiller's values where they differ from the reference zoo's: ``--nce_t 0.07``
#: (train_student.py) and ``-b 0.8`` (scripts/run_cifar_distill.sh); given only for
#: hyper-parameters the user leaves unset.
REPDISTILLER_DEFAULTS: dict[str, Any] = {"weight": 0.8, "nce_t": 0.07}


class Embed(nn.Module):
    """CRD's embedding head: a linear layer (default init) followed by L2 normalisation."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), p=2, dim=1)


@dataclass(frozen=True)
class CRDParams(MethodParams):
    weight: float = 0.2
    feat_dim: int = 128
    nce_k: int = 16384
    nce_t: float = 0.1
    nce_mom: float = 0.5
    mode: Literal["exact", "relax"] = "exact"
    variant: Literal["reference", "repdistiller"] = "reference"
    variant_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "repdistiller": REPDISTILLER_DEFAULTS}

    def check(self, method: str) -> None:
        if self.nce_k < 1 or self.feat_dim < 1 or self.nce_t <= 0:
            raise ConfigError("crd needs nce_k >= 1, feat_dim >= 1 and nce_t > 0")


@register_method("crd")
class ContrastiveRepresentationDistillation(Method[CRDParams]):
    """Contrastive representation distillation: "Contrastive Representation Distillation", Tian,
    Krishnan & Isola, ICLR 2020.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/crd.py,
    dataset.py, train_crd.py), which follows the authors' RepDistiller: the pooled features of
    student and teacher go through their own ``Embed`` (linear + L2 normalisation, ``feat_dim``
    128); two memory banks ``memory_t`` and ``memory_s`` (one row per training image, U(-stdv,
    stdv) init with stdv = 1/sqrt(feat_dim/3)) hold momentum averages of past embeddings. Each
    sample is scored against 1 positive and ``nce_k`` negatives: the teacher's embedding against
    the student bank and the student's against the teacher bank, exp(<m, e> / nce_t), divided by
    normalisers Z fixed on the first batch (Z = mean score * N_data). Loss = weight * (NCE(student
    scores) + NCE(teacher scores)), Eq. 18 with M = N_data. Afterwards, without gradient, the rows
    of the batch are updated: m <- normalize(nce_mom * m + (1 - nce_mom) * e).

    Sampling as the reference's ``CIFAR*IdxSample``: the positive is the sample's own index
    (``mode="exact"``) or a random index of its class (``"relax"``); the ``nce_k`` negatives are
    drawn uniformly from the other classes' indices without replacement, or with replacement
    when fewer than ``nce_k`` exist (tiny datasets), as ``np.random.choice``. kdzoo draws them on
    the device, vectorised over the batch, from ``step.generator("crd")``, so a resumed run draws
    exactly the same negatives.

    Differences from the reference, none of which change the loss: the scores are computed as
    one (B x N_data) matmul and gathered, instead of gathering B x (1+nce_k) x feat_dim memory
    rows (same dot products, much faster); the normalisers live in buffers (``z_t``, ``z_s``,
    -1 until set), so they survive a checkpoint and resume; batches of one sample work (the
    reference's ``squeeze()`` breaks them); and a bank update replaces the buffer rather than
    writing into it, because the old bank is still needed for the backward pass.

    Defaults: weight 0.2, the reference's CIFAR-10 example value (example_train_script.sh); on
    CIFAR-100 the recipe ``crd-weight-0.8-cifar100`` gives its CIFAR-100 value 0.8 where you set
    none. feat_dim 128, nce_k 16384, nce_t 0.1, nce_mom 0.5, mode "exact".
    Student and teacher may have any widths (each has its own embedding); the banks take
    2 x N_data x feat_dim floats (51 MB for CIFAR) and are saved in checkpoints.

    Under DDP (torchrun) a run does not depend on the number of processes: the positives and
    negatives are drawn for the whole global batch and each rank takes its slice; the
    normalisers are the global batch's mean; every rank updates its banks with the embeddings
    of all ranks (all-gathered), so the banks stay equal everywhere.

    ``variant="repdistiller"``: the authors' RepDistiller settings (HobbitLong/
    RepDistiller@b84f547: ``train_student.py``, ``crd/criterion.py``, ``crd/memory.py``,
    ``dataset/cifar100.py``, ``scripts/run_cifar_distill.sh``). Its code is the one the reference
    zoo follows: the same embedding, banks, initialisation, sampling, normalisers, NCE loss and
    update, feat_dim 128, nce_k 16384, nce_mom 0.5, mode "exact" -- what differs is its default
    temperature ``--nce_t 0.07`` (the reference zoo's 0.1) and its CIFAR-100 beta ``-b 0.8`` (the
    reference zoo's example 0.2), both given when left unset; cross-entropy 1 (``-r 1``), no KD
    (``-a 0``; its "CRD+KD" adds ``-a 1``, kdzoo's ``loss.kd``). RepDistiller's ``Normalize``
    divides by the norm without an eps where ``F.normalize`` takes max(norm, 1e-12): equal for
    every embedding that is not all but zero.
    """

    paper = "Contrastive Representation Distillation, Tian, Krishnan & Isola, ICLR 2020"
    url = "https://arxiv.org/abs/1910.10699"
    needs = FeatureRequest(pool=True)

    memory_t: Tensor
    memory_s: Tensor
    z_t: Tensor
    z_s: Tensor

    def __init__(self, ctx: MethodContext, params: CRDParams) -> None:
        super().__init__(ctx, params)
        p = self.params
        self.nce_k = p.nce_k
        self.nce_t = p.nce_t
        self.nce_mom = p.nce_mom
        self.mode = p.mode
        feat_dim = p.feat_dim
        # Created in the reference's order (embed_s, embed_t, memory_t, memory_s), so the same
        # seed gives the same initial values.
        self.embed_s = Embed(ctx.infos["student"].pool, feat_dim)
        self.embed_t = Embed(ctx.infos["teacher"].pool, feat_dim)
        labels = ctx.train_labels.detach().to("cpu", torch.long).flatten()
        self.num_data = int(labels.numel())
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_t", torch.rand(self.num_data, feat_dim).mul_(2 * stdv)
                             .add_(-stdv))
        self.register_buffer("memory_s", torch.rand(self.num_data, feat_dim).mul_(2 * stdv)
                             .add_(-stdv))
        self.register_buffer("z_t", torch.tensor(-1.0))
        self.register_buffer("z_s", torch.tensor(-1.0))
        self._build_class_index(labels, ctx.num_classes)

    # ------------------------------------------------------------------------------ sampling
    def _build_class_index(self, labels: Tensor, num_classes: int) -> None:
        """Indices sorted by class, with each class's start and count: the other-class pool of a
        class c is the sorted list minus its block [start_c, start_c + count_c). Derived from
        ``ctx.train_labels``, so kept out of the state dict (non-persistent buffers, which still
        follow the method to its device)."""
        counts = torch.bincount(labels, minlength=num_classes)
        present = counts > 0
        pools = self.num_data - counts
        if not bool((pools[present] > 0).all()):
            raise ConfigError("crd needs training images of at least two classes (its "
                              "negatives are images of other classes)")
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("class_sorted", torch.argsort(labels, stable=True),
                             persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        # Which of the two draws the batches can need, decided once here, so the step never
        # has to look at its labels on the host.
        distinct = present & (pools >= self.nce_k)
        self._draw_distinct = bool(distinct.any())
        self._draw_repeated = bool((present & (pools < self.nce_k)).any())
        self._key_width = int(pools[distinct].max()) if self._draw_distinct else 0
        # Balanced datasets: every distinct-draw row has the full key width, so nothing to mask.
        self._ragged_pools = self._draw_distinct and int(pools[distinct].min()) != self._key_width

    def sample_indices(self, indices: Tensor, generator: torch.Generator) -> Tensor:
        """(B, 1 + nce_k) dataset indices: the positive, then the negatives of each sample."""
        device = self.class_sorted.device
        indices = indices.to(device=device, dtype=torch.long)
        labels = self.labels[indices]
        start, count = self.class_start[labels], self.class_count[labels]
        pool = self.num_data - count
        batch = indices.shape[0]
        if self.mode == "exact":
            positive = indices
        else:
            draw = torch.randint(_RANDOM_BOUND, (batch,), generator=generator, device=device)
            positive = self.class_sorted[start + draw % count]
        ranks: Tensor | None = None  # positions in the other-class pool, in [0, pool)
        if self._draw_distinct:
            # A uniform random subset of nce_k distinct positions: the nce_k smallest of iid
            # random keys; positions beyond the row's pool get a key above every random one.
            keys = torch.randint(_KEY_BOUND, (batch, self._key_width), generator=generator,
                                 device=device, dtype=torch.int32)
            if self._ragged_pools:
                outside = torch.arange(self._key_width, device=device) >= pool.unsqueeze(1)
                keys.masked_fill_(outside, _KEY_BOUND)
            ranks = keys.topk(self.nce_k, dim=1, largest=False, sorted=False).indices
        if self._draw_repeated:
            draws = torch.randint(_RANDOM_BOUND, (batch, self.nce_k), generator=generator,
                                  device=device)
            repeated = draws % pool.unsqueeze(1)
            ranks = repeated if ranks is None else torch.where(
                (pool < self.nce_k).unsqueeze(1), repeated, ranks)
        assert ranks is not None
        # Skip the sample's own class block in the class-sorted order.
        ranks = ranks + count.unsqueeze(1) * (ranks >= start.unsqueeze(1))
        return torch.cat([positive.unsqueeze(1), self.class_sorted[ranks]], dim=1)

    # ------------------------------------------------------------------------------- forward
    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        embedded_s = self.embed_s(features["student"].pool)
        embedded_t = self.embed_t(features["teacher"].pool)  # no_grad features; embed_t learns
        batch, device = step.batch, self.memory_s.device
        whole = batch.global_indices if batch.global_indices is not None else batch.indices
        whole = whole.to(device=device, dtype=torch.long)
        start, end = batch.shard
        # Drawn for the global batch (the same draws at any world size), then this rank's rows.
        sample = self.sample_indices(whole, step.generator("crd", device))[start:end]
        # Teacher as anchor against the student bank, and the student against the teacher bank.
        scores_t = KF.contrastive_memory_scores(self.memory_s, embedded_t, sample, self.nce_t)
        scores_s = KF.contrastive_memory_scores(self.memory_t, embedded_s, sample, self.nce_t)
        scores_t = scores_t / self._normalizer("z_t", scores_t, batch.global_size)
        scores_s = scores_s / self._normalizer("z_s", scores_s, batch.global_size)
        if batch.shard_sizes:  # every rank updates its banks with the whole global batch
            embedded_t, embedded_s = (distributed.all_gather_rows(e.detach(), batch.shard_sizes)
                                      for e in (embedded_t, embedded_s))
        self._update_memory(whole, embedded_t, embedded_s)
        loss = KF.contrastive_nce_loss(scores_s, self.num_data) + \
            KF.contrastive_nce_loss(scores_t, self.num_data)
        return {"crd": self.params.weight * loss}

    @torch.no_grad()
    def _normalizer(self, name: str, scores: Tensor, global_size: int) -> Tensor:
        """Z = mean(scores) * N_data, fixed on the first batch (buffer ``name`` is -1 until
        then; the mean is over the global batch under DDP); chosen on the device, without a
        host sync (but for the all-reduce under DDP)."""
        stored: Tensor = getattr(self, name)
        if global_size != scores.shape[0]:
            total = distributed.all_reduce_sum(scores.sum().reshape(1).clone())[0]
            first = (total / (global_size * scores.shape[1]) * self.num_data).to(stored.dtype)
        else:
            first = (scores.mean() * self.num_data).to(stored.dtype)
        z = torch.where(stored > 0, stored, first)
        stored.copy_(z)
        return z.to(scores.dtype)

    @torch.no_grad()
    def _update_memory(self, indices: Tensor, embedded_t: Tensor, embedded_s: Tensor) -> None:
        """m[idx] <- normalize(nce_mom * m[idx] + (1 - nce_mom) * e), as new buffers: the old
        banks are saved by autograd for the backward pass and must stay as they were."""
        for name, embedded in (("memory_t", embedded_t), ("memory_s", embedded_s)):
            memory: Tensor = getattr(self, name)
            rows = memory.index_select(0, indices).mul_(self.nce_mom)
            rows.add_(torch.mul(embedded.to(memory.dtype), 1 - self.nce_mom))
            rows = F.normalize(rows, p=2, dim=1)
            setattr(self, name, memory.index_copy(0, indices, rows))
