"""The logit methods' recipes resolve to their authors' settings: logit standardization's
`--logit-stand` (sunshangquan/logit-standardization-KD tools/train.py, DKD as fixed in 6b58661;
zju-SWJ/RLD tools/train.py), LS's per-pair base temperatures and weights (its logs' names), and
MLKD's per-pair schedules (Jin-Ying/Multi-Level-Logit-Distillation configs/cifar100/ours at
5ee473f; LS's configs/cifar100/mlkd with standardization)."""
import pytest

from kdzoo.spec import resolve_config


def resolved(method, teacher, student, preset="repdistiller", **params):
    return resolve_config(overrides={
        "method": {"name": method, **params}, "teacher": {"name": teacher, "untrained": True},
        "student": {"name": student}, "data": {"name": "cifar100"}, "preset": preset})


def hyper(config, *names):
    return tuple(getattr(config.method.params, name) for name in names)


@pytest.mark.parametrize("teacher,student,expected", [
    ("resnet32x4", "resnet8x4", (9.0, 72.0, 2.0)),     # dkd,resnet32x4,resnet8x4,2,9
    ("resnet32x4", "ShuffleV2", (9.0, 72.0, 2.0)),     # dkd,resnet32x4,ShuffleV2,2,9
    ("wrn_40_2", "wrn_16_2", (12.0, 24.0, 2.0)),       # dkd,wrn_40_2,wrn_16_2,2,12,2.0
    ("resnet56", "resnet20", (18.0, 36.0, 3.0)),       # dkd,resnet56,resnet20,3,18,2.0
    ("vgg13", "vgg8", (15.0, 30.0, 2.0)),              # dkd,vgg13,vgg8,2,15,2.0
    ("vgg13", "MobileNetV2", (9.0, 18.0, 3.0)),        # dkd,vgg13,MobileNetV2,3,9,2.0
    ("resnet110", "resnet20", (15.0, 30.0, 2.0)),      # dkd,resnet110,resnet20,2,15,2.0
    ("resnet32x4", "ShuffleV1", (9.0, 72.0, 2.0)),     # no log: the README's 2 and 9, beta 8
])
def test_dkd_with_standardization_is_the_fixed_ls_code(teacher, student, expected):
    """alpha = w, beta = beta x w, T = the base temperature; never the old 9 / 81 / 4."""
    config = resolved("dkd", teacher, student, standardize=True)
    assert hyper(config, "alpha", "beta", "temperature") == expected
    assert hyper(config, "ce_weight", "warmup") == (1.0, 20)


def test_dkd_without_standardization_keeps_mdistillers_beta():
    assert hyper(resolved("dkd", "resnet56", "resnet20"), "alpha", "beta", "temperature") == (
        1.0, 2.0, 4.0)
    assert resolved("dkd", "vgg13", "MobileNetV2").method.params.beta == 6.0
    assert resolved("dkd", "wrn_40_2", "ShuffleV1").method.params.beta == 8.0
    assert resolved("dkd", "resnet110", "resnet20").method.params.beta == 2.0


@pytest.mark.parametrize("method,teacher,student,expected", [
    ("kd", "resnet32x4", "resnet8x4", (9.0, 2.0)),
    ("kd", "vgg13", "vgg8", (9.0, 3.0)),
    ("kd", "resnet110", "resnet20", (12.0, 4.0)),
    ("kd", "ResNet50", "MobileNetV2", (1.0, 3.0)),
    ("kd", "ResNet50", "vgg8", (9.0, 2.0)),           # no log: the README's command
    ("mlkd", "resnet32x4", "resnet8x4", (9.0, 2.0)),
    ("mlkd", "vgg13", "vgg8", (6.0, 2.0)),
    ("mlkd", "resnet32x4", "ShuffleV2", (6.0, 2.0)),
])
def test_kd_and_mlkd_with_standardization_per_pair(method, teacher, student, expected):
    config = resolved(method, teacher, student, standardize=True)
    assert hyper(config, "weight", "temperature") == expected
    assert config.method.params.ce_weight == 0.1


def test_rld_and_ctkd_with_standardization():
    config = resolved("rld", "resnet32x4", "resnet8x4", standardize=True)
    assert hyper(config, "alpha", "beta", "temperature", "alpha_temperature") == (
        9.0, 72.0, 2.0, 2.0)
    assert resolved("ctkd", "resnet32x4", "resnet8x4", standardize=True).method.params.weight \
        == 9.0
    assert hyper(resolved("rld", "resnet32x4", "resnet8x4"), "alpha", "beta", "temperature") == (
        1.0, 8.0, 4.0)


@pytest.mark.parametrize("teacher,student,standardize,expected", [
    ("resnet32x4", "resnet8x4", False, (240, 0.025)),
    ("wrn_40_2", "wrn_40_1", False, (240, 0.025)),
    ("resnet110", "resnet20", False, (480, 0.025)),    # LS's config: MLKD has none
    ("vgg13", "MobileNetV2", False, (480, 0.01)),
    ("wrn_40_2", "ShuffleV1", False, (480, 0.01)),
    ("resnet32x4", "ShuffleV1", False, (960, 0.01)),
    ("resnet32x4", "ShuffleV2", False, (960, 0.01)),
    ("wrn_40_2", "MobileNetV2", False, (480, 0.005)),  # LS's config, over RepDistiller's 0.01
    ("resnet32x4", "resnet8x4", True, (480, 0.025)),
    ("vgg13", "vgg8", True, (480, 0.01)),
    ("ResNet50", "MobileNetV2", True, (480, 0.01)),
    ("wrn_40_2", "MobileNetV2", True, (480, 0.005)),
    ("resnet32x4", "ShuffleV2", True, (960, 0.01)),
])
@pytest.mark.parametrize("preset", ["repdistiller", "mdistiller"])
def test_mlkd_schedules_per_pair(teacher, student, standardize, expected, preset):
    config = resolved("mlkd", teacher, student, preset=preset, standardize=standardize)
    assert (config.optim.epochs, config.optim.lr) == expected
    assert list(config.optim.milestones) == [150, 180, 210]  # absolute, whatever the length
    assert config.method.params.protocol == "paper"


def test_mlkd_schedules_leave_the_reference_preset_alone():
    config = resolved("mlkd", "resnet32x4", "ShuffleV2", preset="reference")
    assert (config.optim.epochs, config.optim.lr) == (200, 0.1)


def test_mdistiller_preset_trains_mobile_and_shuffle_students_at_lr_0_01():
    assert resolved("dkd", "resnet32x4", "ShuffleV1", preset="mdistiller").optim.lr == 0.01
    assert resolved("kd", "vgg13", "MobileNetV2", preset="mdistiller").optim.lr == 0.01
    assert resolved("kd", "vgg13", "vgg8", preset="mdistiller").optim.lr == 0.05


@pytest.mark.parametrize("standardize", [False, True])
def test_mlkd_mobile_and_shuffle_students_without_a_config_train_at_lr_0_01(standardize):
    config = resolved("mlkd", "resnet32x4", "MobileNetV2", standardize=standardize)
    assert config.optim.lr == 0.01
    assert config.optim.epochs == (480 if standardize else 240)
