"""A real Ray cluster for tests: `ray start --head --block` on 127.0.0.1, its own session, always stopped.

    from ray_utils import start_ray                      # tests/ is on sys.path under pytest
    cluster = start_ray(tmp_path / "ray", num_cpus=2)    # ready when its GCS port answers
    try:
        env["RAY_ADDRESS"] = cluster.address             # or gakt-study launch --address <address>
    finally:
        cluster.stop()                                   # SIGTERM the --block process, then SIGKILL its group

`ray stop` is never used: it stops every Ray process of the user on the machine, other people's too. The
cluster runs as docs/studies.md asks of a team cluster (RAY_kill_child_processes_on_worker_exit=false, so a dying
worker's children get their parent-death signal and stop their training cleanly) and without auth (loopback).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from server_utils import free_port

RAY = Path(sys.executable).parent / "ray"
CLUSTER_ENV = {"RAY_kill_child_processes_on_worker_exit": "false", "RAY_AUTH_MODE": "disabled",
               "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass
class RayCluster:
    address: str
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to `ray start --block` (it stops the processes it started), then SIGKILL whatever is left of its
        process group (the session start_ray made)."""
        for kill, sig, wait in ((os.kill, signal.SIGTERM, timeout), (os.killpg, signal.SIGKILL, 10)):
            try:
                kill(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass


def start_ray(root: Path, num_cpus: int = 2, timeout: float = 120.0) -> RayCluster:
    """A head node with `num_cpus` CPUs on a free port of 127.0.0.1 (no dashboard); ready on return."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = root / "ray.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}, **CLUSTER_ENV,
           "GAKT_CACHE_DIR": str(root / "gakt-cache")}  # the workers' parsed-data cache, never the user's
    command = [str(RAY), "start", "--head", "--block", "--port", str(port), "--num-cpus", str(num_cpus),
               "--num-gpus", "0", "--include-dashboard=false", "--disable-usage-stats",
               "--node-ip-address", "127.0.0.1"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=root)
    cluster = RayCluster(f"127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}\n{cluster.log()}")
        if "Ray runtime started" in cluster.log():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return cluster
            except OSError:
                pass
        time.sleep(0.3)
    cluster.stop()
    raise RuntimeError(f"Ray cluster on {cluster.address} not ready after {timeout:.0f} s\n{cluster.log()}")
