"""A team tracking server: the whole workflow against a real `mlflow server` on 127.0.0.1, basic auth,
a dead server, and concurrent launches (server and a fresh local SQLite store).

Marked slow: two servers (~10 s each to start) and about a dozen tiny `mlflow run`s (~20 s of CPU each);
about 5-6 minutes on an idle 2-core machine. Every subprocess has a timeout and every server is stopped in a
fixture finalizer, so nothing here can hang or outlive the session.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from server_utils import client_env, free_port, start_server  # tests/ is on pythonpath (pyproject)

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ADMIN = ("admin", "Gakt-test-Adm1n-pw-7Qx")  # mlflow 3.17 wants >= 12 characters and ships no default
STEP1_METRICS = ("val/auc", "val/loss", "train/loss", "trajectory/mastery_correlation",
                 "trajectory/gain_correlation", "loss_shares/main", "loss_shares/constraint_total")
REFUSAL_SECONDS = 10.0


def gakt(env, *args, check=True, timeout=600):
    """Run one of the console scripts; returns the CompletedProcess (stdout+stderr captured)."""
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def launch_args(title, data_root, *extra):
    return ("gakt-launch", "--short_title", title, "--profile", "tiny", "--data_root", str(data_root), *extra)


@pytest.fixture(autouse=True)
def _fast_http_failures(monkeypatch):
    """This test process's MlflowClient fails in seconds, not minutes of retries, if a server dies."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _runs_titled(client, title):
    """Runs tagged with this short title, in any experiment (also 'Default', which must stay empty)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(experiments, f"tags.`gakt.short_title` = '{title}'", max_results=100))


# --- a dead server --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["runs", "launch"])
def test_dead_server_fails_fast_naming_the_uri(command, synthetic_root, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    env = client_env(uri=uri, cache_dir=tmp_path / "cache")
    args = ("gakt-runs",) if command == "runs" else launch_args("dead", synthetic_root, "--epochs", "1")
    started = time.monotonic()
    proc = gakt(env, *args, check=False, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert uri in proc.stderr and "cannot be reached" in proc.stderr, proc.stderr
    assert elapsed < REFUSAL_SECONDS, f"{args[0]} took {elapsed:.1f} s to give up"


# --- basic auth -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def auth_server(tmp_path_factory):
    """A basic-auth server for the tests of one class (stopped when the class is done, before the load test)."""
    server = start_server(tmp_path_factory.mktemp("auth-server"), auth=ADMIN)
    yield server
    server.stop()


@pytest.fixture(scope="class")
def authed_run(auth_server, synthetic_root, tmp_path_factory):
    """One tiny run launched with the admin's credentials (1 epoch), shared by the tests of the auth class."""
    env = client_env(auth_server, cache_dir=tmp_path_factory.mktemp("authed-cache"), credentials=ADMIN)
    launched = gakt(env, *launch_args("authed", synthetic_root, "--epochs", "1"))
    return {"env": env, "launched": launched}


@pytest.fixture
def env_for(auth_server, tmp_path):
    """env_for(None | (user, password)): a client environment for the auth server with those credentials."""
    return lambda credentials: client_env(auth_server, cache_dir=tmp_path / "cache", credentials=credentials)


