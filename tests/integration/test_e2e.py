"""End to end through the real `mlflow run` on a fresh local store: launch -> eval -> repro -> compare.

Marked slow (each `mlflow run` of the tiny profile takes ~15-30 s on 2 cores). CI runs them.
"""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gainakt3exp.config.params import load_defaults
from gainakt3exp.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow

ROOT = PROJECT_ROOT
BIN = Path(sys.executable).parent


def gakt(env, *args, check=True):
    """Run one of the console scripts; returns the CompletedProcess (stdout+stderr captured)."""
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh local store + a small synthetic data set; one launched, evaluated and reproduced run."""
    from gainakt3exp.data.synthetic import generate_synthetic

    tmp = tmp_path_factory.mktemp("e2e")
    generate_synthetic(tmp / "synthetic", students=120, skills=20, seed=3, maxlen=200)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "GAKT_CACHE_DIR": str(tmp / "cache"), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    launch = gakt(env, "gakt-launch", "--short_title", "e2e", "--profile", "tiny", "--data_root", str(tmp))
    exp_id = gakt(env, "gakt-runs", "--latest_id").stdout.strip()
    return {"tmp": tmp, "env": env, "exp_id": exp_id, "launch": launch}


def _client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(store["env"]["MLFLOW_TRACKING_URI"])


def _run(store, exp_id=None, repro=False):
    from gainakt3exp import tracking

    runs = _client(store).search_runs(
        [e.experiment_id for e in _client(store).search_experiments()],
        f"tags.`gakt.experiment_id` = '{exp_id or store['exp_id']}'")
    return [r for r in runs if (tracking.TAG_REPRO_OF in r.data.tags) == repro]


def _artifact(store, run_id, name) -> bytes:
    path = _client(store).download_artifacts(run_id, name, str(store["tmp"] / f"dl-{run_id}"))
    return Path(path).read_bytes()


def test_launched_run_holds_params_trajectory_shares_and_artifacts(store):
    (run,) = _run(store)
    client = _client(store)
    assert run.info.status == "FINISHED" and run.data.tags["gakt.outcome"] == "finished"
    from gainakt3exp.config.params import load_defaults

    assert set(run.data.params) == set(load_defaults().values)
    assert run.data.params["d_model"] == "16" and run.data.params["use_amp"] == "false"
    for key in ("trajectory/mastery_correlation", "trajectory/gain_correlation", "val/auc", "loss_shares/main",
                "loss_shares/constraint_total", "loss_shares/alignment", "loss_shares/lag", "loss_shares/retention"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "model_best.pth", "results.json", "metrics_epoch.csv", "trajectory.png"} <= names
    config = json.loads(_artifact(store, run.info.run_id, "config.json"))
    assert config["experiment_id"] == store["exp_id"] and config["params"]["d_model"] == 16
    assert "mlflow run" in config["commands"]["train_explicit"]
    assert config["commands"]["train_explicit"].count(" -P ") == len(load_defaults().values)
    assert config["fixed_constants"]["dropout_mask_levels"] == 65536
    assert config["fixed_constants"]["pearson_variance_eps"] == 1e-12
    # the objective report: which terms act, which are identically zero (gain head on) and why
    assert config["objective_report"]["monotonicity"]["status"] == "identically zero"
    assert run.data.tags["gakt.objective.monotonicity"] == "identically zero"
    assert run.data.tags["gakt.objective.sparsity"] == "in force"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/objective")] == [1, 2]
    for tag in ("gakt.git_commit", "gakt.git_dirty", "gakt.torch_version", "gakt.mlflow_version", "gakt.device",
                "gakt.data_hash"):
        assert run.data.tags[tag]


def test_eval_repro_compare_says_identical_and_config_is_byte_identical(store):
    env, exp_id = store["env"], store["exp_id"]
    evaluated = gakt(env, "gakt-eval", exp_id)
    assert "test_auc" in evaluated.stdout
    (original,) = _run(store)
    assert "eval/test_auc" in original.data.metrics and "eval/test_window_auc" in original.data.metrics
    gakt(env, "gakt-repro", exp_id)
    (repro,) = _run(store, repro=True)
    assert repro.info.status == "FINISHED"
    assert repro.data.tags["gakt.reproduction_of"] == original.info.run_id
    assert _artifact(store, repro.info.run_id, "config.json") == _artifact(store, original.info.run_id, "config.json")
    compared = gakt(env, "gakt-compare", exp_id, check=False)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert "verdict: identical" in compared.stdout
    as_json = json.loads(gakt(env, "gakt-compare", exp_id, "--json").stdout)
    assert as_json["verdict"] == "identical"


def _one_epoch_run_config(store, title: str) -> tuple[str, Path, dict]:
    """Launch a 1-epoch tiny run; return its 6-digit id, the path of its config.json and the parsed config."""
    env = store["env"]
    gakt(env, "gakt-launch", "--short_title", title, "--profile", "tiny", "--epochs", "1",
         "--data_root", str(store["tmp"]))
    exp_id = gakt(env, "gakt-runs", "--latest_id").stdout.strip()
    (run,) = _run(store, exp_id)
    config_path = Path(run.info.artifact_uri.replace("file://", "")) / "config.json"
    return exp_id, config_path, json.loads(config_path.read_text())


def test_repro_of_a_tampered_config_is_refused_with_the_reason(store):
    env = store["env"]
    exp_id, config_path, config = _one_epoch_run_config(store, "tamper")
    config["defaults"]["dropout"] = 0.3  # a default changed after the run
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    refused = gakt(env, "gakt-repro", exp_id, check=False)
    assert refused.returncode == 2
    assert "do not match its md5" in refused.stderr and "dropout" in refused.stderr
    assert not _run(store, exp_id, repro=True)


def test_repro_warns_when_the_codes_fixed_constants_differ_from_the_original(store):
    """A run made by code with other fixed constants (e.g. an older dropout) reproduces, with a warning."""
    env = store["env"]
    exp_id, config_path, config = _one_epoch_run_config(store, "consts")
    config["fixed_constants"]["dropout_mask_levels"] = 256
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    reproduced = gakt(env, "gakt-repro", exp_id)
    warning = "warning: fixed constants of the code differ from the original run's: dropout_mask_levels"
    assert warning in reproduced.stdout + reproduced.stderr
    (repro,) = _run(store, exp_id, repro=True)
    assert repro.info.status == "FINISHED"


def test_a_run_made_before_a_parameter_existed_reproduces_with_its_default_and_compares_identical(store):
    """A config.json without lr_schedule (written before it existed): gakt-repro names it, fills in its default
    (plateau, the behaviour the code had before) and the reproduction's metrics equal the original's."""
    from gainakt3exp.config.params import defaults_md5

    env = store["env"]
    exp_id, config_path, config = _one_epoch_run_config(store, "older")
    for part in ("defaults", "params"):
        del config[part]["lr_schedule"]
    config["md5"] = defaults_md5(config["defaults"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    reproduced = gakt(env, "gakt-repro", exp_id)
    assert ("was made before these parameters existed; they take their defaults, which keep the code's behaviour "
            "from before: lr_schedule=plateau") in reproduced.stdout + reproduced.stderr
    (repro,) = _run(store, exp_id, repro=True)
    assert repro.info.status == "FINISHED" and repro.data.params["lr_schedule"] == "plateau"
    compared = gakt(env, "gakt-compare", exp_id, check=False)
    assert compared.returncode == 0 and "verdict: identical" in compared.stdout, compared.stdout + compared.stderr


def test_compare_with_a_changed_parameter_exits_1_and_names_the_metrics(store):
    env = store["env"]
    gakt(env, "gakt-launch", "--short_title", "seed7", "--profile", "tiny", "--seed", "7",
         "--data_root", str(store["tmp"]))
    other = gakt(env, "gakt-runs", "--latest_id").stdout.strip()
    (other_run,) = _run(store, other)
    (original,) = _run(store)
    compared = gakt(env, "gakt-compare", original.info.run_id, "--repro", other_run.info.run_id, check=False)
    assert compared.returncode == 1
    assert "verdict: differs" in compared.stdout
    assert "val/auc" in compared.stdout and "seed" in compared.stdout


def test_dry_run_prints_a_command_that_reproduces_the_launch(store):
    env = store["env"]
    dry = gakt(env, "gakt-launch", "--short_title", "e2e", "--profile", "tiny", "--data_root", str(store["tmp"]),
               "--dry_run")
    command = dry.stdout.strip()
    assert command.startswith("MLFLOW_TRACKING_URI=") and " -P seed=42 " in command
    runs_before = len(_client(store).search_runs(["1"], max_results=1000))
    subprocess.run(["bash", "-c", command], env=env, check=True, capture_output=True, timeout=900)
    hand_id = shlex.split(command)[shlex.split(command).index("--run-name") + 1].rsplit("_", 1)[1]
    (hand,) = _run(store, hand_id)
    (original,) = _run(store)
    assert hand.data.params == original.data.params
    compared = gakt(env, "gakt-compare", original.info.run_id, "--repro", hand.info.run_id, check=False)
    assert "verdict: identical" in compared.stdout, compared.stdout
    assert len(_client(store).search_runs(["1"], max_results=1000)) == runs_before + 1


def test_dry_run_writes_nothing(store, tmp_path):
    env = {**store["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    dry = gakt(env, "gakt-launch", "--short_title", "dry", "--profile", "tiny", "--data_root", str(store["tmp"]),
               "--dry_run")
    assert dry.stdout.count(" -P ") == len(load_defaults().values)
    assert list(tmp_path.iterdir()) == []


def test_mlflow_run_refuses_missing_parameters_listing_them(store):
    proc = subprocess.run([str(BIN / "mlflow"), "run", str(ROOT), "--env-manager", "local", "-P", "dataset=synthetic"],
                          env=store["env"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "data_root" in proc.stderr and "fold" in proc.stderr


def test_mlflow_run_with_an_ill_typed_value_is_refused_by_our_validation(store):
    from gainakt3exp.config.params import resolve_params
    from gainakt3exp.service.record import param_args

    params = resolve_params({"data_root": str(store["tmp"])}, ["tiny"]).params
    args = [a if a != "epochs=2" else "epochs=abc" for a in param_args(params)]
    proc = subprocess.run([str(BIN / "mlflow"), "run", str(ROOT), "--env-manager", "local", *args],
                          env=store["env"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "epochs='abc': expected an integer" in proc.stderr


def test_plain_mlflow_run_with_every_parameter_records_the_whole_trajectory(store):
    """Exactly the MLproject entry point: `mlflow run . --env-manager local -P ...` (every parameter, 3 epochs)."""
    from gainakt3exp.config.params import load_defaults, resolve_params
    from gainakt3exp.service.record import param_args

    params = resolve_params({"data_root": str(store["tmp"]), "epochs": "3"}, ["tiny"]).params
    proc = subprocess.run([str(BIN / "mlflow"), "run", str(ROOT), "--env-manager", "local", "--experiment-name",
                           "plain", *param_args(params)], env=store["env"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    client = _client(store)
    (run,) = client.search_runs([client.get_experiment_by_name("plain").experiment_id])
    assert run.data.params.keys() == load_defaults().values.keys()
    trajectory = [k for k in run.data.metrics if k.startswith(("trajectory/", "loss_shares/", "weights/"))]
    assert len(trajectory) >= 20
    for key in trajectory:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3], key
    assert {f.path for f in client.list_artifacts(run.info.run_id)} >= {
        "config.json", "model_best.pth", "results.json", "metrics_epoch.csv", "trajectory.png"}


def test_the_logged_model_is_registered_served_and_predicts_like_the_training_forward_pass(store, tmp_path):
    """Issue 24's acceptance on a local store: LoggedModel listed and linked to the best epoch's metrics, dataset
    inputs, gakt-register with an alias, gakt-predict, a real `mlflow models serve` (same numbers, 400 on a bad
    request, still serving after it)."""
    from serving_utils import check_served_model

    (run,) = _run(store)
    found = check_served_model(store["env"], run.info.run_id, store["tmp"], tmp_path, name="gakt-e2e")
    assert found["model"].artifact_location.startswith(str(store["tmp"])) or "mlruns" in found["model"].artifact_location
