"""The project's declarations agree: MLproject, the defaults file, the training CLI, conda.yaml and pyproject."""
import re
import tomllib
from pathlib import Path

import yaml

from gainakt3exp.config.params import load_defaults
from gainakt3exp.service.entry import build_train_command

ROOT = Path(__file__).resolve().parents[1]


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


# The house's direction of data flow: CLI -> service -> loops -> math -> input. Lower layers never import upper ones.
_SERVICE = {"cli", "cli_base", "data_cli", "cli_study", "runner", "experiment", "study", "study_plan", "study_report",
            "study_repro", "engine", "search", "compare", "runs", "tracking"}
_LOWER = ("train", "evaluate", "model", "losses", "metrics", "trajectory", "data", "layout", "params", "synthetic",
          "files", "errors", "registry", "three_line", "pykt_split")


def _imports(module: str) -> set[str]:
    import ast

    tree = ast.parse((ROOT / "gainakt3exp" / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from .x import y
                names |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif node.module.startswith("gainakt3exp"):
                parts = node.module.split(".")
                names |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
            else:
                names.add(node.module.split(".")[0])
    return names


def test_loops_math_and_input_never_import_the_service_or_mlflow():
    for module in _LOWER:
        if not (ROOT / "gainakt3exp" / f"{module}.py").is_file():
            continue
        bad = _imports(module) & (_SERVICE | {"mlflow", "ray", "optuna"})
        assert not bad, f"gainakt3exp/{module}.py imports {sorted(bad)}: data flows service -> loops -> math"
