"""Everything that talks to MLflow: the store, experiments, run lookup, the metric sink, artifacts.

    from gainakt3exp import tracking
    client = tracking.connect()                       # embedded store, or MLFLOW_TRACKING_URI
    run = tracking.resolve_run(client, "423891")      # a run id or the 6-digit experiment id

The embedded default store is `sqlite:///<project>/mlflow.db` with artifacts in `<project>/mlruns` (absolute
paths, never the cwd). MLFLOW_TRACKING_URI=http://host:port selects a remote `mlflow server`; its basic-auth
credentials come from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD and are never written anywhere.
"""
from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import signal
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from gainakt3exp.errors import ConfigError, RunNotFoundError, TrackingError
from gainakt3exp.files import PARTIAL_NAME, write_bytes_atomic
from gainakt3exp.paths import PROJECT_ROOT
from gainakt3exp.tracking.tags import TAG_EVAL_OF, TAG_EXP_ID, TAG_REPRO_OF

EXPERIMENT_ENV = "GAKT_EXPERIMENT_NAME"
EXPERIMENT_NAME = "gainakt3exp"  # the experiment runs go to unless GAKT_EXPERIMENT_NAME / --experiment names another
# The experiment's kind for the MLflow UI: model training, not GenAI. MLflow 3.x UIs that read the tag open the
# experiment as training runs; 3.17's UI decides by its "GenAI | Model training" switch instead (README, Two commands).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_EXP_ID_RE = re.compile(r"^\d{6}$")
# A dead server should fail in seconds, not after minutes of retries.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded store in the project folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def experiment_name(explicit: str | None = None) -> str:
    return explicit or os.environ.get(EXPERIMENT_ENV) or EXPERIMENT_NAME


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def redact(uri: str) -> str:
    """A URI safe to print or record: any user:password@ part removed."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username or parts.password:
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return uri


def configure() -> str:
    """Point this process and its children (mlflow run) at the tracking store; returns the URI."""
    uri = tracking_uri()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import mlflow

    mlflow.set_tracking_uri(uri)
    return uri


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, when a remote server is down or refuses the credentials."""
    if not is_remote(uri):
        return
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search",
                                     data=b'{"max_results": 1}', headers={"Content-Type": "application/json"})
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user is not None and password is not None:
        import base64

        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            who = (f"user '{user}'" if password is not None else f"user '{user}' without a password") if user \
                else "no credentials"
            raise TrackingError(
                f"tracking server {redact(uri)} refused the request (HTTP {exc.code}, {who}); set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server"
            ) from None
        raise TrackingError(f"tracking server {redact(uri)} answered HTTP {exc.code}: {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"tracking server {redact(uri)} cannot be reached ({reason}); start it or fix MLFLOW_TRACKING_URI"
        ) from None


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise first use of a SQLite store: several processes creating it at once can corrupt it."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(str(db) + ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def artifact_root(uri: str) -> str | None:
    """Where a local SQLite store keeps artifacts: `mlruns` beside the database (None for a server)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlruns").as_uri()
    return None


# Stores MLflow 3 can track to (the old `file:` store raises there); `postgresql+psycopg2` counts as postgresql.
_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def check_uri(uri: str) -> None:
    """Refuse a tracking URI of an unknown scheme (ftp://x, a bare path) with the forms that work."""
    scheme = urllib.parse.urlsplit(uri).scheme.split("+")[0].lower()
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"MLFLOW_TRACKING_URI={redact(uri)!r}: scheme '{scheme or '(none)'}' is not a tracking store; use "
            "http(s)://host:port for a tracking server or sqlite:////absolute/path/mlflow.db for a local store, "
            "or unset it for the embedded store")


def connect():
    """Configure tracking, check a remote server, initialise the store once; returns an MlflowClient whose calls
    an interruption never cuts short (WholeCallClient)."""
    check_uri(tracking_uri())
    check_server(tracking_uri())  # before configure() imports mlflow (~3 s): a dead server fails in about a second
    uri = configure()
    from mlflow.tracking import MlflowClient

    with _store_lock(uri):
        client = WholeCallClient(MlflowClient(uri))
        try:
            client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - turned into one clear message
            raise TrackingError(f"tracking store {redact(uri)} is not usable: {_short(exc)}") from None
    return client


