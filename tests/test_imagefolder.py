"""The streaming ``imagefolder`` dataset on a small folder of images written here: decoded in
workers, batches fixed by (seed, epoch) whatever the workers or the world size, a run trains
and evaluates, the validation split and the teacher cache's refusal."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from kdzoo.cli import main
from kdzoo.data import load_dataset
from kdzoo.data.imagefolder import StreamingLoader, random_resized_box
from kdzoo.data.split import carve_validation
from kdzoo.errors import KdzooError
from kdzoo.seeding import generator


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 10), ("val", 3)):
        for label, name in enumerate(["cat", "dog", "fox"]):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                size = (24 + 4 * (i % 3), 20 + 3 * label)
                pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=gen,
                                       dtype=torch.uint8)
                pixels[..., label] = 200  # a class colour, so a short run learns something
                Image.fromarray(pixels.numpy()).save(root / split / name / f"{i}.png")
    return root


def test_batches_depend_only_on_seed_and_epoch(folder):
    data = load_dataset("imagefolder", folder, image_size=16, workers=2)
    assert data.classes == ["cat", "dog", "fox"] and len(data.train_labels) == 30
    in_workers = list(StreamingLoader(data, 8).train_batches(seed=1, epoch=2))
    data.workers = 0
    here = list(StreamingLoader(data, 8).train_batches(seed=1, epoch=2))
    assert [len(b) for b in here] == [8, 8, 8, 6]
    for a, b in zip(in_workers, here, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.indices, b.indices)
        assert a.images.shape[1:] == (3, 16, 16)
    other = next(StreamingLoader(data, 8).train_batches(seed=1, epoch=3))
    assert not torch.equal(other.indices, here[0].indices)
    resumed = next(StreamingLoader(data, 8).train_batches(seed=1, epoch=2, start_step=2))
    assert torch.equal(resumed.images, here[2].images)
    shards = [list(StreamingLoader(data, 8).train_batches(1, 2, rank=r, world=2))
              for r in range(2)]
    for whole, a, b in zip(here, *shards, strict=True):
        assert torch.equal(torch.cat([a.images, b.images]), whole.images)
        assert torch.equal(a.global_indices, whole.indices)
    test = list(StreamingLoader(data, 8).test_batches())
    assert sum(len(b) for b in test) == 9 and test[0].images.shape[2:] == (16, 16)


def test_random_resized_box_stays_inside_the_image():
    gen = generator("box")
    for _ in range(200):
        top, left, h, w = random_resized_box(30, 50, gen)
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50 and h > 0 < w


def test_a_run_trains_validates_and_refuses_the_teacher_cache(folder, tmp_path, capsys):
    base = ["train", "--method", "st", "--teacher", "resnet8", "--untrained-teacher",
            "--student", "resnet8", "--data", "imagefolder", "--data-dir", str(folder),
            "--set", "data.image_size=16", "--set", "data.workers=1", "--batch-size", "10",
            "--epochs", "2", "--no-progress", "--device", "cpu"]
    assert main([*base, "--val-split", "0.2", "--out", str(tmp_path / "run")]) == 0
    summary = (tmp_path / "run" / "summary.json").read_text()
    assert '"finished": true' in summary and '"selection": "val"' in summary
    assert main([*base, "--teacher-cache", "--out", str(tmp_path / "cached")]) == 2
    assert "random-resized crops cannot be enumerated" in capsys.readouterr().err
    data = carve_validation(load_dataset("imagefolder", folder), 0.2)
    assert len(data.val_files) == 6 and len(data.train_files) == 24


def test_a_bad_folder_is_refused_in_one_line(tmp_path):
    with pytest.raises(KdzooError, match="is not a folder: imagefolder reads DIR/train"):
        load_dataset("imagefolder", tmp_path)