class TestBasicAuthServer:
    """`mlflow server --app-name basic-auth`: refusals name the URI and the variables; the password leaks nowhere."""

    @staticmethod
    def _assert_refused(proc, elapsed, server, who):
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert server.url in proc.stderr and "HTTP 401" in proc.stderr and who in proc.stderr, proc.stderr
        assert "MLFLOW_TRACKING_USERNAME" in proc.stderr and "MLFLOW_TRACKING_PASSWORD" in proc.stderr
        assert elapsed < REFUSAL_SECONDS, f"refusal took {elapsed:.1f} s"

    @pytest.mark.parametrize("command", ["runs", "launch"])
    def test_no_credentials_are_refused_naming_the_uri_and_the_variables(self, command, auth_server, env_for,
                                                                         synthetic_root):
        args = ("gakt-runs",) if command == "runs" else launch_args("nocreds", synthetic_root, "--epochs", "1")
        started = time.monotonic()
        proc = gakt(env_for(None), *args, check=False, timeout=60)
        self._assert_refused(proc, time.monotonic() - started, auth_server, "no credentials")

    def test_wrong_password_is_refused_naming_the_uri_and_the_user(self, auth_server, env_for):
        started = time.monotonic()
        proc = gakt(env_for((ADMIN[0], "not-the-right-password")), "gakt-runs", check=False, timeout=60)
        self._assert_refused(proc, time.monotonic() - started, auth_server, f"user '{ADMIN[0]}'")
        assert "not-the-right-password" not in proc.stdout + proc.stderr

    def test_a_user_without_a_password_is_told_the_password_is_missing(self, auth_server, tmp_path):
        env = client_env(auth_server, cache_dir=tmp_path / "cache", MLFLOW_TRACKING_USERNAME=ADMIN[0])
        started = time.monotonic()
        proc = gakt(env, "gakt-runs", check=False, timeout=60)
        self._assert_refused(proc, time.monotonic() - started, auth_server, f"user '{ADMIN[0]}' without a password")

    def test_right_credentials_launch_and_list_without_recording_the_password(self, auth_server, authed_run,
                                                                              tmp_path, monkeypatch):
        env, launched = authed_run["env"], authed_run["launched"]
        password = ADMIN[1]
        listed = gakt(env, "gakt-runs")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        client = _client(auth_server.url)
        (run,) = _runs_titled(client, "authed")
        assert run.info.status == "FINISHED" and run.data.tags["gakt.outcome"] == "finished"
        assert run.data.tags["gakt.experiment_id"] in listed.stdout and run.info.run_id in listed.stdout
        config = Path(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))).read_bytes()
        assert json.loads(config)["commands"]["train_explicit"].startswith(f"MLFLOW_TRACKING_URI={auth_server.url} ")
        places = {"stdout": launched.stdout, "stderr": launched.stderr, "gakt-runs": listed.stdout,
                  "config.json": config.decode(), "params": json.dumps(run.data.params),
                  "tags": json.dumps(run.data.tags)}
        places.update({f"artifact {p.name}": p.read_bytes().decode(errors="replace")
                       for p in auth_server.artifacts.rglob("*") if p.is_file()})
        places["server store db.sqlite"] = (auth_server.root / "db.sqlite").read_bytes().decode(errors="replace")
        leaked = [where for where, text in places.items() if password in text]
        assert not leaked, f"the password appears in {leaked}"


    def test_the_logged_model_is_registered_and_served_through_the_team_server(self, auth_server, authed_run,
                                                                              synthetic_root, tmp_path, monkeypatch):
        """The team setup: the model's artifacts are proxied by the auth server, registered and served from it
        (models:/NAME@ALIAS with the user's credentials), with the same numbers as the training forward pass."""
        from serving_utils import check_served_model

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
        (run,) = _runs_titled(_client(auth_server.url), "authed")
        found = check_served_model(authed_run["env"], run.info.run_id, synthetic_root, tmp_path, name="gakt-team")
        model = found["model"]
        assert model.artifact_location.startswith("mlflow-artifacts:/"), model.artifact_location
        stored = [p for p in auth_server.artifacts.rglob("model_best.pth") if model.model_id in p.parts]
        assert stored and stored[0].stat().st_size > 0, "the server stores the logged model's weights"


# --- the workflow through a server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("server"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def served(server, synthetic_root, tmp_path_factory):
    """One tiny run launched through the server (2 epochs), and how to reach it."""
    env = client_env(server, cache_dir=tmp_path_factory.mktemp("served-cache"))
    gakt(env, *launch_args("served", synthetic_root))
    exp_id = gakt(env, "gakt-runs", "--latest_id").stdout.strip()
    return {"env": env, "exp_id": exp_id, "client": _client(server.url), "server": server}


def _originals(served):
    runs = _runs_titled(served["client"], "served")
    return [r for r in runs if "gakt.reproduction_of" not in r.data.tags]


def test_gakt_runs_lists_the_run_launched_through_the_server(served):
    (run,) = _originals(served)
    listed = gakt(served["env"], "gakt-runs").stdout
    line = next(line for line in listed.splitlines() if run.info.run_id in line)
    assert served["exp_id"] in line and "served" in line and "FINISHED" in line


def test_artifacts_are_proxied_and_stored_by_the_server(served, tmp_path):
    (run,) = _originals(served)
    client, server = served["client"], served["server"]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "model_best.pth"} <= names, names
    for name in ("config.json", "model_best.pth"):
        (stored,) = [p for p in server.artifacts.rglob(name) if run.info.run_id in p.parts]
        downloaded = Path(client.download_artifacts(run.info.run_id, name, str(tmp_path)))
        assert stored.read_bytes() == downloaded.read_bytes() and stored.stat().st_size > 0


