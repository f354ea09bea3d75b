"""Ray, the engine that runs a study's children: a local cluster or an existing one, one task per child run.

    from gainakt3exp import engine
    address = engine.check_address(None)                      # None: a local cluster; else host:port answers
    with engine.ray_cluster(address, workers=2, threads_per_run=1) as facts:
        results, interrupted = engine.run_tasks(tasks, threads_per_run=1, on_done=print)

Each child is one Ray task (`num_cpus = threads_per_run`, `num_gpus = 1` for a cuda child) that executes the child's
`mlflow run --run-id <child>` (then `gakt-eval <child>` when the study evaluates). The driver created the run
beforehand, so a task Ray retries after a worker death runs into the same run and never makes a second one; a
retried task whose run already finished returns at once. Ray does all the scheduling: this module only starts or
joins the cluster, submits the tasks and watches them.

Process lifetimes. Each command runs under a small supervisor in its own session and process group (a terminal's
Ctrl-C reaches the driver, not the children). The supervisor has a parent-death signal: whenever its Ray worker
dies (the task cancelled, the worker OOM-killed, a local cluster torn down after a kill -9 of the driver) it
SIGTERMs its group: `mlflow run` exits and the training marks its run KILLED (SIGKILL after CANCEL_GRACE_SECONDS).
On Ctrl-C / SIGTERM the driver force-cancels the tasks (their workers exit, the supervisors stop the children);
a gentle cancel (KeyboardInterrupt in the task) SIGTERMs the group itself. The local cluster runs with
RAY_kill_child_processes_on_worker_exit=false, so that Ray does not SIGKILL the supervisor first (which would orphan
the training); a team cluster should be started the same way (docs/studies.md).
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from gainakt3exp.errors import ConfigError, GaktError

MAX_RETRIES = 2  # Ray re-runs a task after a worker death (never after the child itself failed); recorded per study
CANCEL_GRACE_SECONDS = 60  # how long a cancelled child may take to mark its run KILLED before SIGKILL
_LOG_TAIL = 4000
# A local cluster's own settings (its environment): the parent-death signal does the cleanup, see the docstring.
_LOCAL_RAY_ENV = {"RAY_kill_child_processes_on_worker_exit": "false", "RAY_USAGE_STATS_ENABLED": "0"}
_LOCAL_TOKEN = secrets.token_hex(32)  # the auth token of the local clusters this process starts; never recorded
# The child's supervisor (run with `python -c`): it starts `argv[2:]` in its own process group and, when its Ray
# worker (pid argv[1]) dies or it is told to stop, SIGTERMs that group: `mlflow run` dies and the training marks
# its run KILLED; whatever is left after the grace period is SIGKILLed.
_SUPERVISOR = (
    "import ctypes, os, signal, subprocess, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG: the worker's death\n"
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT, signal.SIGTERM])  # Ray workers block SIGINT\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(137)  # the worker died before the signal was armed\n"
    "def stop(signum, frame):\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "    signal.signal(signal.SIGALRM, lambda *_: os.killpg(0, signal.SIGKILL))\n"
    f"    signal.alarm({CANCEL_GRACE_SECONDS})\n"
    "    os.killpg(0, signal.SIGTERM)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "signal.signal(signal.SIGINT, stop)\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "sys.exit(code if code >= 0 else 128 - code)\n")


class EngineError(GaktError):
    """Ray cannot be started or joined (exit 1)."""


def check_address(address: str | None) -> str | None:
    """The Ray address to join (--address, else $RAY_ADDRESS), checked to answer; None = start a local cluster.

    A host:port nobody listens on is refused in seconds, before anything is written (exit 2)."""
    address = (address or os.environ.get("RAY_ADDRESS") or "").strip() or None
    if address is None or address == "auto":
        return address
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected host:port of a Ray cluster's head (e.g. "
                          "--address 10.0.0.5:6379, what `ray start --head --port 6379` prints), or omit it to "
                          "start a local cluster")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one "
                          "with `ray start --head --port <port>` on that host, or omit --address (and unset "
                          "RAY_ADDRESS) to start a local cluster") from None
    return address


@contextmanager
def ray_cluster(address: str | None, *, workers: int, threads_per_run: int) -> Iterator[dict]:
    """Join the cluster at `address`, or start a local one of workers x threads_per_run CPUs (no dashboard),
    loopback only, with a fresh auth token, and stop it at the end. Yields facts for the study's record."""
    import logging

    local = address is None
    if local:  # before Ray is imported: it reads its auth settings once per process
        os.environ.update(_LOCAL_RAY_ENV)
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = _LOCAL_TOKEN
    import ray

    started = time.perf_counter()
    try:
        if local:
            ray.init(address="local", num_cpus=workers * threads_per_run, include_dashboard=False,
                     _node_ip_address="127.0.0.1", log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
        raise EngineError(f"Ray could not {'start a local cluster' if local else f'join {address}'}: "
                          f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}"
                          ) from None
    try:
        yield {"address": "local" if local else address, "ray_version": ray.__version__,
               "cluster_cpus": ray.cluster_resources().get("CPU", 0),
               "cluster_gpus": ray.cluster_resources().get("GPU", 0),
               "startup_seconds": round(time.perf_counter() - started, 3)}
    finally:
        ray.shutdown()


