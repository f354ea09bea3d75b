"""Failures during a run: SIGTERM, kill -9, a crash, and a failing artifact write leave a truthful record.

Each training test starts `python -m gainakt3exp.service.entry train` with every parameter (the tiny profile, 30 epochs so it is
still running), waits through the tracking API until epoch 1 and its checkpoint are stored, then stops it.
Marked slow: each waits for one real epoch (~10-30 s on 2 shared cores).
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from gainakt3exp import files, tracking
from gainakt3exp.config.params import format_value, parse_param_strings, resolve_params
from gainakt3exp.service import training as training_service
from gainakt3exp.service.record import config_params, read_config

pytestmark = pytest.mark.slow

WAIT_SECONDS = 600  # generous: the CPU is shared with other jobs


@pytest.fixture(scope="module")
def data_root(synthetic_root) -> Path:
    """The shared small synthetic data set (tests/conftest.py)."""
    return synthetic_root


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh local store; the in-process MLflow URI is reset afterwards so it does not leak into other tests."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    yield uri
    mlflow.set_tracking_uri(None)


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _start_training(data_root: Path, uri: str, tmp_path: Path) -> subprocess.Popen:
    params = resolve_params({"data_root": str(data_root), "epochs": 30}, ["tiny"]).params
    argv = [sys.executable, "-m", "gainakt3exp.service.entry", "train"]
    for key, value in params.items():
        argv += [f"--{key}", format_value(value)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "GAKT_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("MLFLOW_RUN_ID", None)
    log = open(tmp_path / "train.log", "w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                            start_new_session=True)
    log.close()
    return proc


@pytest.fixture
def training(data_root, store, tmp_path):
    """A running training process (its own process group); whatever remains of it is killed afterwards.

    The store is created here first: the test polls it while the process writes, and two processes creating a
    fresh SQLite store at once can corrupt it."""
    tracking.connect()
    proc = _start_training(data_root, store, tmp_path)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _wait_for_checkpoint(proc, uri: str, tmp_path: Path):
    """Poll the store until the run has logged epoch 1 (val/auc) and stored model_best.pth; returns the run."""
    client = _client(uri)
    deadline = time.time() + WAIT_SECONDS
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}):\n{(tmp_path / 'train.log').read_text()}")
        try:
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        except Exception:  # noqa: BLE001 - the store may not exist yet
            runs = []
        if runs:
            run_id = runs[0].info.run_id
            if client.get_metric_history(run_id, "val/auc") and tracking.has_artifact(client, run_id,
                                                                                      "model_best.pth"):
                return client.get_run(run_id)
        time.sleep(0.5)
    raise AssertionError(f"no epoch within {WAIT_SECONDS} s:\n{(tmp_path / 'train.log').read_text()}")


def _best_checkpoint(client, run_id: str) -> dict:
    from gainakt3exp.loops.checkpoint import load_checkpoint

    return load_checkpoint(tracking.download_text(client, run_id, "model_best.pth"))


def _assert_checkpoint_of_a_completed_epoch(client, run_id: str) -> dict:
    checkpoint = _best_checkpoint(client, run_id)
    history = {m.step: m.value for m in client.get_metric_history(run_id, "val/auc")}
    assert checkpoint["epoch"] in history, (checkpoint["epoch"], history)
    assert checkpoint["val_auc"] == pytest.approx(history[checkpoint["epoch"]])
    assert checkpoint["val_auc"] == pytest.approx(max(v for s, v in history.items() if s <= checkpoint["epoch"]))
    return checkpoint


def test_sigterm_marks_the_run_killed_and_keeps_the_best_checkpoint(training, store, tmp_path):
    run = _wait_for_checkpoint(training, store, tmp_path)
    os.kill(training.pid, signal.SIGTERM)
    assert training.wait(timeout=120) == 130, (tmp_path / "train.log").read_text()

    client = _client(store)
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["gakt.outcome"] == "killed"
    assert "SIGTERM" in run.data.tags["gakt.outcome_reason"]
    _assert_checkpoint_of_a_completed_epoch(client, run.info.run_id)
    config, _raw = read_config(client, run.info.run_id)
    assert config_params(config)["epochs"] == 30  # intact: valid JSON, md5 and params consistent
    assert "marked KILLED" in (tmp_path / "train.log").read_text()


def test_kill_9_leaves_running_then_stale_mark_kills_it_and_the_checkpoint_loads(training, store, tmp_path):
    from gainakt3exp.cli import main
    from gainakt3exp.model.network import GainAKT3Exp

    run = _wait_for_checkpoint(training, store, tmp_path)
    run_id = run.info.run_id
    os.kill(training.pid, signal.SIGKILL)
    assert training.wait(timeout=60) == -signal.SIGKILL
    client = _client(store)
    assert client.get_run(run_id).info.status == "RUNNING"

    listed = CliRunner().invoke(main, ["runs", "--stale"])
    assert listed.exit_code == 0, listed.output
    assert run_id in listed.output and f"process {training.pid} on " in listed.output
    assert "no longer exists" in listed.output
    marked = CliRunner().invoke(main, ["runs", "--stale", "--mark"])
    assert marked.exit_code == 0 and "marked 1 run(s) KILLED" in marked.output, marked.output
    after = client.get_run(run_id)
    assert after.info.status == "KILLED" and after.data.tags["gakt.outcome"] == "stale"
    assert "no longer exists" in after.data.tags["gakt.outcome_reason"]
    assert CliRunner().invoke(main, ["runs", "--stale"]).output.strip() == "no stale runs"

    checkpoint = _assert_checkpoint_of_a_completed_epoch(client, run_id)
    params = parse_param_strings(tracking.read_params(after))
    model = GainAKT3Exp.from_params(params, checkpoint["num_c"])
    model.load_state_dict(checkpoint["state_dict"])  # strict: every tensor present with its shape


def test_a_crash_in_training_marks_the_run_failed_with_the_reason(data_root, store, monkeypatch):
    import gainakt3exp.loops.train

    def crash(*_args, **_kwargs):
        raise RuntimeError("simulated crash in the training loop")

    monkeypatch.setattr(gainakt3exp.loops.train, "train_model", crash)
    params = resolve_params({"data_root": str(data_root)}, ["tiny"]).params
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match="simulated crash"):
        training_service.run_training(params)
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the SIGTERM handler is removed again

    client = _client(store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"
    assert run.data.tags["gakt.outcome"] == "failed"
    assert run.data.tags["gakt.outcome_reason"] == "RuntimeError: simulated crash in the training loop"
    assert tracking.has_artifact(client, run.info.run_id, "config.json")  # written before the crash, kept


def _new_run():
    client = tracking.connect()
    exp_id = tracking.ensure_experiment(client, "atomic-writes")
    return client, client.create_run(exp_id).info.run_id


def _artifact_dir(client, run_id) -> Path:
    return Path(client.get_run(run_id).info.artifact_uri.replace("file://", ""))


def test_publish_bytes_replaces_an_artifact_whole_and_leaves_no_temp_file(store):
    client, run_id = _new_run()
    tracking.publish_bytes(client, run_id, "results.json", b'{"old": 1}\n')
    tracking.publish_bytes(client, run_id, "results.json", b'{"new": 2}\n' * 1000)
    folder = _artifact_dir(client, run_id)
    assert sorted(p.name for p in folder.iterdir()) == ["results.json"]
    assert tracking.download_text(client, run_id, "results.json") == b'{"new": 2}\n' * 1000


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_failed_artifact_write_keeps_the_old_artifact_and_no_temp_file(store, monkeypatch, failing):
    client, run_id = _new_run()
    tracking.publish_bytes(client, run_id, "model_best.pth", b"epoch-1 weights")

    def boom(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(files.os, failing, boom)
        with pytest.raises(OSError, match="No space left"):
            tracking.publish_bytes(client, run_id, "model_best.pth", b"epoch-2 weights, never complete")
    folder = _artifact_dir(client, run_id)
    assert sorted(p.name for p in folder.iterdir()) == ["model_best.pth"]
    assert (folder / "model_best.pth").read_bytes() == b"epoch-1 weights"
