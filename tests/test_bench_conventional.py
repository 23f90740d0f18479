"""The conventional-loop side of ``kdzoo bench`` and its measuring tools, on tiny CIFAR folders."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kdzoo
from kdzoo.bench.conventional import (CASES, ContrastMemory, conventional_step_runner,
                                      instance_sample_dataset, nce_loss)
from kdzoo.bench.measure import (flops_per_image, matmul_peak_gflops, summarize,
                                 time_interleaved)
from kdzoo.data.cifar import write_cifar_folder

TRAIN, TEST, CLASSES = 40, 16, 10


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (TRAIN + TEST, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(TRAIN + TEST) % CLASSES
    write_cifar_folder(root, "cifar10", images[:TRAIN], labels[:TRAIN], images[TRAIN:],
                       labels[TRAIN:])
    return root


def _runner(case, root, batch_size=8):
    return conventional_step_runner(case, root, teacher="resnet8", student="resnet8",
                                    batch_size=batch_size, nce_k=16)


@pytest.mark.parametrize("case", CASES)
def test_each_case_trains_with_a_finite_loss(case, cifar_root):
    runner = _runner(case, cifar_root)
    before = [p.detach().clone() for p in runner.student.parameters()]
    assert [runner.step() for _ in range(2)] == [8, 8]
    assert math.isfinite(runner.last_loss) and 0.0 <= runner.last_top1 <= 100.0
    after = runner.student.parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    if runner.teacher is not None:
        assert not runner.teacher.training
        assert all(not p.requires_grad for p in runner.teacher.parameters())


def test_step_restarts_the_loader_at_epoch_end(cifar_root):
    runner = _runner("baseline", cifar_root, batch_size=16)
    # 40 images in batches of 16: 16, 16, 8 (drop_last False), then a new epoch.
    assert [runner.step() for _ in range(4)] == [16, 16, 8, 16]


def test_epoch_and_evaluate(cifar_root):
    runner = _runner("st", cifar_root)
    stats = runner.epoch(max_steps=2)
    assert stats["steps"] == 2 and stats["images"] == 16 and math.isfinite(stats["loss"])
    assert runner.epoch()["images"] == TRAIN
    assert 0.0 <= runner.evaluate() <= 100.0
    assert runner.student.training


def test_crd_negatives_exclude_the_class_without_duplicates(cifar_root):
    np.random.seed(0)
    data = instance_sample_dataset("cifar10", cifar_root, nce_k=16)
    labels = np.asarray(data.targets)
    for index in (0, 7, 39):
        _, target, got_index, sample_idx = data[index]
        assert got_index == index and sample_idx[0] == index and len(sample_idx) == 17
        negatives = sample_idx[1:]
        assert len(set(negatives.tolist())) == 16
        assert (labels[negatives] != target).all()


def test_contrast_memory_fixes_z_and_updates_rows():
    torch.manual_seed(0)
    memory = ContrastMemory(dim=4, n_data=20, k=5)
    v = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    index = torch.tensor([0, 1, 2])
    sample_idx = torch.cat([index[:, None], torch.randint(3, 20, (3, 5))], dim=1)
    untouched = memory.memory_s[10:].clone()
    out_s, out_t = memory(v, v, index, sample_idx)
    z = memory.z_s
    assert out_s.shape == (3, 6, 1) and z is not None and z > 0
    memory(v, v, index, sample_idx)
    assert memory.z_s == z  # fixed on the first batch
    assert torch.allclose(memory.memory_s[:3].norm(dim=1), torch.ones(3))
    assert torch.equal(memory.memory_s[10:], untouched)
    assert torch.isfinite(nce_loss(out_s, 20))


def test_flop_counts_match_the_anchors():
    # resnet20 81.63 M, resnet110 506.30 M forward FLOPs (multiply-adds x 2, 32x32 input).
    for name, anchor in (("resnet20", 81.63e6), ("resnet110", 506.30e6)):
        model = kdzoo.create_model(name)
        assert flops_per_image(model) == pytest.approx(anchor, rel=1e-3)
        assert model.training


def test_interleaved_timer_counts_and_order():
    calls: list[str] = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = time_interleaved(fns, rounds=2, steps_per_round=3, warmup=1, alternate=True)
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6}
    assert "".join(calls) == "a" + "b" + "aaa" + "bbb" + "bbb" + "aaa"
    summary = summarize(times["a"])
    assert summary.n == 6 and 0 <= summary.min <= summary.median


def test_matmul_peak_is_positive():
    assert matmul_peak_gflops(threads=1, size=128, repeats=2) > 0
