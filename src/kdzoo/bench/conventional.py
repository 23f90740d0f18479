"""The conventional distillation loop, as the other zoos run it, for ``kdzoo bench``.

This is a re-implementation (not a copy) of the training step of RepDistiller
(``helper/loops.py::train_vanilla`` / ``train_distill``, ``crd/``, ``distiller_zoo/``,
``dataset/cifar100.py``), which mdistiller and the reference zoo (AberHu's
Knowledge-Distillation-Zoo) follow in every respect that costs time:

* data: a torchvision CIFAR dataset decoded image by image through PIL transforms (the
  reference zoo's reflect-pad, crop, flip, to-tensor, normalise) in a ``DataLoader``;
* models: eager NCHW ``nn.Module``s; the teacher is frozen and runs its *full* forward (every
  feature, as ``model_t(input, is_feat=True)`` does) under ``torch.no_grad()``;
* every step: student forward with all features, the method's loss, ``loss.item()`` and top-1/
  top-5 accuracy (a host sync, as RepDistiller's ``AverageMeter`` updates), backward, SGD step.

Nothing here is tuned: the point is to time what the other zoos do, faithfully, on the same
machine, models, batch and data as kdzoo's fast path. The kdzoo models are used as plain
classifiers; nothing else from kdzoo's training engine (or its own CRD) is imported.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from ..data.cifar import _READERS, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from ..models import create_model

CASES = ("baseline", "st", "at", "crd")

# RepDistiller's command lines (scripts/run_cifar_distill.sh): loss = gamma*CE + alpha*KL + beta*KD.
# The KL term is computed in every distillation case, even with alpha 0, as train_distill does.
_WEIGHTS = {"st": (0.1, 0.9, 0.0), "at": (1.0, 0.0, 1000.0), "crd": (1.0, 0.0, 0.8)}
KD_TEMPERATURE = 4.0
NCE_K, NCE_T, NCE_MOMENTUM, FEAT_DIM = 16384, 0.07, 0.5, 128  # RepDistiller's CRD defaults
_EPS = 1e-7  # crd/criterion.py's eps


def train_transform(mean: tuple[float, ...], std: tuple[float, ...]) -> transforms.Compose:
    """The reference zoo's per-image CIFAR augmentation (PIL in, normalised tensor out)."""
    return transforms.Compose([
        transforms.Pad(4, padding_mode="reflect"),
        transforms.RandomCrop(32),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def eval_transform(mean: tuple[float, ...], std: tuple[float, ...]) -> transforms.Compose:
    """The test-time transform of every zoo: to tensor and normalise, no augmentation."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])


class _InstanceSample:
    """RepDistiller's ``CIFAR100InstanceSample`` (mode 'exact'), mixed into a CIFAR reader:
    each item is ``(img, target, index, sample_idx)`` with ``sample_idx = [index] + nce_k``
    indices of other classes, drawn per sample with ``np.random.choice(..., replace=False)`` on
    the global numpy RNG. That draw permutes the whole ~45k-long negative list for every image,
    in Python, in the loader: part of the cost being measured. (RepDistiller falls back to
    replacement only when ``nce_k`` exceeds the pool; so does this.)"""

    targets: list[int]

    def __init__(self, root: str, nce_k: int = NCE_K, **kwargs: Any) -> None:
        super().__init__(root, train=True, download=False, **kwargs)  # type: ignore[call-arg]
        labels = np.asarray(self.targets)
        # Per-class pools of negatives, built once as RepDistiller's __init__ does.
        self.cls_negative = [np.flatnonzero(labels != c) for c in range(int(labels.max()) + 1)]
        self.nce_k = nce_k

    def __getitem__(self, index: int) -> tuple[Any, int, int, np.ndarray]:
        img, target = super().__getitem__(index)  # type: ignore[misc]
        pool = self.cls_negative[target]
        negatives = np.random.choice(pool, self.nce_k, replace=self.nce_k > len(pool))
        return img, target, index, np.hstack((np.asarray([index]), negatives))


# Module-level classes (not built in a function) so DataLoader workers can pickle them.
class CIFAR10InstanceSample(_InstanceSample, _READERS["cifar10"]):  # type: ignore[misc]
    pass


class CIFAR100InstanceSample(_InstanceSample, _READERS["cifar100"]):  # type: ignore[misc]
    pass


_SAMPLE_READERS = {"cifar10": CIFAR10InstanceSample, "cifar100": CIFAR100InstanceSample}


def instance_sample_dataset(dataset: str, root: str | Path, nce_k: int = NCE_K,
                            **kwargs: Any) -> Dataset:
    """The CRD training set of ``dataset`` under ``root`` (see :class:`_InstanceSample`)."""
    return _SAMPLE_READERS[dataset](str(root), nce_k, **kwargs)


class Embed(nn.Module):
    """RepDistiller's ``crd.criterion.Embed``: flatten, linear, L2-normalise."""

    def __init__(self, dim_in: int, dim_out: int = FEAT_DIM) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x.view(x.shape[0], -1))
        return x / x.pow(2).sum(1, keepdim=True).sqrt()


class ContrastMemory(nn.Module):
    """RepDistiller's ``crd.memory.ContrastMemory`` with the dataset's negatives (``idx`` given).

    Two banks of ``n_data x dim`` unit vectors, one per network. Every step gathers the
    ``(B, K+1, dim)`` rows of *both* banks (about 0.5 GB each at B=64, K=16384), scores them
    against the other network's embedding with ``bmm``, exponentiates at temperature ``T`` and
    divides by normalisers ``Z`` fixed from the first batch; then the rows of the batch's own
    samples are moved toward the new embeddings with momentum and renormalised.
    """

    def __init__(self, dim: int, n_data: int, k: int, t: float = NCE_T,
                 momentum: float = NCE_MOMENTUM) -> None:
        super().__init__()
        self.k, self.t, self.momentum = k, t, momentum
        self.z_s: float | None = None
        self.z_t: float | None = None
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(n_data, dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("memory_t", torch.rand(n_data, dim).mul_(2 * bound).sub_(bound))

    def forward(self, v_s: Tensor, v_t: Tensor, index: Tensor,
                sample_idx: Tensor) -> tuple[Tensor, Tensor]:
        batch, dim = v_s.shape
        flat = sample_idx.reshape(-1)
        # Teacher anchor against the student bank, and the reverse (memory_v1/v2 in the original).
        w_s = torch.index_select(self.memory_s, 0, flat).view(batch, self.k + 1, dim)
        out_t = torch.exp(torch.bmm(w_s, v_t.view(batch, dim, 1)) / self.t)
        w_t = torch.index_select(self.memory_t, 0, flat).view(batch, self.k + 1, dim)
        out_s = torch.exp(torch.bmm(w_t, v_s.view(batch, dim, 1)) / self.t)
        n_data = self.memory_s.shape[0]
        if self.z_s is None:  # the original stores Z the first time and then keeps it
            self.z_s = out_s.mean().item() * n_data
        if self.z_t is None:
            self.z_t = out_t.mean().item() * n_data
        out_s, out_t = out_s / self.z_s, out_t / self.z_t
        with torch.no_grad():
            for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                rows = torch.index_select(bank, 0, index).mul_(self.momentum)
                rows.add_(v * (1 - self.momentum))
                bank.index_copy_(0, index, rows / rows.pow(2).sum(1, keepdim=True).sqrt())
        return out_s, out_t


def nce_loss(x: Tensor, n_data: int) -> Tensor:
    """CRD's ``ContrastLoss`` (Eq. 18 of Tian et al., ICLR 2020): the positive (column 0) is
    classified as data, the ``m`` negatives as noise from the uniform ``Pn = 1/n_data``."""
    x = x.view(x.shape[0], -1)
    m = x.shape[1] - 1
    noise = m / float(n_data)
    pos = x[:, 0]
    neg = x[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + _EPS))
    log_d0 = torch.log(torch.full_like(neg, noise) / (neg + noise + _EPS))
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]


