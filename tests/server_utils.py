"""Real `mlflow server` processes for tests: 127.0.0.1 only, a free port, always stopped.

    from server_utils import client_env, start_server          # tests/ is on sys.path under pytest
    server = start_server(tmp_path / "srv")                     # ready when /health answers
    try:
        env = client_env(server, cache_dir=tmp_path / "cache")  # MLFLOW_TRACKING_URI=http://127.0.0.1:<port>
        subprocess.run(["gakt-runs"], env=env, timeout=60)
    finally:
        server.stop()                                           # SIGTERM the process group, then SIGKILL

The recipe (docs/operations.md): `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --host 127.0.0.1 --port <free>
--workers 1 --backend-store-uri sqlite:///<root>/db.sqlite --artifacts-destination <root>/artifacts`.
With `auth=` the server runs `--app-name basic-auth` (needs `mlflow[auth]`, i.e. Flask-WTF): the admin account
comes from MLFLOW_AUTH_ADMIN_PASSWORD (>= 12 characters; mlflow 3.17 ships no default) and an auth config file in
<root> (MLFLOW_AUTH_CONFIG_PATH) whose user database is <root>/auth.db, never a file in the cwd.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
MLFLOW = BIN / "mlflow"
# Variables of the test process that would leak into a client or server and change what it talks to.
_CLIENT_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                "MLFLOW_TRACKING_TOKEN", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
                "GAKT_EXPERIMENT_NAME")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A running `mlflow server`; `stop()` is idempotent."""

    port: int
    root: Path
    proc: subprocess.Popen
    log_path: Path
    admin: tuple[str, str] | None = None  # (username, password) of a basic-auth server
    _log: object = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server's process group (server + uvicorn worker), wait, SIGKILL what is left."""
        stop_group(self.proc, timeout)
        if self._log is not None and not self._log.closed:
            self._log.close()


def stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group of `proc` (started with start_new_session), wait up to `timeout` s, then SIGKILL
    what is left: a server's workers may outlive their parent, and the group id is ours."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process group this module created for `proc` (start_new_session: pgid == pid)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _write_auth_config(root: Path, admin_user: str) -> Path:
    """An auth config whose user database lives in `root`; the admin password stays in the environment."""
    path = root / "basic_auth.ini"
    path.write_text("[mlflow]\n"
                    "default_permission = READ\n"
                    f"database_uri = sqlite:///{root / 'auth.db'}\n"
                    f"admin_username = {admin_user}\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return path


def wait_healthy(server: Server, timeout: float) -> None:
    """Poll /health until it answers 200; fail with the server's log if it exits or the time is up."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.proc.returncode} before it was ready "
                               f"(port {server.port})\n--- server log ---\n{server.log()}")
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return
                last = f"HTTP {answer.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        time.sleep(0.3)
    raise RuntimeError(f"mlflow server on {server.url} not ready after {timeout:.0f} s ({last})"
                       f"\n--- server log ---\n{server.log()}")


def start_server(root: Path, *, auth: tuple[str, str] | None = None, timeout: float = 90.0,
                 secret_key: str = "gakt-test-flask-secret-key") -> Server:
    """Start `mlflow server` on 127.0.0.1:<free port> with its store and artifacts in `root`; ready on return.

    auth=(admin_user, admin_password) runs the basic-auth app with that admin account. The caller must call
    `stop()` (use it in a fixture finalizer). A port taken between free_port() and the bind is retried.
    Ready takes ~5-15 s; the 90 s ceiling is for a machine busy with other work.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in _CLIENT_VARS}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    command_tail = []
    if auth is not None:
        user, password = auth
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(_write_auth_config(root, user))
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = password
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret_key
        command_tail = ["--app-name", "basic-auth"]
    errors = []
    for attempt in range(3):
        port = free_port()
        log_path = root / f"server-{port}.log"
        log = open(log_path, "wb")
        command = [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
                   "--artifacts-destination", str(root / "artifacts"), *command_tail]
        proc = subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        server = Server(port=port, root=root, proc=proc, log_path=log_path, admin=auth, _log=log)
        try:
            wait_healthy(server, timeout)
            return server
        except RuntimeError as exc:
            server.stop()
            if "address already in use" not in server.log().lower():
                raise
            errors.append(str(exc))
    raise RuntimeError("could not bind a free port in 3 tries:\n" + "\n".join(errors))


def client_env(server: Server | None = None, *, uri: str | None = None, cache_dir: Path | None = None,
               credentials: tuple[str, str] | None = None, **extra: str) -> dict:
    """The environment of a client process (gakt-*, mlflow) for `server` (or any `uri`).

    Inherited MLflow client variables are dropped so only what is passed here counts; the venv's bin comes
    first on PATH (gakt-launch runs `mlflow run`, which runs `python -m gainakt3exp.service.entry train`).
    """
    env = {k: v for k, v in os.environ.items() if k not in _CLIENT_VARS}
    env["MLFLOW_TRACKING_URI"] = uri or server.url
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if cache_dir is not None:
        env["GAKT_CACHE_DIR"] = str(cache_dir)
    if credentials is not None:
        env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = credentials
    env.update(extra)
    return env
