"""A study's definition: children in order, typed grid values, names, the launch line, the search space and the
search objective. No Ray, no store: fast."""
import json
import math
import shlex

import pytest
from click.testing import CliRunner

from gainakt3exp.cli import main
from gainakt3exp.errors import ConfigError
from gainakt3exp.study import search
from gainakt3exp.study.plan import build_plan, child_title, launch_line


def _plan(synthetic_root, grid=(), folds="0,1", seeds="42,43", **overrides):
    return build_plan("paper", ["tiny"], {"data_root": str(synthetic_root), **overrides}, folds, seeds, list(grid),
                      False, 2, 1)


def test_children_are_ordered_grid_point_then_fold_then_seed_with_typed_values(synthetic_root):
    plan = _plan(synthetic_root, grid=["learning_rate=1e-3,0.003", "use_gain_head=true"], folds="1,0", seeds="7")
    assert plan.grid == {"learning_rate": [0.001, 0.003], "use_gain_head": [True]}
    assert [(s.index, s.point, s.fold, s.seed) for s in plan.slots] == [(0, 0, 1, 7), (1, 0, 0, 7), (2, 1, 1, 7),
                                                                        (3, 1, 0, 7)]
    assert [s.params["learning_rate"] for s in plan.slots] == [0.001, 0.001, 0.003, 0.003]
    assert all(s.params["d_model"] == 16 and s.params["seed"] == 7 for s in plan.slots)  # the profile applies
    assert [child_title(plan, s) for s in plan.slots[:2]] == ["paper-g0-f1-s7", "paper-g0-f0-s7"]


def test_without_a_grid_children_are_named_by_fold_and_seed(synthetic_root):
    plan = _plan(synthetic_root)
    assert [child_title(plan, s) for s in plan.slots] == ["paper-f0-s42", "paper-f0-s43", "paper-f1-s42",
                                                          "paper-f1-s43"]


def test_a_title_too_long_for_the_children_is_refused(synthetic_root):
    with pytest.raises(ConfigError, match="too long for the child names"):
        build_plan("t" * 60, ["tiny"], {"data_root": str(synthetic_root)}, "0", "42", [], False, 2, 1)


def test_dry_run_prints_the_launch_line_and_every_childs_command_and_writes_nothing(synthetic_root, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = ["study", "launch", "--short_title", "dry", "--profile", "tiny", "--data_root", str(synthetic_root),
            "--folds", "0,1", "--seeds", "42", "--grid", "learning_rate=0.001,0.003", "--eval", "--dry_run"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "# study of 4 children on a local Ray cluster; nothing written"
    assert len(lines) == 6 and all(" -P fold=" in line for line in lines[2:])
    assert " -P learning_rate=0.003 " in lines[5] and " -P fold=1 " in lines[5]
    assert not (tmp_path / "store").exists()
    again = CliRunner().invoke(main, ["study", *shlex.split(lines[1])[1:], "--dry_run"])  # the launch line round trip
    assert again.exit_code == 0 and again.output == result.output


def test_launch_line_holds_the_overrides_folds_seeds_engine_and_a_points_values(synthetic_root):
    plan = _plan(synthetic_root, epochs="3")
    assert launch_line(plan, {"learning_rate": 0.003}) == (
        f"gakt-study launch --short_title paper --profile tiny --data_root {synthetic_root} --epochs 3 "
        "--learning_rate 0.003 --folds 0,1 --seeds 42,43 --workers 2 --threads_per_run 1")


def test_the_search_space_suggests_values_typed_like_the_parameters(tmp_path):
    import optuna

    path = tmp_path / "space.json"
    path.write_text(json.dumps({"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                                "num_encoder_blocks": {"type": "int", "low": 1, "high": 2},
                                "use_gain_head": {"type": "categorical", "choices": [True, False]}}))
    space = search.load_space(path)
    values = search.suggest(optuna.trial.FixedTrial({"learning_rate": 0.002, "num_encoder_blocks": 2,
                                                     "use_gain_head": False}), space)
    assert values == {"learning_rate": 0.002, "num_encoder_blocks": 2, "use_gain_head": False}
    assert [type(v) for v in values.values()] == [float, int, bool]


class _Metric:
    def __init__(self, value):
        self.value = value


class _SpyClient:
    """Runs whose test metrics would mislead a search; records every metric key asked for."""

    def __init__(self, runs):
        self.runs, self.read = runs, []

    def get_metric_history(self, run_id, key):
        self.read.append(key)
        return [_Metric(v) for v in self.runs[run_id].get(key, [])]


def test_the_search_objective_is_the_mean_best_val_auc_and_reads_no_other_metric():
    client = _SpyClient({"a": {"val/auc": [0.6, 0.7, float("nan")], "eval/test_auc": [0.99]},
                         "b": {"val/auc": [0.65, 0.64], "eval/test_auc": [0.1]}})
    assert search.trial_objective(client, ["a", "b"]) == math.fsum([0.7, 0.65]) / 2
    assert client.read == ["val/auc", "val/auc"]