def kd_kl(logit_s: Tensor, logit_t: Tensor, t: float = KD_TEMPERATURE) -> Tensor:
    """RepDistiller's ``DistillKL``: KL(teacher || student) at temperature t, summed over the
    batch and divided by its size (batchmean), times t^2."""
    log_p_s = F.log_softmax(logit_s / t, dim=1)
    p_t = F.softmax(logit_t / t, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") * t**2 / logit_s.shape[0]


def _attention(f: Tensor, p: int = 2) -> Tensor:
    return F.normalize(f.pow(p).mean(1).view(f.size(0), -1))


def attention_loss(f_s: Tensor, f_t: Tensor, p: int = 2) -> Tensor:
    """RepDistiller's ``Attention.at_loss``: pool the larger map to the smaller, then the mean
    squared difference of the L2-normalised spatial attention maps."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return (_attention(f_s, p) - _attention(f_t, p)).pow(2).mean()


def topk_accuracy(output: Tensor, target: Tensor, topk: tuple[int, ...] = (1, 5)) -> list[float]:
    """RepDistiller's ``helper.util.accuracy`` (percent), returned as Python floats."""
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:min(k, maxk)].reshape(-1).float().sum().item() * 100.0 / target.shape[0]
            for k in topk]




class ConventionalRunner:
    """One conventional training setup, built once; ``step()`` is what a benchmark times.

    Construction does all one-time work (reading the dataset, building the negatives' pools,
    models, memory banks, optimiser), so several runners (or a kdzoo runner) can be timed in
    interleaved rounds in one process.
    """

    def __init__(self, case: str, data_root: str | Path, dataset: str = "cifar10",
                 teacher: str = "resnet110", student: str = "resnet20",
                 batch_size: int | None = None, num_workers: int = 0, device: str = "cpu",
                 seed: int = 0, nce_k: int = NCE_K, lr: float = 0.05,
                 teacher_checkpoint: str | Path | None = None) -> None:
        if case not in CASES:
            raise ValueError(f"unknown case {case!r}; choose from {', '.join(CASES)}")
        if dataset not in _READERS:
            raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(_READERS)}")
        # RepDistiller's recipe trains every method with batch 64; 128 is the common CIFAR batch
        # the other cases are compared at.
        self.batch_size = batch_size or (64 if case == "crd" else 128)
        self.case, self.device = case, torch.device(device)
        torch.manual_seed(seed)
        np.random.seed(seed)  # the CRD negatives come from numpy's global RNG, as in RepDistiller
        random.seed(seed)
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if dataset == "cifar10" else (CIFAR100_MEAN,
                                                                               CIFAR100_STD)
        num_classes = 10 if dataset == "cifar10" else 100
        reader = _READERS[dataset]
        if case == "crd":
            train_set = instance_sample_dataset(dataset, data_root, nce_k,
                                                transform=train_transform(mean, std))
        else:
            train_set = reader(str(data_root), train=True, download=False,
                               transform=train_transform(mean, std))
        test_set = reader(str(data_root), train=False, download=False,
                          transform=eval_transform(mean, std))
        self.n_data = len(train_set)
        generator = torch.Generator().manual_seed(seed)
        self.train_loader = DataLoader(train_set, batch_size=self.batch_size, shuffle=True,
                                       num_workers=num_workers, drop_last=False,
                                       generator=generator)
        self.test_loader = DataLoader(test_set, batch_size=self.batch_size, shuffle=False,
                                      num_workers=num_workers)

        self.student = create_model(student, num_classes=num_classes).to(self.device).train()
        trainable: list[nn.Module] = [self.student]
        self.teacher: nn.Module | None = None
        if case != "baseline":  # train_vanilla has no teacher at all
            self.teacher = create_model(teacher, num_classes=num_classes,
                                        checkpoint=teacher_checkpoint).to(self.device).eval()
            for param in self.teacher.parameters():
                param.requires_grad_(False)
        if case == "crd":
            self.embed_s = Embed(self.student.feature_info.pool).to(self.device)
            self.embed_t = Embed(self.teacher.feature_info.pool).to(self.device)
            self.memory = ContrastMemory(FEAT_DIM, self.n_data, nce_k).to(self.device)
            trainable += [self.embed_s, self.embed_t]  # RepDistiller's trainable_list
        params = [p for module in trainable for p in module.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True,
                                         weight_decay=5e-4)
        self._iter: Iterator | None = None
        self.last_loss = float("nan")
        self.last_top1 = float("nan")

    # -- one step -----------------------------------------------------------------------------
    def _next_batch(self) -> Any:
        if self._iter is None:
            self._iter = iter(self.train_loader)
        try:
            return next(self._iter)
        except StopIteration:  # epoch end: reshuffle and go on, as the epoch loop would
            self._iter = iter(self.train_loader)
            return next(self._iter)

    def _loss(self, data: list[Tensor]) -> tuple[Tensor, Tensor]:
        images, target = data[0].float(), data[1]
        if self.teacher is None:  # train_vanilla: logits only, CE only
            logits = self.student(images)
            return F.cross_entropy(logits, target), logits
        feats_s = self.student.features(images)
        with torch.no_grad():
            feats_t = self.teacher.features(images).map(Tensor.detach)
        logit_s = feats_s.logits
        gamma, alpha, beta = _WEIGHTS[self.case]
        loss_cls = F.cross_entropy(logit_s, target)
        loss_div = kd_kl(logit_s, feats_t.logits)
        if self.case == "st":
            loss_kd = logit_s.new_zeros(())
        elif self.case == "at":
            # RepDistiller's feat[1:-1] of a CIFAR ResNet: the three stages
            loss_kd = sum(attention_loss(s, t) for s, t in zip(feats_s.stages, feats_t.stages))
        else:
            index, sample_idx = data[2], data[3]
            v_s = self.embed_s(feats_s.pool)
            v_t = self.embed_t(feats_t.pool)
            out_s, out_t = self.memory(v_s, v_t, index, sample_idx)
            loss_kd = nce_loss(out_s, self.n_data) + nce_loss(out_t, self.n_data)
        return gamma * loss_cls + alpha * loss_div + beta * loss_kd, logit_s

    def _train_on(self, data: list[Tensor]) -> int:
        data = [d.to(self.device) for d in data]
        loss, logits = self._loss(data)
        self.last_top1 = topk_accuracy(logits, data[1])[0]  # RepDistiller's meters, every step
        self.last_loss = loss.item()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return int(data[0].shape[0])

    def step(self) -> int:
        """One full training step, fetching the next batch first (restarting the loader at the
        end of an epoch). Returns the number of images trained on."""
        return self._train_on(self._next_batch())

    # -- whole epochs -------------------------------------------------------------------------
    def epoch(self, max_steps: int | None = None) -> dict[str, float]:
        """A fresh pass over the training loader (at most ``max_steps`` batches); returns the
        image-weighted mean loss and top-1 (%), the images seen and the steps taken."""
        self._iter = None  # step() starts a new pass afterwards
        self.student.train()
        images = steps = 0
        loss_sum = top1_sum = 0.0
        for data in self.train_loader:
            if max_steps is not None and steps >= max_steps:
                break
            n = self._train_on(data)
            images, steps = images + n, steps + 1
            loss_sum += self.last_loss * n
            top1_sum += self.last_top1 * n
        return {"loss": loss_sum / max(images, 1), "top1": top1_sum / max(images, 1),
                "images": float(images), "steps": float(steps)}

    def evaluate(self) -> float:
        """Top-1 (%) of the student on the test split (RepDistiller's ``validate``)."""
        self.student.eval()
        correct = total = 0
        with torch.no_grad():
            for images, target in self.test_loader:
                images, target = images.float().to(self.device), target.to(self.device)
                correct += int((self.student(images).argmax(1) == target).sum().item())
                total += int(target.shape[0])
        self.student.train()
        return 100.0 * correct / max(total, 1)


def conventional_step_runner(case: str, data_root: str | Path, dataset: str = "cifar10",
                             teacher: str = "resnet110", student: str = "resnet20",
                             batch_size: int | None = None, num_workers: int = 0,
                             device: str = "cpu", seed: int = 0,
                             **kwargs: Any) -> ConventionalRunner:
    """Build a :class:`ConventionalRunner` (``batch_size`` None: 64 for crd, else 128)."""
    return ConventionalRunner(case, data_root, dataset=dataset, teacher=teacher,
                              student=student, batch_size=batch_size, num_workers=num_workers,
                              device=device, seed=seed, **kwargs)
