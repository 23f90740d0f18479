"""The README must tell the truth: its commands parse, its config resolves, its Python runs."""
import re
import shlex
from pathlib import Path

import pytest

from kdzoo.cli import main, make_parser
from kdzoo.spec import resolve_config

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def kdzoo_commands():
    commands = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                words = shlex.split(part) if part else []
                if part.startswith("kdzoo "):
                    commands.append(words[1:])
                elif "-m" in words and "kdzoo" in words:  # torchrun ... -m kdzoo ARGS
                    start = words.index("-m")
                    if words[start + 1] == "kdzoo":
                        commands.append(words[start + 2:])
    return commands


def test_readme_shows_kdzoo_commands():
    assert len(kdzoo_commands()) >= 8


@pytest.mark.parametrize("argv", kdzoo_commands(), ids=" ".join)
def test_every_kdzoo_command_parses(argv):
    make_parser().parse_args(argv)


def test_the_grid_example_expands(tmp_path):
    import yaml

    from kdzoo.zoo import expand

    (grid,) = [b for b in blocks("yaml") if "pairs:" in b]
    runs = expand(yaml.safe_load(grid), tmp_path).runs
    crd = [r for r in runs if r.method == "crd"]
    assert len(crd) == 6 and all(r.config.method.params.weight == 0.8 for r in crd)
    assert any(r.published for r in crd)


def test_the_config_example_resolves(tmp_path):
    (yaml_block,) = [b for b in blocks("yaml") if "pairs:" not in b]
    path = tmp_path / "config.yaml"
    path.write_text(yaml_block)
    config = resolve_config(path)
    assert config.method.name == "st" and config.optim.epochs == 240


def test_the_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (python_block,) = [b for b in blocks("python") if "kdzoo.fit" in b]
    exec(compile(python_block.replace('"epochs": 30', '"epochs": 2'), "README", "exec"), {})
    assert (tmp_path / "runs" / "api-example" / "student.pt").is_file()


def test_the_other_python_examples_run():
    for block in blocks("python"):
        if "kdzoo.fit" not in block:
            exec(compile(block, "README", "exec"), {})


def test_the_method_table_lists_every_method():
    import kdzoo

    text = README.read_text()
    for name in kdzoo.list_methods():
        assert f"| `{name}` |" in text, name


def test_the_smoke_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (smoke,) = [c for c in kdzoo_commands() if "--untrained-teacher" in c]
    assert main([*smoke, "--no-progress"]) == 0
