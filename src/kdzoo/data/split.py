"""Seeded, stratified subsets of a training set: a held-out validation split (``--val-split``)
and a smaller training set for quick experiments (``data.train_subset``).

Both depend only on the dataset and the requested size, never on the run's seed or method, so
every method and seed of a comparison trains on the same images and is selected on the same
validation images. Each class keeps its share: from every class, ``round(fraction * n_c)`` images
are drawn (at least one where the class has two or more), in an order fixed by a generator seeded
from (dataset name, what, size).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..errors import ConfigError
from ..seeding import generator
from .base import ImageDataset


def stratified_choice(labels: Tensor, fraction: float, *seed: object) -> tuple[Tensor, Tensor]:
    """(chosen, rest): sorted indices of a stratified ``fraction`` of ``labels`` and of the
    others, drawn from a generator seeded with ``seed``."""
    gen = generator("stratified", *seed)
    chosen = []
    for label in torch.unique(labels.cpu()).tolist():
        members = (labels.cpu() == label).nonzero().flatten()
        count = round(fraction * len(members))
        if len(members) > 1:
            count = min(max(count, 1), len(members) - 1)
        order = torch.randperm(len(members), generator=gen)
        chosen.append(members[order[:count]])
    picked = torch.cat(chosen).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[picked] = False
    return picked, keep.nonzero().flatten()


def carve_validation(data: ImageDataset, fraction: float) -> ImageDataset:
    """``data`` with a stratified ``fraction`` of its training images moved to a validation
    split (the same images for every method and seed)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--val-split must be a fraction between 0 and 1, got {fraction}")
    val, train = stratified_choice(data.train_labels, fraction, data.name, "val", fraction)
    if getattr(data, "streaming", False):  # a folder dataset: its file lists
        return data.carve(val, train)  # type: ignore[attr-defined]
    return dataclasses.replace(
        data, train_images=data.train_images[train], train_labels=data.train_labels[train],
        val_images=data.train_images[val], val_labels=data.train_labels[val])


def subset_training(data: ImageDataset, count: int) -> ImageDataset:
    """``data`` with a stratified subset of ``count`` training images (for quick runs)."""
    total = len(data.train_labels)
    if not 0 < count <= total:
        raise ConfigError(f"data.train_subset must be between 1 and the {total} training "
                          f"images of {data.name}, got {count}")
    if count == total:
        return data
    chosen, _ = stratified_choice(data.train_labels, count / total, data.name, "subset", count)
    if getattr(data, "streaming", False):
        return data.subset(chosen)  # type: ignore[attr-defined]
    return dataclasses.replace(data, train_images=data.train_images[chosen],
                               train_labels=data.train_labels[chosen])