def test_eval_repro_compare_through_the_server_is_identical(served):
    env, exp_id, client = served["env"], served["exp_id"], served["client"]
    evaluated = gakt(env, "gakt-eval", exp_id)
    assert "test_auc" in evaluated.stdout
    gakt(env, "gakt-repro", exp_id)
    (original,) = _originals(served)
    assert "eval/test_auc" in original.data.metrics
    (repro,) = [r for r in _runs_titled(client, "served") if "gakt.reproduction_of" in r.data.tags]
    assert repro.info.status == "FINISHED" and repro.data.tags["gakt.reproduction_of"] == original.info.run_id
    assert repro.info.artifact_uri.startswith("mlflow-artifacts:/")
    compared = gakt(env, "gakt-compare", exp_id, check=False)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert "verdict: identical" in compared.stdout, compared.stdout


# --- load: concurrent launches ------------------------------------------------------------------------------


def _start_launch(env, title, data_root, log_dir: Path):
    """A background gakt-launch in its own process group (so a timeout can stop mlflow run and training too)."""
    out = open(log_dir / f"{title}.log", "wb")
    proc = subprocess.Popen([str(BIN / "gakt-launch"), *launch_args(title, data_root, "--epochs", "1")[1:]],
                            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    out.close()
    return proc


def _wait_all(procs: dict, timeout: float) -> dict:
    """Exit codes by title; whatever is still running at the deadline is killed (group) and reported as None."""
    deadline = time.monotonic() + timeout
    codes = {}
    for title, proc in procs.items():
        try:
            codes[title] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            codes[title] = None
    for title, proc in procs.items():
        if codes[title] is None or proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
    return codes


def _check_one_epoch_run(client, title) -> list[str]:
    """What is wrong with the run titled `title` (empty: FINISHED in 'gainakt3exp' with step-1 metrics and config.json)."""
    runs = _runs_titled(client, title)
    if len(runs) != 1:
        return [f"{title}: {len(runs)} runs carry this title"]
    run = runs[0]
    problems = []
    experiment = client.get_experiment(run.info.experiment_id).name
    if experiment != "gainakt3exp":
        problems.append(f"{title}: in experiment '{experiment}'")
    if run.info.status != "FINISHED" or run.data.tags.get("gakt.outcome") != "finished":
        problems.append(f"{title}: status {run.info.status}, outcome {run.data.tags.get('gakt.outcome')}")
    for key in STEP1_METRICS:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        if steps != [1]:
            problems.append(f"{title}: {key} steps {steps}")
    if "config.json" not in {f.path for f in client.list_artifacts(run.info.run_id)}:
        problems.append(f"{title}: no config.json")
    return problems


def test_ten_concurrent_launches_on_a_server_and_a_fresh_sqlite_store_all_finish(server, synthetic_root,
                                                                                 tmp_path):
    """6 launches against one server and 4 against a SQLite store that does not exist yet, all at once."""
    fresh_uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"  # nothing created beforehand
    # One torch thread per training: ten processes on 2 cores, oversubscribed threads would only add thrashing.
    common = {"cache_dir": tmp_path / "cache", "OMP_NUM_THREADS": "1"}
    targets = {f"srv{i}": client_env(server, **common) for i in range(6)}
    targets.update({f"sql{i}": client_env(uri=fresh_uri, **common) for i in range(4)})
    procs = {title: _start_launch(env, title, synthetic_root, tmp_path) for title, env in targets.items()}
    codes = _wait_all(procs, timeout=900)
    failed = {t: c for t, c in codes.items() if c != 0}
    assert not failed, "launches failed (None = timed out): " + repr(failed) + "".join(
        f"\n--- {t} ---\n{(tmp_path / f'{t}.log').read_text(errors='replace')[-3000:]}" for t in failed)
    problems = []
    for uri, titles in ((server.url, [t for t in targets if t.startswith("srv")]),
                        (fresh_uri, [t for t in targets if t.startswith("sql")])):
        client = _client(uri)
        for title in titles:
            problems += _check_one_epoch_run(client, title)
        default = client.get_experiment_by_name("Default")
        if default is not None and client.search_runs([default.experiment_id], max_results=10):
            problems.append(f"{uri}: runs in experiment 'Default'")
    assert not problems, "\n".join(problems)
