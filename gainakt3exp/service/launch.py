"""Launching a run: resolve and validate the parameters, then run the explicit `mlflow run` command that config.json
records (gakt-launch).

    gakt-launch --short_title baseline --profile quickstart
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from gainakt3exp import tracking
from gainakt3exp.service.record import (
    _env_prefix,
    _random_exp_id,
    check_inputs,
    check_short_title,
    make_run_name,
    new_experiment_id,
    train_command,
)


def execute(command: list[str]) -> int:
    """Run a command (mlflow run ...) in the foreground, streaming its output; returns its exit status."""
    import os

    env = dict(os.environ)
    # `mlflow run --env-manager local` runs `python -m ...` from PATH: make it this interpreter's environment.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130


def mlflow_executable() -> str:
    """The `mlflow` next to this Python (the venv's), so a launch uses the same installation."""
    candidate = Path(sys.executable).with_name("mlflow")
    return str(candidate) if candidate.exists() else "mlflow"


# --- the two verbs ------------------------------------------------------------------------------------------------


def launch(overrides: dict, profiles: list[str], short_title: str, experiment: str | None, dry_run: bool,
           echo=print) -> int:
    """Resolve and validate, then run train_explicit (the same command config.json records). Returns the exit code.

    With dry_run the command is printed and nothing is written (no store is created or touched).
    """
    from gainakt3exp.config.params import resolve_params

    check_short_title(short_title)
    resolved = resolve_params(overrides, profiles)
    if not dry_run:  # a dead or refusing server fails in a second, before the data code imports torch
        tracking.check_server(tracking.tracking_uri())
    check_inputs(resolved.params)  # a missing or malformed data set stops here, before any run exists
    name = tracking.experiment_name(experiment)
    if dry_run:
        exp_id = _random_exp_id()
        echo(_env_prefix() + shlex.join(train_command(resolved.params, name, make_run_name(short_title, exp_id))))
        return 0
    client = tracking.connect()
    tracking.ensure_experiment(client, name)
    exp_id = new_experiment_id(client)
    run_name = make_run_name(short_title, exp_id)
    command = train_command(resolved.params, name, run_name)
    print(f"launching experiment {exp_id} as run '{run_name}' in experiment '{name}' "
          f"({tracking.redact(tracking.tracking_uri())})", file=sys.stderr)
    status = execute([mlflow_executable(), *command[1:]])
    runs = tracking.search_runs(client, f"attributes.run_name = '{run_name}'", max_results=1)
    run_id = runs[0].info.run_id if runs else "none"
    echo(f"experiment {exp_id}: run {run_id} exited with status {status}")
    return status