def run_tasks(tasks: list[dict], *, threads_per_run: int, on_done: Callable[[dict, dict], None],
              on_tick: Callable[[], None] | None = None, tick_seconds: float = 2.0) -> tuple[dict, str | None]:
    """Submit one Ray task per child and wait for all; on_done(task, result) as each ends, on_tick() now and then.

    Returns ({run_id: result}, None) or, after Ctrl-C / SIGTERM (KeyboardInterrupt here, raised once by the caller's
    study.interruptions, so a second signal cannot cut the clean-up short), the results so far and
    the interruption's name. Then every task is force-cancelled: its worker exits at once, whatever its signal
    settings (a task started from a shell job that ignores SIGINT would never see a gentle cancel), and the
    supervisor's parent-death signal stops the child, which marks itself KILLED (see the module docstring).
    A result is {"status": exit status or None, "log": tail, "seconds", "skipped", "error"}."""
    import ray

    remote = ray.remote(run_child)
    refs = {}
    for task in tasks:
        options = {"num_cpus": threads_per_run, "num_gpus": task["gpus"], "max_retries": MAX_RETRIES,
                   "name": f"gakt-child-{task['exp_id']}"}
        refs[remote.options(**options).remote(task)] = task
    results: dict = {}
    pending = list(refs)
    last_tick = 0.0
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in ready:
                results[refs[ref]["run_id"]] = _result(ref)
                on_done(refs[ref], results[refs[ref]["run_id"]])
            if on_tick and time.monotonic() - last_tick >= tick_seconds:
                last_tick = time.monotonic()
                on_tick()
        return results, None
    except KeyboardInterrupt as exc:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - a cluster already going down (Ctrl-C reached it too)
                pass
        done, _ = ray.wait(pending, num_returns=len(pending), timeout=10)
        for ref in done:
            results[refs[ref]["run_id"]] = _result(ref)
        return results, str(exc) or "SIGINT"


def _result(ref) -> dict:
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        return {"status": None, "log": "", "seconds": 0.0, "skipped": False, "error": "cancelled before it started"}
    except ray.exceptions.RayError as exc:
        text = str(exc).strip().splitlines()
        return {"status": None, "log": "", "seconds": 0.0, "skipped": False,
                "error": f"Ray task failed: {text[-1][:300] if text else type(exc).__name__}"}


# --- in a Ray worker ----------------------------------------------------------------------------------------------


def run_child(task: dict) -> dict:
    """One child, in a Ray worker: `mlflow run --run-id` into the run the driver made, then `gakt-eval` when the
    study evaluates. Uses this worker's installation (its venv, its checkout), refuses another code version."""
    from gainakt3exp.paths import PROJECT_ROOT
    from gainakt3exp.service.record import code_version, param_args

    started = time.perf_counter()
    commit = code_version()["git_commit"]
    if commit != task["git_commit"]:
        return {"status": 2, "skipped": False, "seconds": 0.0, "error": "", "log":
                f"error: this Ray worker ({socket.gethostname()}) runs code {commit} but the study records "
                f"{task['git_commit']}; check out the study's commit on every worker"}
    if _already_finished(task):  # a retry after the worker died between the child's end and the task's return
        return {"status": 0, "skipped": True, "seconds": 0.0, "error": "", "log": ""}
    bin_dir = Path(sys.executable).parent
    env = _child_env(task, bin_dir)
    with tempfile.TemporaryFile("w+") as log:
        train = [str(bin_dir / "mlflow"), "run", str(PROJECT_ROOT), "--env-manager", "local", "--experiment-id",
                 task["experiment_id"], "--run-id", task["run_id"], *param_args(task["params"])]
        status = _run(train, env, log)
        if status == 0 and task["evaluate"]:
            status = _run([str(bin_dir / "gakt-eval"), task["run_id"]], env, log)
            if status != 0:
                log.write(f"\nerror: evaluation exited with status {status}\n")
        log.seek(0)
        text = log.read()
    return {"status": status, "skipped": False, "seconds": round(time.perf_counter() - started, 3),
            "error": "", "log": text[-_LOG_TAIL:]}


def _child_env(task: dict, bin_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "MLFLOW_RUN_ID")}
    env["PATH"] = str(bin_dir) + os.pathsep + env.get("PATH", "")  # `mlflow run` runs `python -m ...` from PATH
    env["MLFLOW_TRACKING_URI"] = task["tracking_uri"]  # the study's store; credentials stay the worker's own
    threads = str(task["threads_per_run"])
    env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})  # torch's intra-op threads follow
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return env


def _already_finished(task: dict) -> bool:
    from mlflow.tracking import MlflowClient

    from gainakt3exp.tracking.tags import TAG_EVALUATED, TAG_OUTCOME

    try:
        run = MlflowClient(task["tracking_uri"]).get_run(task["run_id"])
    except Exception:  # noqa: BLE001 - the child's own command reports an unreachable store clearly
        return False
    done = run.info.status == "FINISHED" and run.data.tags.get(TAG_OUTCOME) == "finished"
    return done and (not task["evaluate"] or run.data.tags.get(TAG_EVALUATED) == "true")


def _run(command: list[str], env: dict, log) -> int:
    """Run `command` under the supervisor, in its own session; on cancellation SIGTERM the whole group."""
    log.write(f"$ {' '.join(command[:3])} ...\n")
    log.flush()
    wrapped = [sys.executable, "-c", _SUPERVISOR, str(os.getpid()), *command]
    proc = subprocess.Popen(wrapped, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        while True:  # poll: Ray delivers a cancellation between bytecodes, never inside a blocking wait
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
    except KeyboardInterrupt:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=CANCEL_GRACE_SECONDS + 10)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        log.write("\nerror: the study was interrupted; the child was stopped with SIGTERM\n")
        return 130


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
