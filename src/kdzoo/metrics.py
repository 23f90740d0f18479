"""Test-set evaluation: top-1/top-5 accuracy and cross-entropy, weighted by batch size (the
training loop's, ``kdzoo eval``'s and the teacher store's import check)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.loader import BatchLoader


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (on the device:
    no host synchronisation). k is capped at the number of classes."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == labels[:, None]
    return [hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


def accuracy_of_logits(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """The numbers :func:`evaluate` reports, from precomputed logits."""
    top1, top5 = (100.0 * torch.stack(topk_correct(logits, labels)).double() / len(labels)).tolist()
    return {"top1": top1, "top5": top5, "loss": F.cross_entropy(logits, labels).item()}


@torch.no_grad()
def predict(model: nn.Module, loader: BatchLoader) -> Tensor:
    """The model's logits on the whole test split, in order."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(batch.images) for batch in loader.test_batches()])
    model.train(was_training)
    return logits


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, split: str = "test") -> dict[str, float]:
    """Accuracy (percent) and mean cross-entropy of ``model`` on the test (or validation)
    split."""
    was_training = model.training
    model.eval()
    device = loader.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros(2, device=device, dtype=torch.long)
    count = 0
    for batch in loader.test_batches(split):
        logits = model(batch.images)
        loss_sum += F.cross_entropy(logits, batch.labels, reduction="sum").double()
        correct += torch.stack(topk_correct(logits, batch.labels))
        count += len(batch)
    model.train(was_training)
    top1, top5 = (100.0 * correct.double() / max(1, count)).tolist()
    return {"top1": top1, "top5": top5, "loss": loss_sum.item() / max(1, count)}