# --- interruptions between store calls, never inside one ----------------------------------------------------------
# The training and the study driver turn SIGTERM and Ctrl-C into an exception, raised wherever the process is. Raised
# inside MLflow's SQL session (a BaseException: MLflow rolls back only on Exception), it leaves the SQLite store
# locked for this process: every later write, the KILLED mark included, waits 20 s and fails, and the run stays
# RUNNING. So inside a store call the exception waits until the call returns; WholeCallClient makes every client
# call such a call, whole_call() any other (mlflow.start_run / end_run).
_CALLS = threading.local()  # the main thread's (signal handlers run there): depth, pending exception, raised


@contextmanager
def whole_call() -> Iterator[None]:
    """A store call an interruption does not cut short: one arriving inside it is raised when it returns."""
    _CALLS.depth = getattr(_CALLS, "depth", 0) + 1
    try:
        yield
    finally:
        _CALLS.depth -= 1
        pending = getattr(_CALLS, "pending", None)
        if _CALLS.depth == 0 and pending is not None:
            _CALLS.pending = None
            raise pending


class WholeCallClient:
    """An MlflowClient whose every method call runs whole (see whole_call); attributes pass through."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            with whole_call():
                return attr(*args, **kwargs)
        return call


@contextmanager
def interruptions(make: Callable[[str], BaseException]) -> Iterator[None]:
    """In the block, SIGTERM and SIGINT (Ctrl-C) raise make(<signal name>): at once, or, inside a store call,
    when it returns. Only the first one raises: a second signal (a terminal's Ctrl-C reaches every process of the
    group, and `mlflow run` forwards it as SIGTERM) must not cut short the handling of the first.

    A handler raises wherever the main thread is, and Python swallows an exception raised inside a finalizer or a
    weakref callback (garbage collection runs them at any bytecode; SQLAlchemy's class registry has such
    callbacks): it is only reported to sys.unraisablehook. The hook of this block re-arms the handler and sends the
    same signal again a moment later, so the interruption is raised outside the finalizer instead of lost."""
    _CALLS.raised, _CALLS.pending, _CALLS.sent = False, None, None

    def handler(signum, _frame):
        if _CALLS.raised:
            return
        _CALLS.raised = True
        exc = make(signal.Signals(signum).name)
        _CALLS.sent = (exc, signum)
        if getattr(_CALLS, "depth", 0):
            _CALLS.pending = exc
        else:
            raise exc

    previous_hook = sys.unraisablehook

    def unraisable(info) -> None:
        sent = getattr(_CALLS, "sent", None)
        if sent is not None and info.exc_value is sent[0]:  # our interruption, swallowed by a finalizer
            _CALLS.raised, _CALLS.sent = False, None
            # sent from another thread a moment later: a signal sent from here would be handled here, inside the
            # hook, and swallowed again; if it still lands in a finalizer, this hook sends it once more
            resend = threading.Timer(0.01, os.kill, (os.getpid(), sent[1]))
            resend.daemon = True
            resend.start()
            return
        previous_hook(info)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for sig, old in previous.items():
            signal.signal(sig, old)
        _CALLS.pending = _CALLS.sent = None


def ensure_experiment(client, name: str) -> str:
    """Get or create the experiment once (under the store lock) and return its id; never races set_experiment.
    The experiment carries mlflow.experimentKind=custom_model_development (an existing one without the tag gets
    it; a kind the user chose is kept)."""
    uri = tracking_uri()
    with _store_lock(uri):
        found = client.get_experiment_by_name(name)
        if found is None:
            try:
                return client.create_experiment(name, artifact_location=artifact_root(uri),
                                                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except Exception:  # noqa: BLE001 - another process created it first (a server without this lock)
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            raise TrackingError(f"experiment '{name}' is deleted; restore it (mlflow experiments restore) or "
                                f"choose another name with --experiment or {EXPERIMENT_ENV}")
        if EXPERIMENT_KIND_TAG not in found.tags:
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return found.experiment_id


def resolve_run(client, ref: str):
    """A run from an MLflow run id or a 6-digit experiment id (the original run, not a reproduction)."""
    ref = str(ref).strip()
    if _RUN_ID_RE.match(ref):
        try:
            return client.get_run(ref)
        except Exception as exc:  # noqa: BLE001
            if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
                raise RunNotFoundError(f"run '{ref}' does not exist in {redact(tracking_uri())}; "
                                       "list runs with gakt-runs") from None
            raise TrackingError(f"cannot read run '{ref}': {_short(exc)}") from None
    if _EXP_ID_RE.match(ref):
        runs = search_runs(client, f"tags.`{TAG_EXP_ID}` = '{ref}'")
        originals = [r for r in runs if TAG_REPRO_OF not in r.data.tags and TAG_EVAL_OF not in r.data.tags]
        if not originals:
            raise RunNotFoundError(f"no run has experiment id {ref} in {redact(tracking_uri())}; "
                                   "list runs with gakt-runs")
        return originals[0]
    raise RunNotFoundError(f"'{ref}' is neither a run id (32 hex characters) nor a 6-digit experiment id; "
                           "list runs with gakt-runs")


def search_runs(client, filter_string: str = "", max_results: int = 1000) -> list:
    """Runs of every active experiment matching the filter, newest first."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    return list(client.search_runs(experiments, filter_string=filter_string, max_results=max_results,
                                   order_by=["attributes.start_time DESC"]))


