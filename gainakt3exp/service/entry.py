"""The MLproject entry points: typed parameters in, one tracked MLflow run out; evaluation recorded in a run.

    python -m gainakt3exp.service.entry train --dataset synthetic --data_root data --fold 0 ... (all parameters, no defaults)
    python -m gainakt3exp.service.entry eval --run 423891

`train` (the `main` entry point): under `mlflow run` this attaches to the run MLflow created (MLFLOW_RUN_ID) and
does not re-log the parameters it logged; run directly it creates a run itself. It writes config.json (or checks
the one a reproduction placed), tags the run, trains (train.train_model, which never imports mlflow), and stores
model_best.pth, results.json, metrics_epoch.csv and trajectory.png. Ctrl-C / SIGTERM marks the run KILLED, a
crash FAILED; `gakt.outcome` keeps the truth even where `mlflow run` later overwrites the status.

`eval` (the `eval` entry point, also `gakt-eval`): rebuilds the model from the run's logged parameters (so
architecture mismatches cannot happen), loads model_best.pth weights-only, runs evaluate.evaluate_model and
records metrics `eval/<split>_<name>` and eval_results.json, eval_table.json (a split x metric table),
config_eval.json, metrics_epoch_eval.csv and the mastery pictures mastery_*.png in the run.
"""
from __future__ import annotations

import sys

import click

from gainakt3exp import tracking
from gainakt3exp.config.params import load_defaults, parameter_meanings, parse_param_strings
from gainakt3exp.errors import GaktError
from gainakt3exp.service.evaluation import evaluate_run
from gainakt3exp.service.training import run_training


def build_train_command() -> click.Command:
    """One required option per parameter of configs/parameter_default.json (no defaults, values parsed by us)."""
    meanings = parameter_meanings()
    options = [click.Option([f"--{key}"], required=True, type=str, help=meanings.get(key, ""))
               for key in load_defaults().values]
    return click.Command(
        "train", params=options, callback=_train_callback,
        help="Train GainAKT3Exp as one MLflow run. Every parameter is required (see configs/parameters.csv); "
             "gakt-launch and `mlflow run .` fill them in.\n\nExample: gakt-launch --dry_run --short_title demo "
             "--profile quickstart prints a complete command.")


def _train_callback(**strings) -> None:
    try:
        params = parse_param_strings(strings)
        run_training(params)
    except GaktError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


@click.command("eval")
@click.option("--run", "ref", required=True, help="Run id or 6-digit experiment id to evaluate.")
def _eval_entry(ref: str) -> None:
    """The MLproject `eval` entry point: evaluate RUN with its own logged parameters."""
    try:
        client = tracking.connect()
        evaluate_run(client, ref, echo=lambda m: click.echo(m, err=True))
    except GaktError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


def main(argv=None) -> None:
    """`python -m gainakt3exp.service.entry train ...` / `... eval --run R` (what MLproject's entry points run)."""
    group = click.Group("python -m gainakt3exp.service.entry", commands=[build_train_command(), _eval_entry],
                        help="The MLproject entry points: train (main) and eval.")
    group.main(args=argv, prog_name="python -m gainakt3exp.service.entry", standalone_mode=True)


if __name__ == "__main__":
    main()
