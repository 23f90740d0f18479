import gzip
import struct

import pytest
import torch
import yaml
import torch.nn.functional as F

import kdzoo
from kdzoo.data import AugmentSpec, BatchLoader, ImageDataset, crop_flip, load_dataset
from kdzoo.data.cifar import write_cifar_folder
from kdzoo.errors import ConfigError, DatasetError


def random_images(n, channels=3, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen)


@pytest.mark.parametrize("mode", ["reflect", "constant"])
@pytest.mark.parametrize("pad", [1, 4])
def test_crop_equals_pad_then_slice(pad, mode):
    """reflect: the reference zoo's Pad(4, reflect) + RandomCrop(32); constant: RepDistiller's
    and mdistiller's RandomCrop(32, padding=4), zeros outside the image."""
    images = random_images(16, size=12)
    gen = torch.Generator().manual_seed(3)
    offsets = torch.randint(0, 2 * pad + 1, (16, 2), generator=gen)
    flips = torch.rand(16, generator=gen) < 0.5
    out = crop_flip(images, offsets, flips, pad, mode)
    padded = F.pad(images.float(), (pad,) * 4, mode=mode)
    for i in range(16):
        y, x = offsets[i].tolist()
        expected = padded[i, :, y:y + 12, x:x + 12]
        if flips[i]:
            expected = expected.flip(-1)
        assert torch.equal(out[i].float(), expected)  # crops stay inside the padded image
    assert out.dtype == torch.uint8


def test_flip_flips_and_centre_crop_is_identity():
    images = random_images(4, size=8)
    centre = torch.full((4, 2), 4)
    assert torch.equal(crop_flip(images, centre, None, 4), images)
    flipped = crop_flip(images, centre, torch.ones(4, dtype=torch.bool), 4)
    assert torch.equal(flipped, images.flip(-1))


def test_the_presets_pad_and_normalise_as_their_authors(tmp_path):
    """--preset repdistiller (and mdistiller) pad with zeros and use RepDistiller's CIFAR-100
    constants; --preset reference pads with reflection and uses the reference zoo's; each run
    records them in config.yaml."""
    from kdzoo.cli import main
    from kdzoo.engine import build
    from kdzoo.spec import resolve_config

    images, labels = random_images(40), torch.arange(40) % 100
    write_cifar_folder(tmp_path / "data", "cifar100", images[:32], labels[:32], images[32:],
                       labels[32:])
    recorded = {}
    for preset in ("reference", "repdistiller", "mdistiller"):
        out = tmp_path / preset
        assert main(["train", "--student", "resnet8", "--data", "cifar100", "--data-dir",
                     str(tmp_path / "data"), "--preset", preset, "--epochs", "1",
                     "--batch-size", "16", "--no-progress", "--out", str(out)]) == 0
        recorded[preset] = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert recorded["reference"]["padding_mode"] == "reflect"
    assert recorded["reference"]["mean"] == [0.5071, 0.4865, 0.4409]
    for preset in ("repdistiller", "mdistiller"):
        assert recorded[preset]["padding_mode"] == "constant"
        assert recorded[preset]["mean"] == [0.5071, 0.4867, 0.4408]
        assert recorded[preset]["std"] == [0.2675, 0.2565, 0.2761]
    # the zeros really reach the batches: a crop at the corner shows four black rows
    parts = build(resolve_config(overrides={
        "student": {"name": "resnet8"}, "preset": "repdistiller", "channels_last": False,
        "data": {"name": "cifar100", "data_dir": str(tmp_path / "data")}}))
    assert parts.data.augment.padding_mode == "constant"
    black = parts.loader.normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8)).flatten()
    for batch in parts.loader.train_batches(0, 1):
        for image, offset in zip(batch.images, batch.offsets, strict=True):
            if int(offset[0]) == 0:  # the window starts 4 rows above the image
                assert torch.allclose(image[:, :4], black.view(3, 1, 1).expand(3, 4, 32))


def make_dataset(n=40, classes=4, spec=AugmentSpec(pad=4, flip=True)):
    images = random_images(n)
    labels = torch.arange(n) % classes
    return ImageDataset("toy", images, labels, images[:8], labels[:8], classes,
                        (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), spec)