def read_params(run) -> dict:
    """The run's logged params, unquoted: `mlflow run` logs shell-quoted values ('gakt v2')."""
    import shlex

    out = {}
    for key, value in run.data.params.items():
        try:
            parts = shlex.split(value)
            out[key] = parts[0] if len(parts) == 1 else value
        except ValueError:
            out[key] = value
    return out


def download_text(client, run_id: str, name: str) -> bytes:
    """One artifact's bytes; a missing one is a clear error naming the run."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, name, tmp)
        except Exception as exc:  # noqa: BLE001
            raise RunNotFoundError(f"run {run_id} has no artifact '{name}' ({_short(exc)}); was it made by "
                                   "gainakt3exp? (model_best.pth appears after the first epoch)") from None
        return Path(path).read_bytes()


def has_artifact(client, run_id: str, name: str) -> bool:
    try:
        return any(f.path == name for f in client.list_artifacts(run_id))
    except Exception:  # noqa: BLE001 - a store without that run folder yet
        return False


def publish_bytes(client, run_id: str, name: str, data: bytes) -> None:
    """Store `data` as artifact `name` of the run, atomically: a reader never sees a half-written file.

    A local artifact store gets a temp file in the destination folder and an os.replace; a server receives one
    upload of a complete file.
    """
    run = client.get_run(run_id)
    dest = _local_artifact_dir(run.info.artifact_uri)
    if dest is not None:
        write_bytes_atomic(dest / name, data)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        path.write_bytes(data)
        sub = str(Path(name).parent) if Path(name).parent != Path(".") else None
        client.log_artifact(run_id, str(path), sub)


def partial_artifacts(artifact_uri: str) -> list[Path]:
    """Temp files publish_bytes left in a local artifact folder because its process died mid-write (kill -9).
    Only a run whose process is known to be gone may have them removed (a live one may be mid-write); a server
    store never has any."""
    root = _local_artifact_dir(artifact_uri)
    if root is None or not root.is_dir():
        return []
    return sorted(p for p in root.rglob(".*") if p.is_file() and PARTIAL_NAME.fullmatch(p.name))


def _local_artifact_dir(artifact_uri: str) -> Path | None:
    if artifact_uri.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(artifact_uri).path))
    if artifact_uri.startswith("/"):
        return Path(artifact_uri)
    return None


def json_bytes(obj) -> bytes:
    """The one JSON layout of the artifacts (stable key order, so equal content gives equal bytes)."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode()


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
