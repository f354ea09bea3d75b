"""The project's declarations agree: MLproject, the defaults file, the training CLI, conda.yaml and pyproject."""
import re
import tomllib

import yaml

from gainakt3exp.config.params import load_defaults
from gainakt3exp.paths import PROJECT_ROOT
from gainakt3exp.service.entry import build_train_command

ROOT = PROJECT_ROOT


def _mlproject():
    return yaml.safe_load((ROOT / "MLproject").read_text())


def test_mlproject_main_declares_every_parameter_without_a_default():
    main = _mlproject()["entry_points"]["main"]
    defaults = load_defaults().values
    assert list(main["parameters"]) == list(defaults)
    for key, spec in main["parameters"].items():
        assert spec == "string", f"{key} must be a plain string parameter with no default"


def test_mlproject_command_passes_each_parameter_once_to_the_training_cli():
    command = _mlproject()["entry_points"]["main"]["command"]
    passed = re.findall(r"--(\w+) \{(\w+)\}", command)
    assert [a for a, _ in passed] == [b for _, b in passed]
    assert [a for a, _ in passed] == list(load_defaults().values)


def test_training_cli_requires_exactly_the_parameters():
    command = build_train_command()
    names = [p.name for p in command.params if p.name != "help"]
    assert names == list(load_defaults().values)
    assert all(p.required and not isinstance(p.default, str) for p in command.params if p.name != "help")


def test_eval_entry_point_takes_the_run():
    assert _mlproject()["entry_points"]["eval"]["parameters"] == {"run": "string"}


def test_conda_yaml_and_pyproject_pin_the_same_dependencies():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip_deps = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(pip_deps) == sorted(pyproject)
    assert "torch==2.13.0" in pyproject


def test_every_subpackage_and_top_module_is_in_the_layers_contract():
    """lint-imports (run by `make test`) holds the layers; a folder or module missing from the contract would be
    unchecked, so the contract must name every one."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in layer.split("|")}
    package = ROOT / "gainakt3exp"
    present = {f"gainakt3exp.{p.name}" for p in package.iterdir() if (p / "__init__.py").is_file()}
    present |= {f"gainakt3exp.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    assert named == present


def test_the_math_contract_forbids_mlflow_ray_optuna_and_the_upper_layers():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    forbidden = [c for c in config["contracts"] if c["type"] == "forbidden"
                 and "gainakt3exp.model" in c["source_modules"]]
    assert len(forbidden) == 1
    contract = forbidden[0]
    assert {"gainakt3exp.loops", "gainakt3exp.objective", "gainakt3exp.metrics"} <= set(contract["source_modules"])
    assert {"mlflow", "ray", "optuna", "gainakt3exp.tracking", "gainakt3exp.service"} <= set(
        contract["forbidden_modules"])
    assert not contract.get("allow_indirect_imports")  # indirect imports count: no route through another module
