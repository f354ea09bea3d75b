"""Thin click commands. Each verb is also a console script: gakt-launch, gakt-eval, gakt-repro, gakt-compare,
gakt-runs, gakt-data, gakt-study (and `gakt <verb>`).

    gakt-launch --short_title baseline --profile quickstart
    gakt-eval 423891 && gakt-repro 423891 && gakt-compare 423891

Known errors become one line on stderr: exit 2 for bad input (parameters, files, run ids), 1 for failures.
"""
from __future__ import annotations

import sys

import click

from gainakt3exp.cli.common import CONTEXT as _CONTEXT
from gainakt3exp.cli.common import errors as _errors
from gainakt3exp.cli.common import experiment_option, extra_pairs, param_options
from gainakt3exp.config.params import list_profiles


@click.group(context_settings=_CONTEXT)
def main() -> None:
    """gainakt3exp: tracked GainAKT3Exp experiments on MLflow.

    The tracking store is $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db. Example:

        gakt launch --short_title demo --profile quickstart
    """


@main.command("launch", context_settings={**_CONTEXT, "ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--short_title", required=True, help="A short name for the run (letters, digits, _ - .).")
@click.option("--profile", "profiles", multiple=True, metavar="NAME",
              help=f"Named override set from configs/profiles (repeatable, applied in order): {', '.join(list_profiles())}.")
@click.option("--dry_run", is_flag=True, help="Print the explicit `mlflow run` command and write nothing.")
@experiment_option
@param_options
@_errors
@click.pass_context
def launch_cmd(ctx, short_title, profiles, dry_run, experiment, **values) -> None:
    """Start a tracked training run: defaults, then --profile, then --<param> VALUE; validated; then `mlflow run`.

    \b
    Example:
      gakt-launch --short_title baseline --profile cpu-small --data_root ../shared/data --epochs 4
      gakt-launch --short_title demo --profile quickstart --dry_run
    """
    from gainakt3exp.service.launch import launch

    overrides = {k: v for k, v in values.items() if v is not None}
    overrides.update(extra_pairs(ctx.args))  # unknown --keys: reported with every other parameter problem
    sys.exit(launch(overrides, list(profiles), short_title, experiment, dry_run, echo=click.echo))


@main.command("repro", context_settings=_CONTEXT)
@click.argument("run")
@click.option("--eval", "evaluate", is_flag=True, help="Also evaluate the reproduction (like gakt-eval) when it finishes.")
@_errors
def repro_cmd(run: str, evaluate: bool) -> None:
    """Re-run RUN (run id or 6-digit experiment id) from its logged parameters through `mlflow run`.

    The logged params are checked against the run's config.json and its md5 first; any difference refuses.
    A study reproduces every child, as a new study tagged as the reproduction of it.

    \b
    Example:
      gakt-repro 423891 --eval && gakt-compare 423891
    """
    from gainakt3exp.study.repro import reproduce_any

    sys.exit(reproduce_any(run, echo=click.echo, evaluate=evaluate))


@main.command("compare", context_settings=_CONTEXT)
@click.argument("run")
@click.option("--repro", default=None, metavar="RUN", help="The reproduction to compare with (default: the latest).")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Largest |difference| that still counts as a match.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_errors
def compare_cmd(run: str, repro, tolerance: float, as_json: bool) -> None:
    """Compare RUN with its reproduction through the tracking API. Exit 0: identical or within tolerance; 1: differs.

    A study compares every child with its reproduction: one verdict and the per-child table.

    \b
    Example:
      gakt-compare 423891 --tolerance 1e-6
    """
    from gainakt3exp.service.compare import format_report, report_json, verdict_exit_code
    from gainakt3exp.study.repro import compare_any, format_study_comparison

    if tolerance < 0:
        raise click.BadParameter("must be >= 0", param_hint="--tolerance")
    report, study = compare_any(run, repro, tolerance)
    if as_json:
        click.echo(report_json(report))
    else:
        click.echo(format_study_comparison(report) if study else format_report(report))
    sys.exit(verdict_exit_code(report))


@main.command("eval", context_settings=_CONTEXT)
@click.argument("run")
@click.option("--max_correlation_students", type=click.IntRange(min=1), default=None,
              help="Students per split for correlations (default: the run's own value).")
@click.option("--batch_size", type=click.IntRange(min=1), default=None, help="Default: the run's own value.")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N (default: the run's own value).")
@_errors
def eval_cmd(run: str, max_correlation_students, batch_size, device) -> None:
    """Evaluate the best checkpoint of RUN on train/valid/test and the window test; log eval/* to RUN (pyKT's
    metrics, the headline AUC and the mastery AUC beside it) and the mastery pictures (mastery_*.png).

    \b
    Example:
      gakt-eval 423891
    """
    from gainakt3exp.service.evaluation import evaluate_run
    from gainakt3exp.service.runs import open_store

    results = evaluate_run(open_store()[0], run, max_correlation_students=max_correlation_students,
                           batch_size=batch_size, device=device, echo=lambda m: click.echo(m, err=True))
    for key in ("valid_auc", "test_auc", "test_window_auc", "test_accuracy", "test_mastery_correlation",
                "test_gain_correlation", "windowauclate_mean", "headline_auc", "mastery_auc", "mastery_auc_within"):
        if key == "windowauclate_mean" and key not in results:
            continue
        value = results.get(key)
        click.echo(f"{key:28s} {'-' if value is None else f'{value:.4f}'}")


@main.command("runs", context_settings=_CONTEXT)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs to list.")
@click.option("--stale", is_flag=True, help="List runs left RUNNING by a process that is gone.")
@click.option("--older_than", type=click.FloatRange(min=0), default=None, metavar="MINUTES",
              help="With --stale: also count RUNNING runs silent for this many minutes (other hosts).")
@click.option("--mark", is_flag=True,
              help="With --stale: mark them KILLED (outcome 'stale') and remove temp files of their unfinished "
                   "artifact writes.")
@click.option("--latest_id", "latest_id", is_flag=True,
              help="Print only the 6-digit id of the newest training run (for scripts).")
@experiment_option
@_errors
def runs_cmd(limit: int, stale: bool, older_than, mark: bool, latest_id: bool, experiment) -> None:
    """List recent runs (id, title, status, best val AUC, evaluated, reproduced, registered), or find stale ones.

    \b
    Example:
      gakt-runs --limit 10
      gakt-runs --stale --mark
    """
    from gainakt3exp.service.runs import (
        find_stale_runs,
        format_runs,
        format_stale,
        latest_training_exp_id,
        list_runs,
        mark_stale_runs,
        open_store,
    )

    if mark and not stale:
        raise click.UsageError("--mark goes with --stale")
    client, name = open_store(experiment)
    if stale:
        found = find_stale_runs(client, older_than if older_than is not None else float("inf"), name)
        click.echo(format_stale(found))
        if mark and found:
            click.echo(f"marked {mark_stale_runs(client, found)} run(s) KILLED (outcome 'stale')")
            for item in found:
                for path in item.get("removed_partials", []):
                    click.echo(f"removed the unfinished artifact write {path}")
                for path in item.get("kept_partials", []):
                    click.echo(f"could not remove the unfinished artifact write {path}; delete it by hand")
        return
    if latest_id:
        click.echo(latest_training_exp_id(client, name))
        return
    click.echo(format_runs(list_runs(client, limit, name)))

