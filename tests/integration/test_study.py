"""Studies end to end on a real Ray cluster and real `mlflow run` children: launch, aggregate, show, repro,
compare, a crashing child and resume, SIGTERM and kill -9 of the driver, a search, a tracking server.

Marked slow: each child is a tiny `mlflow run` (~15-25 s on 2 shared cores). One Ray cluster (2 CPUs, the
session fixture ray_address in conftest.py) serves the tests that pass --address; the reproduction in
test_repro_then_compare_says_identical and the kill -9 test with a local cluster take the default path (the
command starts and stops its own local cluster).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gainakt3exp.service.runs import process_alive

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
WAIT = 600  # seconds; the CPU is shared
LONG = ("--epochs", "500", "--patience", "500")  # a child that is surely still training when the test stops it


def gakt(env, *args, check=True, timeout=1200):
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def store_env(folder: Path, uri: str | None = None) -> dict:
    """A client environment on its own store; no RAY_ADDRESS (the tests say where to run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_", "GAKT_EXPERIMENT"))}
    env.update(MLFLOW_TRACKING_URI=uri or f"sqlite:///{folder / 'mlflow.db'}", GAKT_CACHE_DIR=str(folder / "cache"),
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return env


def _client(env):
    from mlflow.tracking import MlflowClient

    return MlflowClient(env["MLFLOW_TRACKING_URI"])


def _runs(client, filter_string=""):
    return client.search_runs([e.experiment_id for e in client.search_experiments()], filter_string,
                              max_results=1000)


def _parent(client, study_id, repro=False):
    (run,) = [r for r in _runs(client, f"tags.`gakt.experiment_id` = '{study_id}'")
              if r.data.tags.get("gakt.kind") in ("study", "search")
              and ("gakt.reproduction_of" in r.data.tags) == repro]
    return run


def _children(client, parent_id):
    """The latest attempt of each slot, by slot."""
    latest = {}
    for run in _runs(client, f"tags.`gakt.study_run` = '{parent_id}'"):
        slot, attempt = int(run.data.tags["gakt.study_slot"]), int(run.data.tags["gakt.study_attempt"])
        if slot not in latest or attempt > int(latest[slot].data.tags["gakt.study_attempt"]):
            latest[slot] = run
    return [latest[s] for s in sorted(latest)]


def _best_val_auc(client, run_id):
    return max(m.value for m in client.get_metric_history(run_id, "val/auc"))


def _artifact(client, run_id, name, folder) -> bytes:
    return Path(client.download_artifacts(run_id, name, str(folder))).read_bytes()


def _study_id(output: str) -> str:
    return re.search(r"^study (\d{6}):", output, re.M).group(1)


def _launch_args(title, data_root, *extra):
    return ("gakt-study", "launch", "--short_title", title, "--profile", "tiny", "--data_root", str(data_root),
            *extra)


# --- a finished study, its reproduction and the comparison --------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_root, ray_address):
    tmp = tmp_path_factory.mktemp("study")
    env = store_env(tmp)
    proc = gakt(env, *_launch_args("folds", synthetic_root, "--folds", "0,1", "--seeds", "42,43",
                                   "--address", ray_address))
    return {"tmp": tmp, "env": env, "proc": proc, "study_id": _study_id(proc.stdout), "address": ray_address}


def assert_finished_study(client, study_id, folder, address, n_children=4):
    """4 FINISHED children nested under the parent; the parent's aggregate equals what the children logged."""
    parent = _parent(client, study_id)
    tags = parent.data.tags
    assert parent.info.status == "FINISHED" and tags["gakt.outcome"] == "finished"
    assert tags["gakt.outcome_reason"] == f"finished {n_children} of {n_children}"
    children = _children(client, parent.info.run_id)
    assert len(children) == n_children
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["gakt.outcome"] == "finished"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["gakt.study_id"] == study_id and child.data.tags["gakt.kind"] == "train"
        assert child.data.tags["gakt.torch_threads"] == "1"
    assert sorted((int(c.data.params["fold"]), int(c.data.params["seed"])) for c in children) == [
        (0, 42), (0, 43), (1, 42), (1, 43)]
    best = [_best_val_auc(client, c.info.run_id) for c in children]
    assert parent.data.metrics["study/val_auc_mean"] == math.fsum(best) / len(best)
    assert parent.data.metrics["study/val_auc_std"] == statistics.stdev(best)
    assert parent.data.metrics["study/children_finished"] == n_children
    table = list(csv.DictReader(io.StringIO(_artifact(client, parent.info.run_id, "study_results.csv",
                                                      folder).decode())))
    assert [r["run_id"] for r in table] == [c.info.run_id for c in children]
    assert [float(r["val_auc"]) for r in table] == best
    markdown = _artifact(client, parent.info.run_id, "study_results.md", folder).decode()
    mean, std = parent.data.metrics["study/val_auc_mean"], parent.data.metrics["study/val_auc_std"]
    assert f"| all | 4 | {mean:.4f} ± {std:.4f} |" in markdown
    assert _artifact(client, parent.info.run_id, "study_trajectory.png", folder)[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads(_artifact(client, parent.info.run_id, "config.json", folder))
    assert config["folds"] == [0, 1] and config["seeds"] == [42, 43] and config["kind"] == "study"
    assert config["engine"]["workers"] == 2 and config["engine"]["threads_per_run"] == 1
    assert config["engine"]["address"] == address and config["engine"]["max_retries"] == 2
    child_config = json.loads(_artifact(client, children[0].info.run_id, "config.json", folder))
    assert child_config["commands"]["train_explicit"].startswith("OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ")
    assert child_config["study"]["parent_run_id"] == parent.info.run_id and child_config["params"]["fold"] == 0
    return parent, children


def test_study_of_2_folds_x_2_seeds_nests_4_finished_children_and_aggregates_them(finished):
    client = _client(finished["env"])
    parent, _children_ = assert_finished_study(client, finished["study_id"], finished["tmp"] / "dl",
                                               finished["address"])
    assert f"study {finished['study_id']}: finished 4 of 4" in finished["proc"].stdout
    shown = json.loads(gakt(finished["env"], "gakt-study", "show", finished["study_id"], "--json").stdout)
    assert shown["finished"] == 4 and shown["points"][0]["mean"]["val_auc"] == parent.data.metrics["study/val_auc_mean"]
    listed = gakt(finished["env"], "gakt-runs").stdout.splitlines()
    assert len(listed) == 3 and finished["study_id"] in listed[2] and "4/4" in listed[2]  # children not listed


def test_repro_then_compare_says_identical(finished):
    """gakt-repro of a study starts its own local Ray cluster (no --address, no RAY_ADDRESS: the default path)."""
    env, study_id = finished["env"], finished["study_id"]
    reproduced = gakt(env, "gakt-repro", study_id)
    assert f"reproduction of study {study_id}: finished 4 of 4" in reproduced.stdout
    client = _client(env)
    original, repro = _parent(client, study_id), _parent(client, study_id, repro=True)
    assert repro.data.tags["gakt.reproduction_of"] == original.info.run_id
    config = json.loads(_artifact(client, repro.info.run_id, "config.json", finished["tmp"] / "dl-repro"))
    assert config["engine"]["address"] == finished["address"]  # byte for byte the original's definition
    pairs = zip(_children(client, original.info.run_id), _children(client, repro.info.run_id))
    for child, copy in pairs:
        assert copy.data.tags["gakt.reproduction_of"] == child.info.run_id
        assert copy.data.tags["mlflow.parentRunId"] == repro.info.run_id
    compared = gakt(env, "gakt-compare", study_id, check=False)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert compared.stdout.strip().endswith("verdict: identical")
    assert compared.stdout.count("identical") == 5  # 4 children + the verdict
    as_json = json.loads(gakt(env, "gakt-compare", study_id, "--json").stdout)
    assert as_json["verdict"] == "identical" and len(as_json["children"]) == 4 and as_json["exit_code"] == 0


# --- faults -------------------------------------------------------------------------------------------------------


def _start(env, args, tmp_path):
    """The driver in the background; the store is created first, since the test reads it while the driver writes
    (two processes creating a fresh SQLite store at once can corrupt it)."""
    _client(env).search_experiments()
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    return proc


def _wait_for_training(client, driver, slot, tmp_path):
    """Poll the store until slot's child trains (its runner replaced the driver's pid with its own); its pid."""
    deadline = time.time() + WAIT
    while time.time() < deadline:
        if driver.poll() is not None:
            raise AssertionError(f"driver exited {driver.returncode}:\n{(tmp_path / 'driver.log').read_text()}")
        for run in _runs(client, f"tags.`gakt.study_slot` = '{slot}'"):
            tags = run.data.tags
            if tags.get("gakt.outcome") == "running" and tags.get("gakt.pid") != str(driver.pid):
                return run, int(tags["gakt.pid"])
        time.sleep(0.5)
    raise AssertionError(f"slot {slot} never started:\n{(tmp_path / 'driver.log').read_text()}")


def _wait_gone(pid, seconds=60):
    deadline = time.time() + seconds
    while process_alive(pid) and time.time() < deadline:
        time.sleep(0.2)
    return not process_alive(pid)


def test_a_crashing_child_fails_alone_and_resume_finishes_it(tmp_path, synthetic_root, ray_address):
    """The training of slot 2 is SIGKILLed (as the OOM killer would): FAILED with its reason, the others finish,
    exit 1 naming it; gakt-study resume runs only that slot again."""
    env = store_env(tmp_path)
    driver = _start(env, _launch_args("crash", synthetic_root, "--folds", "0,1", "--seeds", "42,43", "--address",
                                      ray_address), tmp_path)
    client = _client(env)
    victim, pid = _wait_for_training(client, driver, 2, tmp_path)
    os.kill(pid, signal.SIGKILL)
    assert driver.wait(timeout=WAIT) == 1
    out = (tmp_path / "driver.log").read_text()
    exp_id = victim.data.tags["gakt.experiment_id"]
    assert re.search(rf"^study \d{{6}}: finished 3 of 4; failed: {exp_id} \(fold 1, seed 42\): ", out, re.M), out
    failed = client.get_run(victim.info.run_id)
    assert failed.info.status == "FAILED" and failed.data.tags["gakt.outcome"] == "failed"
    assert "ended without recording an outcome" in failed.data.tags["gakt.outcome_reason"]
    study_id = _study_id(out)
    parent = _parent(client, study_id)
    assert parent.info.status == "FAILED" and parent.data.tags["gakt.outcome_reason"].startswith("finished 3 of 4")
    assert [c.info.status for c in _children(client, parent.info.run_id)] == ["FINISHED"] * 2 + ["FAILED", "FINISHED"]

    resumed = gakt(env, "gakt-study", "resume", study_id, "--address", ray_address)
    assert f"study {study_id}: resuming 1 of 4 children" in resumed.stdout
    assert f"study {study_id}: finished 4 of 4" in resumed.stdout
    children = _children(client, parent.info.run_id)
    assert [c.data.tags["gakt.study_attempt"] for c in children] == ["1", "1", "2", "1"]
    assert client.get_run(victim.info.run_id).info.status == "FAILED"  # the failed attempt stays as a record
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["gakt.outcome_reason"] == "finished 4 of 4"
    best = [_best_val_auc(client, c.info.run_id) for c in children]
    assert parent.data.metrics["study/val_auc_mean"] == math.fsum(best) / 4


def test_sigterm_of_the_driver_marks_the_running_child_and_the_parent_killed(tmp_path, synthetic_root, ray_address):
    env = store_env(tmp_path)
    driver = _start(env, _launch_args("term", synthetic_root, "--folds", "0", "--seeds", "42,43,44", *LONG,
                                      "--address", ray_address, "--threads_per_run", "2"), tmp_path)
    client = _client(env)
    running, pid = _wait_for_training(client, driver, 0, tmp_path)
    os.kill(driver.pid, signal.SIGTERM)
    assert driver.wait(timeout=WAIT) == 130, (tmp_path / "driver.log").read_text()
    assert _wait_gone(pid, 10)
    parent = client.get_run(running.data.tags["gakt.study_run"])
    assert parent.info.status == "KILLED" and parent.data.tags["gakt.outcome"] == "killed"
    assert parent.data.tags["gakt.outcome_reason"] == "interrupted by SIGTERM; finished 0 of 3"
    first, *pending = _children(client, parent.info.run_id)
    assert first.info.status == "KILLED" and first.data.tags["gakt.outcome"] == "killed"
    assert "SIGTERM" in first.data.tags["gakt.outcome_reason"]  # the training marked itself
    for child in pending:
        assert child.info.status == "KILLED"
        assert child.data.tags["gakt.outcome_reason"] == "not started: the study driver received SIGTERM"


@pytest.mark.parametrize("where", ["local", "address"])
def test_after_kill_9_of_the_driver_no_training_runs_on_and_stale_marking_closes_the_study(
        where, tmp_path, synthetic_root, ray_address):
    """kill -9 of the driver: the children's parent-death signal stops the running training (it marks itself
    KILLED); `gakt-runs --stale --mark` marks the parent and the children that never started."""
    env = store_env(tmp_path)
    extra = ("--address", ray_address) if where == "address" else ()
    driver = _start(env, _launch_args("kill9", synthetic_root, "--folds", "0", "--seeds", "42,43", *LONG,
                                      "--threads_per_run", "2", "--workers", "1", *extra), tmp_path)
    client = _client(env)
    running, pid = _wait_for_training(client, driver, 0, tmp_path)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    assert _wait_gone(pid, 60), f"training {pid} still runs after its driver died"
    deadline = time.time() + 60
    while client.get_run(running.info.run_id).info.status == "RUNNING" and time.time() < deadline:
        time.sleep(0.5)
    assert client.get_run(running.info.run_id).data.tags["gakt.outcome"] == "killed"
    marked = gakt(env, "gakt-runs", "--stale", "--mark")
    assert "marked 2 run(s) KILLED" in marked.stdout, marked.stdout  # the parent and the child never started
    parent = client.get_run(running.data.tags["gakt.study_run"])
    assert parent.info.status == "KILLED" and parent.data.tags["gakt.outcome"] == "stale"
    assert [c.info.status for c in _children(client, parent.info.run_id)] == ["KILLED", "KILLED"]
    assert gakt(env, "gakt-runs", "--stale").stdout.strip() == "no stale runs"


def _worker_of(exp_id: str) -> int:
    """The pid of the Ray worker running the task of child exp_id (its process title names the task)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(f"ray::gakt-child-{exp_id}".encode()):
                return int(proc.name)
        except OSError:
            continue
    raise AssertionError(f"no Ray worker runs child {exp_id}")


def test_a_task_ray_retries_after_its_worker_died_finishes_the_same_child_run(tmp_path, synthetic_root,
                                                                             ray_address):
    env = store_env(tmp_path)
    driver = _start(env, _launch_args("retry", synthetic_root, "--folds", "0", "--seeds", "42", "--epochs", "40",
                                      "--patience", "40", "--address", ray_address), tmp_path)
    client = _client(env)
    child, pid = _wait_for_training(client, driver, 0, tmp_path)
    deadline = time.time() + WAIT
    while not client.get_metric_history(child.info.run_id, "val/auc") and time.time() < deadline:
        time.sleep(0.3)
    os.kill(_worker_of(child.data.tags["gakt.experiment_id"]), signal.SIGKILL)  # as an OOM kill of the worker
    assert _wait_gone(pid, 60)  # the supervisor stopped that attempt's training
    assert driver.wait(timeout=WAIT) == 0, (tmp_path / "driver.log").read_text()
    (only,) = _runs(client, f"tags.`gakt.study_run` = '{child.data.tags['gakt.study_run']}'")
    assert only.info.run_id == child.info.run_id and only.info.status == "FINISHED"
    assert only.data.tags["gakt.pid"] != str(pid)  # a second attempt trained, in the same run
    assert only.data.tags["gakt.outcome_reason"].startswith("finished after Ray retried it")
    steps = {m.step for m in client.get_metric_history(only.info.run_id, "val/auc")}
    assert steps == set(range(1, 41))


# --- search -------------------------------------------------------------------------------------------------------


def test_a_3_trial_search_records_every_trial_never_reads_a_test_metric_and_prints_the_best_line(
        tmp_path, synthetic_root, ray_address, monkeypatch):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from gainakt3exp.cli import main

    read = []
    history = MlflowClient.get_metric_history
    monkeypatch.setattr(MlflowClient, "get_metric_history",
                        lambda self, run_id, key: read.append(key) or history(self, run_id, key))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": {"type": "float", "low": 0.001, "high": 0.01, "log": True},
                                 "d_model": {"type": "categorical", "choices": [16, 32]}}))
    result = CliRunner().invoke(main, ["study", "search", "--short_title", "srch", "--profile", "tiny", "--data_root",
                                       str(synthetic_root), "--epochs", "1", "--space", str(space), "--trials", "3",
                                       "--folds", "0", "--seeds", "42", "--address", ray_address])
    import mlflow

    mlflow.set_tracking_uri(None)
    assert result.exit_code == 0, result.output
    assert read and not [k for k in read if k.startswith("eval/") or "test" in k], sorted(set(read))
    client = MlflowClient(uri)
    parent = _parent(client, _study_id(result.output.replace("search ", "study ", 1)))
    trials = sorted(_runs(client, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"),
                    key=lambda r: int(r.data.tags["gakt.trial"]))
    assert [t.data.tags["gakt.kind"] for t in trials] == ["trial"] * 3 and all(t.info.status == "FINISHED"
                                                                               for t in trials)
    values = []
    for trial in trials:
        (child,) = _runs(client, f"tags.`mlflow.parentRunId` = '{trial.info.run_id}'")
        assert not [k for k in child.data.metrics if k.startswith("eval/")]  # never evaluated during the search
        assert trial.data.metrics["value"] == _best_val_auc(client, child.info.run_id)  # Optuna's objective
        assert float(trial.data.params["learning_rate"]) == float(child.data.params["learning_rate"])
        values.append(trial.data.metrics["value"])
    best = values.index(max(values))
    assert parent.data.tags["gakt.search_best_trial"] == str(best)
    config = json.loads(_artifact(client, parent.info.run_id, "config.json", tmp_path / "dl"))
    assert config["search"]["storage"]["type"] == "mlflow.optuna.MlflowStorage"
    assert config["search"]["sampler"] == "tpe" and config["search"]["sampler_seed"] == 0
    line = _artifact(client, parent.info.run_id, "best_launch.txt", tmp_path / "dl").decode().strip()
    (child,) = _runs(client, f"tags.`mlflow.parentRunId` = '{trials[best].info.run_id}'")
    assert line.startswith("gakt-study launch --short_title srch-best --profile tiny") and line.endswith(" --eval")
    assert f"--learning_rate {child.data.params['learning_rate']} " in line and line in result.output
    assert " --folds 0,1,2,3,4 --seeds 42 " in line  # the search ran fold 0; the report covers every fold


# --- a tracking server --------------------------------------------------------------------------------------------


def test_the_same_study_against_a_real_mlflow_server(tmp_path, synthetic_root, ray_address):
    from server_utils import start_server

    server = start_server(tmp_path / "server")
    try:
        env = store_env(tmp_path, uri=server.url)
        proc = gakt(env, *_launch_args("served", synthetic_root, "--folds", "0,1", "--seeds", "42,43",
                                       "--address", ray_address))
        study_id = _study_id(proc.stdout)
        assert_finished_study(_client(env), study_id, tmp_path / "dl", ray_address)
        gakt(env, "gakt-repro", study_id)
        compared = gakt(env, "gakt-compare", study_id)
        assert compared.stdout.strip().endswith("verdict: identical")
    finally:
        server.stop()
