import pickle

import pytest
import torch

import kdzoo
from kdzoo.errors import CheckpointError


def to_reference_zoo(state):
    """kdzoo keys -> the reference zoo's (resK., .ds., DataParallel's 'module.')."""
    out = {}
    for key, value in state.items():
        key = key.replace("downsample", "ds")
        for k in (1, 2, 3):
            key = key.replace(f"layer{k}.", f"res{k}.")
        out["module." + key] = value
    return out


@pytest.fixture
def trained_like():
    torch.manual_seed(0)
    model = kdzoo.create_model("resnet20", num_classes=10).eval()
    with torch.no_grad():  # make BN statistics non-trivial so a wrong mapping would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    return model


def logits_after_loading(path, **kwargs):
    model = kdzoo.create_model("resnet20", num_classes=10, checkpoint=path, **kwargs).eval()
    with torch.no_grad():
        return model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))


def expected_logits(model):
    with torch.no_grad():
        return model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("fmt", ["kdzoo-export", "plain", "ref-net", "ref-snet", "ref-tnet",
                                 "ref-net1", "ref-net2", "ref-bare", "repdistiller"])
def test_every_format_loads_with_identical_logits(tmp_path, trained_like, fmt):
    state = trained_like.state_dict()
    path = tmp_path / "weights.pth"
    if fmt == "kdzoo-export":
        kdzoo.export_model(trained_like, path)
    elif fmt == "plain":
        torch.save(state, path)
    elif fmt == "ref-bare":
        torch.save(to_reference_zoo(state), path)
    elif fmt.startswith("ref-"):
        key = fmt[4:]
        torch.save({"epoch": 200, key: to_reference_zoo(state), "prec@1": 92.0}, path)
    else:
        torch.save({"model": state, "epoch": 240, "best_acc": 70.0}, path)
    assert torch.equal(logits_after_loading(path), expected_logits(trained_like))


def test_kd_checkpoint_picks_the_state_dict_that_fits(tmp_path, trained_like):
    teacher = kdzoo.create_model("resnet56", num_classes=10)
    path = tmp_path / "kd.pth.tar"
    torch.save({"snet": to_reference_zoo(trained_like.state_dict()),
                "tnet": to_reference_zoo(teacher.state_dict())}, path)
    assert torch.equal(logits_after_loading(path), expected_logits(trained_like))
    loaded = kdzoo.create_model("resnet56", num_classes=10, checkpoint=path)
    assert torch.equal(loaded.fc.weight, teacher.fc.weight)


def test_wrong_architecture_names_the_keys(tmp_path):
    path = tmp_path / "r56.pth"
    torch.save(kdzoo.create_model("resnet56").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"unexpected keys: layer1\.3\.") as err:
        kdzoo.create_model("resnet20", checkpoint=path)
    assert "\n" not in str(err.value)


def test_wrong_number_of_classes_names_the_shapes(tmp_path):
    path = tmp_path / "c100.pth"
    torch.save({"model": kdzoo.create_model("resnet20", num_classes=100).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"fc.weight \(100, 64\) in file vs \(10, 64\)"):
        kdzoo.create_model("resnet20", num_classes=10, checkpoint=path)


def test_kdzoo_export_of_another_model_is_named(tmp_path):
    path = tmp_path / "student.pt"
    kdzoo.export_model(kdzoo.create_model("resnet8", num_classes=100), path)
    with pytest.raises(CheckpointError, match="holds a resnet8 with 100 classes"):
        kdzoo.create_model("resnet20", checkpoint=path)


def test_file_without_state_dict(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        kdzoo.create_model("resnet20", checkpoint=path)


def test_truncated_and_garbage_files_are_refused(tmp_path, trained_like):
    good = tmp_path / "good.pth"
    torch.save(trained_like.state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    # a run's log passed by mistake: the unpickler fails on it with an IndexError
    text = tmp_path / "log.txt"
    text.write_text("run folder runs/r: st resnet8 -> resnet8 on synthetic, seed 0\n"
                    "epoch 1/2 [main] lr 0.05 | loss 2.3830 (ce 2.3717, st 0.0113)\n")
    noise = []
    for seed in range(8):
        noise.append(tmp_path / f"noise{seed}.pth")
        noise[-1].write_bytes(torch.randint(0, 256, (512,), dtype=torch.uint8,
                                            generator=torch.Generator().manual_seed(seed))
                              .numpy().tobytes())
    for path in (truncated, garbage, text, *noise):
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            kdzoo.create_model("resnet20", checkpoint=path)
    with pytest.raises(CheckpointError, match="does not exist"):
        kdzoo.create_model("resnet20", checkpoint=tmp_path / "missing.pth")


class Legacy:  # a pickled Python object: weights_only loading must refuse it
    pass


def test_legacy_pickles_need_trust(tmp_path, trained_like):
    path = tmp_path / "legacy.pth"
    torch.save({"net": trained_like.state_dict(), "args": Legacy()}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        kdzoo.create_model("resnet20", checkpoint=path)
    model = kdzoo.create_model("resnet20", checkpoint=path, trust_checkpoint=True)
    assert torch.equal(model.fc.weight, trained_like.fc.weight)
    assert pickle  # the module is used to build such files in other tests
