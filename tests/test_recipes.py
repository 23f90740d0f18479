"""Recipes as data: the authors' settings for a method, dataset and pair fill what the user did
not set, and are recorded in the run."""
import json

import pytest
import yaml

from kdzoo.spec import resolve_config
from kdzoo.engine import fit
from kdzoo.methods import METHODS
from kdzoo.models import model_factory
from kdzoo.recipes import load_recipes


def config(**overrides):
    base = {"method": {"name": "crd"}, "teacher": {"name": "resnet32x4", "untrained": True},
            "student": {"name": "ShuffleV2"}, "data": {"name": "cifar100"},
            "preset": "repdistiller"}
    base.update(overrides)
    return resolve_config(overrides=base)


def test_a_recipe_fills_what_the_user_did_not_set():
    c = config()
    assert c.optim.lr == 0.01 and c.method.params.weight == 0.8
    assert c.recipes == ("repdistiller-lr-0.01-mobile-shuffle", "crd-weight-0.8-cifar100")
    user = config(optim={"lr": 0.02}, method={"name": "crd", "weight": 0.5})
    assert user.optim.lr == 0.02 and user.method.params.weight == 0.5
    assert user.recipes == ()
    assert config(preset="reference").optim.lr == 0.1  # the RepDistiller rule only
    off = config(use_recipes=False)
    assert off.optim.lr == 0.05 and off.method.params.weight == 0.2 and off.recipes == ()


def test_the_recipes_are_recorded_in_the_run(tmp_path):
    """A run on (tiny) CIFAR-100 files gets CRD's published CIFAR-100 weight from its recipe,
    and its config.yaml and summary.json say which recipe set it."""
    import torch

    from kdzoo.data.cifar import write_cifar_folder

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(40) % 100
    write_cifar_folder(tmp_path / "data", "cifar100", images[:32], labels[:32], images[32:],
                       labels[32:])
    c = resolve_config(overrides={
        "method": {"name": "crd", "nce_k": 4}, "teacher": {"name": "resnet8", "untrained": True},
        "student": {"name": "resnet8"}, "data": {"name": "cifar100",
                                                 "data_dir": str(tmp_path / "data")},
        "optim": {"epochs": 1, "batch_size": 16}, "out": str(tmp_path / "run")})
    assert c.recipes == ("crd-weight-0.8-cifar100",)
    result = fit(c)
    summary = json.loads((result.path / "summary.json").read_text())
    assert summary["recipes"] == ["crd-weight-0.8-cifar100"]
    assert summary["hyperparameters"]["weight"] == 0.8
    recorded = yaml.safe_load((result.path / "config.yaml").read_text())
    assert recorded["recipes"] == ["crd-weight-0.8-cifar100"]
    assert recorded["method"]["weight"] == 0.8


@pytest.mark.parametrize("recipe", load_recipes(), ids=lambda r: r.name)
def test_every_recipe_names_real_methods_models_and_parameters(recipe):
    def names(key):
        value = recipe.when.get(key)
        return [] if value is None else value if isinstance(value, list) else [value]

    for method in names("method"):
        cls = METHODS.get(method)
        for key in recipe.settings.get("method", {}):
            assert key in cls.Params().to_dict(), (method, key)
        for key in recipe.when.get("params", {}):
            assert key in cls.Params().to_dict(), (method, key)
    for model in names("teacher") + names("student"):
        model_factory(model)
    assert recipe.source
