"""The `gakt-study` commands (also `gakt study <verb>`): launch, search, show, resume. Thin: the work is in
study/driver.py, plan.py, report.py, search.py and engine.py.

    gakt-study launch --short_title paper --profile cpu-small --data_root ../shared/data --folds 0,1,2,3,4 --seeds 42
    gakt-study show 512034
"""
from __future__ import annotations

import sys

import click

from gainakt3exp.cli.common import CONTEXT as _CONTEXT
from gainakt3exp.cli.common import errors as _errors
from gainakt3exp.cli.common import experiment_option, extra_pairs, param_options
from gainakt3exp.config.params import list_profiles

#: Documented defaults of the engine settings (recorded in every study's config.json): 2 children at once,
#: 1 torch thread each, i.e. the 2 cores of the reference machine.
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 1


def _engine_options(func):
    func = click.option("--address", default=None, metavar="HOST:PORT",
                        help="Ray cluster to submit to (else $RAY_ADDRESS, else a local cluster started and "
                             "stopped by this command).")(func)
    func = click.option("--threads_per_run", type=int, default=DEFAULT_THREADS, show_default=True,
                        help="CPUs (Ray num_cpus) and torch threads of each child.")(func)
    return click.option("--workers", type=int, default=DEFAULT_WORKERS, show_default=True,
                        help="Children at once on a local cluster (its CPUs = workers x threads_per_run).")(func)


def _definition_options(func):
    func = click.option("--seeds", required=True, metavar="S1,S2,...", help="Seeds of every child, e.g. 42,43.")(func)
    func = click.option("--folds", required=True, metavar="F1,F2,...",
                        help="Validation folds, one child per fold (x seed x grid point), e.g. 0,1,2,3,4.")(func)
    func = click.option("--profile", "profiles", multiple=True, metavar="NAME",
                        help=f"Override set for every child (repeatable): {', '.join(list_profiles())}.")(func)
    return click.option("--short_title", required=True,
                        help="A short name for the study (letters, digits, _ - .).")(func)


@click.group("study", context_settings=_CONTEXT)
def study_group() -> None:
    """Studies: folds x seeds x grid points as one tracked record (a parent run over ordinary runs), on Ray.

    \b
    Example:
      gakt-study launch --short_title paper --profile cpu-small --data_root ../shared/data --folds 0,1,2,3,4 \\
          --seeds 42 --eval
      gakt-study show 512034
    """


@study_group.command("launch", context_settings={**_CONTEXT, "ignore_unknown_options": True, "allow_extra_args": True})
@_definition_options
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2",
              help="A parameter to vary (repeatable; children = folds x seeds x every combination).")
@click.option("--eval", "evaluate", is_flag=True, help="Evaluate every child's best checkpoint (test metrics).")
@click.option("--dry_run", is_flag=True, help="Validate and print the children's commands; write nothing.")
@_engine_options
@experiment_option
@param_options
@_errors
@click.pass_context
def launch_cmd(ctx, short_title, profiles, folds, seeds, grid, evaluate, dry_run, workers, threads_per_run, address,
               experiment, **values) -> None:
    """Run a study: every child validated first, then a parent run and its children, run on Ray.

    Exit 0 when every child finished, 1 when some failed (named), 130 after Ctrl-C / SIGTERM.

    \b
    Example:
      gakt-study launch --short_title folds --profile tiny --data_root data --folds 0,1 --seeds 42,43
      gakt-study launch --short_title lr --profile tiny --folds 0 --seeds 42 --grid learning_rate=0.001,0.003
    """
    from gainakt3exp.study.driver import launch_study
    from gainakt3exp.study.plan import build_plan

    overrides = {k: v for k, v in values.items() if v is not None}
    overrides.update(extra_pairs(ctx.args))
    plan = build_plan(short_title, list(profiles), overrides, folds, seeds, list(grid), evaluate, workers,
                      threads_per_run)
    sys.exit(launch_study(plan, address, dry_run, experiment, echo=click.echo))


@study_group.command("search", context_settings={**_CONTEXT, "ignore_unknown_options": True, "allow_extra_args": True})
@_definition_options
@click.option("--space", required=True, metavar="FILE|NAME",
              help="JSON search space: parameter -> distribution; or the name of a shipped space in configs/spaces "
                   "(cpu-default).")
@click.option("--trials", type=int, required=True, help="Number of trials (each = folds x seeds children).")
@click.option("--sampler", type=click.Choice(["tpe", "random"]), default="tpe", show_default=True,
              help="Optuna sampler.")
@click.option("--sampler_seed", type=int, default=0, show_default=True, help="Seed of the sampler (recorded).")
@_engine_options
@experiment_option
@param_options
@_errors
@click.pass_context
def search_cmd(ctx, short_title, profiles, folds, seeds, space, trials, sampler, sampler_seed, workers,
               threads_per_run, address, experiment, **values) -> None:
    """Search hyperparameters with Optuna on mean val AUC (test metrics are never read); print the best trial
    as a `gakt-study launch ... --eval` line on every fold of the data set, to report it.

    \b
    Example:
      gakt-study search --short_title lr --profile tiny --data_root data --space space.json --trials 3 \\
          --folds 0 --seeds 42
    """
    from gainakt3exp.study.search import run_search

    overrides = {k: v for k, v in values.items() if v is not None}
    overrides.update(extra_pairs(ctx.args))
    sys.exit(run_search(short_title=short_title, profiles=list(profiles), overrides=overrides, space_path=space,
                        trials=trials, folds=folds, seeds=seeds, sampler=sampler, sampler_seed=sampler_seed,
                        workers=workers, threads_per_run=threads_per_run, address=address,
                        experiment_name=experiment, echo=click.echo))


@study_group.command("show", context_settings=_CONTEXT)
@click.argument("study")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_errors
def show_cmd(study: str, as_json: bool) -> None:
    """Print a study's table (mean ± std per grid point or trial, then every child), read from the store.

    \b
    Example:
      gakt-study show 512034 --json
    """
    from gainakt3exp.study.driver import load_report
    from gainakt3exp.study.report import format_report, report_json

    report = load_report(study)
    click.echo(report_json(report) if as_json else format_report(report))


@study_group.command("resume", context_settings=_CONTEXT)
@click.argument("study")
@click.option("--workers", type=int, default=None, help="Children at once (default: the study's own setting).")
@click.option("--address", default=None, metavar="HOST:PORT", help="Ray cluster (else $RAY_ADDRESS, else local).")
@_errors
def resume_cmd(study: str, workers, address) -> None:
    """Run only the children of STUDY that did not finish (new attempts of their slots), then aggregate again.

    The torch threads per child stay the study's own (they can move the last digits of the metrics).

    \b
    Example:
      gakt-study resume 512034
    """
    from gainakt3exp.study.driver import resume_study

    sys.exit(resume_study(study, address, workers, echo=click.echo))