def test_same_seed_same_batches_other_seed_other_batches():
    loader = BatchLoader(make_dataset(), batch_size=16)
    first = [b.images for b in loader.train_batches(seed=1, epoch=1)]
    again = [b.images for b in loader.train_batches(seed=1, epoch=1)]
    other = [b.images for b in loader.train_batches(seed=2, epoch=1)]
    next_epoch = [b.images for b in loader.train_batches(seed=1, epoch=2)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], next_epoch[0])


def test_an_epoch_visits_every_image_once_and_resumes_mid_epoch():
    loader = BatchLoader(make_dataset(n=41), batch_size=8)
    batches = list(loader.train_batches(seed=0, epoch=3))
    seen = torch.cat([b.indices for b in batches])
    assert sorted(seen.tolist()) == list(range(41))
    assert [len(b) for b in batches] == [8, 8, 8, 8, 9]  # a lone last image joins the batch before
    tail = list(loader.train_batches(seed=0, epoch=3, start_step=2))
    assert all(torch.equal(a.images, b.images) for a, b in zip(batches[2:], tail, strict=True))


def test_normalisation_and_labels():
    data = make_dataset(spec=AugmentSpec())
    loader = BatchLoader(data, batch_size=8)
    batch = next(iter(loader.test_batches()))
    expected = (data.test_images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(batch.images, expected, atol=1e-5)
    assert torch.equal(batch.labels, data.test_labels)


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_format_folder_is_read(tmp_path, name, classes):
    train, test = random_images(30), random_images(10, seed=1)
    train_labels, test_labels = torch.arange(30) % classes, torch.arange(10) % classes
    write_cifar_folder(tmp_path, name, train, train_labels, test, test_labels)
    data = load_dataset(name, data_dir=tmp_path)
    assert torch.equal(data.train_images, train) and torch.equal(data.test_images, test)
    assert torch.equal(data.train_labels, train_labels)
    assert data.num_classes == classes and data.augment == AugmentSpec(pad=4, flip=True)


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="--download"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_corrupt_cifar_file(tmp_path):
    images, labels = random_images(10), torch.arange(10)
    folder = write_cifar_folder(tmp_path, "cifar10", images, labels, images, labels)
    (folder / "data_batch_2").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        load_dataset("cifar10", data_dir=tmp_path)


def write_idx(path, array):
    header = struct.pack(">I", 0x0800 | array.dim()) + struct.pack(f">{array.dim()}I",
                                                                   *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.numpy().tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path):
    images, labels = random_images(12, channels=1, size=28)[:, 0], torch.arange(12) % 10
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels.to(torch.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[:4])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:4].to(torch.uint8))
    data = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert data.train_images.shape == (12, 1, 28, 28)
    assert torch.equal(data.train_images[:, 0], images)
    assert torch.equal(data.test_labels, labels[:4])
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"broken")
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_fashion_mnist_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "nothing")


def test_digits_split_is_fixed_and_stratified():
    first, second = load_dataset("digits"), load_dataset("digits")
    assert first.train_images.shape == (1347, 1, 8, 8) and len(first.test_labels) == 450
    assert torch.equal(first.train_images, second.train_images)
    counts = torch.bincount(first.test_labels, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 46  # 25% of 174..183 per class
    assert first.augment.flip is False  # a mirrored digit is another symbol


def test_synthetic_options():
    data = load_dataset("synthetic", train_size=20, test_size=6, image_size=16, channels=1,
                        num_classes=3)
    assert data.train_images.shape == (20, 1, 16, 16) and data.num_classes == 3
    assert torch.equal(data.train_images, load_dataset(
        "synthetic", train_size=20, test_size=6, image_size=16, channels=1,
        num_classes=3).train_images)
    with pytest.raises(ConfigError, match="has no option size"):
        load_dataset("synthetic", size=3)


def test_registry_lists_all_datasets():
    assert {"cifar10", "cifar100", "fashion-mnist", "digits", "synthetic"} <= set(
        kdzoo.list_datasets())
