"""Bad input to gakt-study gets one clear line (the problem and the fix), exit 2, and writes nothing.

The style of tests/unit/cli/test_bad_inputs.py: commands run in-process through click's CliRunner on gainakt3exp.cli.main;
each test checks the exit status, the exact error line, and that no tracking store was created. None needs Ray or
a training (the refusals come first).
"""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gainakt3exp.cli import main


@pytest.fixture(autouse=True)
def _reset_mlflow_uri(reset_mlflow_uri):
    yield


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _refused_with_one_line(result, store_dir: Path, line: str) -> None:
    """Exit 2, exactly one output line `error: <line>`, and no store created."""
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {line}"], result.output
    assert not store_dir.exists()


def _study(data_root, *extra):
    return CliRunner().invoke(main, ["study", "launch", "--short_title", "bad", "--profile", "tiny", "--data_root",
                                     str(data_root), "--seeds", "42", *extra])


def test_an_unknown_fold_is_refused_listing_the_folds(synthetic_root, store_dir):
    _refused_with_one_line(_study(synthetic_root, "--folds", "0,9"), store_dir,
                           "--folds 0,9: fold=9: synthetic has folds [0, 1, 2, 3, 4]")


def test_a_grid_key_that_is_not_a_parameter_is_refused(synthetic_root, store_dir):
    _refused_with_one_line(_study(synthetic_root, "--folds", "0", "--grid", "learn_rate=0.1,0.2"), store_dir,
                           "--grid learn_rate=0.1,0.2: 'learn_rate' is not a parameter; did you mean 'learning_rate'?")


def test_a_grid_value_of_the_wrong_type_is_refused(synthetic_root, store_dir):
    _refused_with_one_line(_study(synthetic_root, "--folds", "0", "--grid", "epochs=1,abc"), store_dir,
                           "--grid epochs=1,abc: epochs='abc': expected an integer, e.g. 12")


def test_zero_workers_is_refused(synthetic_root, store_dir):
    _refused_with_one_line(_study(synthetic_root, "--folds", "0", "--workers", "0"), store_dir,
                           "--workers 0: must be a whole number >= 1 (children at once x torch threads each; e.g. "
                           "--workers 2 --threads_per_run 1 on 2 cores)")


def test_an_unreachable_address_is_refused_in_seconds(synthetic_root, store_dir):
    from server_utils import free_port

    port = free_port()  # nobody listens there
    _refused_with_one_line(_study(synthetic_root, "--folds", "0", "--address", f"127.0.0.1:{port}"), store_dir,
                           f"--address 127.0.0.1:{port}: no Ray cluster answers there (Connection refused); start "
                           "one with `ray start --head --port <port>` on that host, or omit --address (and unset "
                           "RAY_ADDRESS) to start a local cluster")


def test_a_malformed_space_file_is_refused(synthetic_root, store_dir, tmp_path):
    space = tmp_path / "space.json"
    space.write_text('{"learning_rate": {"type": "float", "low": 0.001}')
    result = CliRunner().invoke(main, ["study", "search", "--short_title", "bad", "--profile", "tiny", "--data_root",
                                       str(synthetic_root), "--folds", "0", "--seeds", "42", "--space", str(space),
                                       "--trials", "2"])
    _refused_with_one_line(result, store_dir, f"space file {space} is not valid JSON (line 1: Expecting ',' "
                                              "delimiter); fix the file")


@pytest.mark.parametrize("spec, line", [
    ({"d_model": {"type": "float", "low": 16, "high": 64}}, "'d_model': a int parameter takes \"type\": \"int\""),
    ({"learning_rate": {"type": "float", "low": 0.01, "high": 0.001}}, "'learning_rate': \"low\" 0.01 must be below "
                                                                       "\"high\" 0.001"),
    ({"optimizer": {"type": "categorical", "choices": []}}, "'optimizer': a categorical needs a non-empty list "
                                                            "\"choices\""),
    ({"fold": {"type": "int", "low": 0, "high": 4}}, "'fold' is not a searchable parameter (fold and seed come from "
                                                     "--folds/--seeds; see configs/parameters.csv)"),
], ids=["float-for-int", "low-above-high", "no-choices", "fold"])
def test_a_space_file_with_a_bad_distribution_is_refused_naming_the_key(synthetic_root, store_dir, tmp_path, spec,
                                                                        line):
    space = tmp_path / "space.json"
    space.write_text(json.dumps(spec))
    result = CliRunner().invoke(main, ["study", "search", "--short_title", "bad", "--profile", "tiny", "--data_root",
                                       str(synthetic_root), "--folds", "0", "--seeds", "42", "--space", str(space),
                                       "--trials", "2"])
    _refused_with_one_line(result, store_dir, f"space file {space}: {line}")


def test_fold_given_as_a_parameter_is_refused_pointing_at_folds(synthetic_root, store_dir):
    _refused_with_one_line(_study(synthetic_root, "--folds", "0", "--fold", "1"), store_dir,
                           "--fold 1: a study sets fold per child; use --folds 1 (a list, e.g. --folds 0,1,2)")


def test_every_problem_of_a_study_is_reported_at_once(synthetic_root, store_dir):
    result = _study(synthetic_root, "--folds", "0,9", "--grid", "epochs=1,abc", "--workers", "0", "--d_model", "15")
    assert result.exit_code == 2 and not store_dir.exists()
    lines = result.output.strip().splitlines()
    assert lines[0] == "error: 2 study problems:", result.output  # a broken base stops before the children
    assert lines[1].startswith("  - --workers 0: ") and lines[2] == "  - --grid epochs=1,abc: epochs='abc': " \
                                                                   "expected an integer, e.g. 12"
    fixed = _study(synthetic_root, "--folds", "0,9", "--grid", "epochs=1,2", "--d_model", "15")
    assert fixed.output.strip().splitlines()[1:] == [
        "  - d_model=15 n_heads=2: n_heads must divide d_model (e.g. n_heads 1, or d_model 16)",
        "  - --folds 0,9: fold=9: synthetic has folds [0, 1, 2, 3, 4]"], fixed.output
