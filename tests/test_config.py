import pytest

from kdzoo.layers import parse_set
from kdzoo.spec import resolve_config
from kdzoo.core import MultiStep, build_schedule
from kdzoo.errors import ConfigError


def test_presets_follow_the_recipes():
    reference = resolve_config(overrides={"preset": "reference"})
    assert (reference.optim.epochs, reference.optim.lr, reference.optim.batch_size,
            reference.optim.weight_decay, reference.optim.nesterov) == (200, 0.1, 128, 1e-4, True)
    schedule = build_schedule(reference.optim)
    assert [schedule.lr(e) for e in (1, 100, 101, 150, 151, 200)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    rep = resolve_config(overrides={"preset": "repdistiller"})
    assert (rep.optim.epochs, rep.optim.lr, rep.optim.batch_size, rep.optim.weight_decay) == (
        240, 0.05, 64, 5e-4)
    assert build_schedule(rep.optim) == MultiStep(0.05, (150, 180, 210), 0.1)


@pytest.mark.parametrize("epochs,milestones", [(20, (10, 15)), (200, (100, 150)), (2, (1, 2)),
                                               (1, (1, 1)), (3, (2, 3))])
def test_fractional_milestones_follow_the_epochs(epochs, milestones):
    config = resolve_config(overrides={"optim": {"epochs": epochs}})
    schedule = build_schedule(config.optim)
    assert schedule.milestones == milestones
    assert schedule.lr(1) == 0.1  # every run starts at the full learning rate


def test_layers_override_in_order(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: repdistiller\nseed: 5\nmethod:\n  name: st\n  temperature: 2\n"
                    "optim:\n  lr: 0.2\nteacher:\n  name: resnet8\n  untrained: true\n")
    config = resolve_config(path, {"optim": {"lr": 0.3}}, ["method.weight=0.5", "seed=7"])
    assert config.optim.epochs == 240  # from the preset named in the file
    assert config.optim.lr == 0.3      # a flag beats the file
    assert config.seed == 7            # --set beats everything
    assert config.method.params.to_dict() == {"weight": 0.5, "temperature": 2.0,
                                              "standardize": False, "ctkd": False}


def test_another_method_drops_the_previous_methods_parameters(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method:\n  name: st\n  temperature: 2\n")
    config = resolve_config(path, {"method": {"name": "baseline"}})
    assert config.method.name == "baseline" and config.method.params.to_dict() == {}


def test_unknown_key_and_wrong_type():
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'.*'optim.lr'"):
        resolve_config(assignments=["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="'optim.epochs' must be an integer"):
        resolve_config(assignments=["optim.epochs=many"])
    with pytest.raises(ConfigError, match="unknown preset 'refrence'.*'reference'"):
        resolve_config(overrides={"preset": "refrence"})
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["optim.lr"])


def test_yaml_scientific_notation_is_a_number():
    assert resolve_config(assignments=["optim.weight_decay=5e-4"]).optim.weight_decay == 5e-4


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config(path)


def test_round_trip_through_yaml(tmp_path):
    config = resolve_config(overrides={"method": {"name": "st", "temperature": 3.0},
                                       "teacher": {"name": "resnet8", "untrained": True},
                                       "data": {"name": "synthetic", "train_size": 64}})
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert resolve_config(path) == config
