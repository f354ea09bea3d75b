"""Tampered artifacts of a trained run are refused with one clear line and exit 2 (the slow part of the bad-input
tests: one tiny training run for the module), in the style of tests/unit/cli/test_bad_inputs.py."""
import json
import os
import subprocess
from pathlib import Path

import pytest
from cli_utils import BIN, HEX_NOBODY, invoke  # noqa: F401 - tests/ is on the path
from cli_utils import all_runs as _all_runs

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _reset_mlflow_uri(reset_mlflow_uri):
    yield


# --- a trained run, then its artifacts tampered with (slow: one tiny training run for the module) -----------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny launched run (1 epoch) in its own store: {uri, run_id, exp_id, artifacts (folder)}."""
    from gainakt3exp.data.synthetic import generate_synthetic

    tmp = tmp_path_factory.mktemp("bad-inputs-run")
    generate_synthetic(tmp / "synthetic", students=120, skills=20, seed=3, maxlen=200)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "GAKT_CACHE_DIR": str(tmp / "cache"),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(BIN / "gakt-launch"), "--short_title", "tamper", "--profile", "tiny", "--epochs", "1",
                           "--data_root", str(tmp)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = _all_runs(uri)
    return {"uri": uri, "run_id": run.info.run_id, "exp_id": run.data.tags["gakt.experiment_id"],
            "artifacts": Path(run.info.artifact_uri.replace("file://", ""))}


@pytest.fixture
def in_trained(trained, monkeypatch):
    """The trained run's store; every artifact is restored afterwards, and no run may have been added."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    saved = {p.name: p.read_bytes() for p in trained["artifacts"].iterdir()}
    yield trained
    for path in trained["artifacts"].iterdir():
        if path.name not in saved:
            path.unlink()
    for name, data in saved.items():
        (trained["artifacts"] / name).write_bytes(data)
    assert len(_all_runs(trained["uri"])) == 1  # no reproduction or evaluation run was created


def _assert_not_evaluated(trained) -> None:
    from mlflow.tracking import MlflowClient

    run = MlflowClient(trained["uri"]).get_run(trained["run_id"])
    assert not [k for k in run.data.metrics if k.startswith("eval/")]
    assert "gakt.evaluated" not in run.data.tags
    assert not (trained["artifacts"] / "eval_results.json").exists()


@pytest.mark.slow
def test_compare_without_a_reproduction_says_how_to_make_one(in_trained):
    result = invoke("compare", in_trained["exp_id"])
    assert result.exit_code == 2
    assert (f"run {in_trained['run_id']} (experiment {in_trained['exp_id']}) has no reproduction; "
            f"run gakt-repro {in_trained['exp_id']}") in result.output


def _edit_params_only(config):
    config["params"]["learning_rate"] = 0.01


def _edit_params_and_overrides(config):
    config["params"]["learning_rate"] = config["overrides"]["learning_rate"] = 0.01


@pytest.mark.slow
@pytest.mark.parametrize("edit, message", [
    (_edit_params_only, "'learning_rate': defaults+overrides give 0.003 but params records 0.01"),
    (_edit_params_and_overrides, "its logged params disagree with its config.json; refusing to reproduce:\n"
                                 "  - 'learning_rate': logged '0.003', config.json '0.01'"),
], ids=["inconsistent-file", "consistent-file-disagreeing-with-logged-params"])
def test_repro_of_an_edited_config_is_refused_naming_the_key(in_trained, edit, message):
    path = in_trained["artifacts"] / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    result = invoke("repro", in_trained["exp_id"])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.slow
def test_repro_without_config_json_is_refused(in_trained):
    (in_trained["artifacts"] / "config.json").unlink()
    result = invoke("repro", in_trained["run_id"])
    assert result.exit_code == 2
    assert f"run {in_trained['run_id']} has no artifact 'config.json'" in result.output


@pytest.mark.slow
def test_eval_of_a_garbage_checkpoint_is_refused(in_trained):
    (in_trained["artifacts"] / "model_best.pth").write_bytes(b"this is not a checkpoint\n" * 10)
    result = invoke("eval", in_trained["exp_id"])
    assert result.exit_code == 2
    assert f"model_best.pth of run {in_trained['run_id']} is not a weights-only checkpoint" in result.output
    assert "re-train the run (gakt-repro) or restore the file" in result.output
    _assert_not_evaluated(in_trained)


class _Payload:
    """Pickles as a call to os.system: what a malicious model_best.pth would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_eval_of_a_checkpoint_carrying_code_refuses_and_runs_nothing(in_trained, tmp_path):
    import torch

    marker = tmp_path / "code-ran"
    torch.save({"state_dict": _Payload(marker), "params": {}, "num_c": 20, "epoch": 1, "val_auc": 0.5},
               in_trained["artifacts"] / "model_best.pth")
    result = invoke("eval", in_trained["run_id"])
    assert result.exit_code == 2
    assert "is not a weights-only checkpoint (Trying to load unsupported GLOBAL posix.system" in result.output
    assert "nothing in it was executed" in result.output
    assert not marker.exists()
    _assert_not_evaluated(in_trained)
