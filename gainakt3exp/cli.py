"""Thin click commands. Each verb is also a console script: gakt-launch, gakt-eval, gakt-repro, gakt-compare,
gakt-runs, gakt-data, gakt-study (and `gakt <verb>`).

    gakt-launch --short_title baseline --profile quickstart
    gakt-eval 423891 && gakt-repro 423891 && gakt-compare 423891

Known errors become one line on stderr: exit 2 for bad input (parameters, files, run ids), 1 for failures.
"""
from __future__ import annotations

import sys

import click

from .cli_base import CONTEXT as _CONTEXT, errors as _errors
from .params import format_value, list_profiles, load_defaults

_NO_VALUE = "\0no value"  # what a bool option given bare (`--use_amp`) receives, so it can be refused by name


def _require_value(ctx, param, value):
    """Refuse `--use_amp` without a value, and `--epochs --d_model 16` (an option name taken as the value)."""
    if value == _NO_VALUE or (isinstance(value, str) and value.startswith("--")):
        example = format_value(load_defaults().values[param.name])
        if isinstance(load_defaults().values[param.name], bool):
            hint = (f"--{param.name} true or --{param.name} false (a bare flag is refused: its meaning would "
                    "depend on the default)")
        else:
            hint = f"e.g. --{param.name} {example}"
        raise click.BadParameter(f"needs a value: {hint}", ctx=ctx, param=param)
    return value


def _param_options(func):
    """One optional `--<name> VALUE` per run parameter (values parsed and validated together, bools true|false)."""
    from .runner import _meanings

    meanings = _meanings()
    defaults = load_defaults().values
    for key in reversed(list(defaults)):
        # A bool option given bare gets _NO_VALUE (then refused); others keep click's "requires an argument",
        # because an optional value would read a negative number (-0.1) as an option.
        bare = {"is_flag": False, "flag_value": _NO_VALUE} if isinstance(defaults[key], bool) else {}
        func = click.option(f"--{key}", key, default=None, metavar="VALUE", help=meanings.get(key),
                            callback=_require_value, **bare)(func)
    return func


def _experiment_option(func):
    return click.option("--experiment", default=None, metavar="NAME",
                        help="MLflow experiment to use (else $GAKT_EXPERIMENT_NAME, else 'gainakt3exp').")(func)


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
@_experiment_option
@_param_options
@_errors
@click.pass_context
def launch_cmd(ctx, short_title, profiles, dry_run, experiment, **values) -> None:
    """Start a tracked training run: defaults, then --profile, then --<param> VALUE; validated; then `mlflow run`.

    \b
    Example:
      gakt-launch --short_title baseline --profile cpu-small --data_root ../shared/data --epochs 4
      gakt-launch --short_title demo --profile quickstart --dry_run
    """
    from .experiment import launch

    overrides = {k: v for k, v in values.items() if v is not None}
    overrides.update(_extra_pairs(ctx.args))  # unknown --keys: reported with every other parameter problem
    sys.exit(launch(overrides, list(profiles), short_title, experiment, dry_run, echo=click.echo))


def _extra_pairs(args: list[str]) -> dict:
    """`--key value` / `--key=value` pairs click did not know, handed to validation so all problems show at once."""
    pairs, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise click.UsageError(f"unexpected argument {arg!r}; parameters are given as --<name> VALUE")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, value = arg[2:], args[i + 1]
            i += 2
        else:
            raise click.UsageError(f"{arg} needs a value: {arg} VALUE")
        pairs[key] = value
    return pairs


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
    from .study_repro import reproduce_any

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
    from . import tracking
    from .compare import compare_runs, format_report, report_json, verdict_exit_code

    if tolerance < 0:
        raise click.BadParameter("must be >= 0", param_hint="--tolerance")
    client = tracking.connect()
    from .study_repro import compare_study, format_study_comparison, is_study

    if is_study(tracking.resolve_run(client, run)):
        report = compare_study(client, run, repro, tolerance)
        click.echo(report_json(report) if as_json else format_study_comparison(report))
        sys.exit(verdict_exit_code(report))
    report = compare_runs(client, run, repro, tolerance)
    click.echo(report_json(report) if as_json else format_report(report))
    sys.exit(verdict_exit_code(report))


@main.command("eval", context_settings=_CONTEXT)
@click.argument("run")
@click.option("--max_correlation_students", type=click.IntRange(min=1), default=None,
              help="Students per split for correlations (default: the run's own value).")
@click.option("--batch_size", type=click.IntRange(min=1), default=None, help="Default: the run's own value.")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N (default: the run's own value).")
@_errors
def eval_cmd(run: str, max_correlation_students, batch_size, device) -> None:
    """Evaluate the best checkpoint of RUN on train/valid/test and the window test; log eval/* to RUN.

    \b
    Example:
      gakt-eval 423891
    """
    from . import tracking
    from .runner import evaluate_run

    results = evaluate_run(tracking.connect(), run, max_correlation_students=max_correlation_students,
                           batch_size=batch_size, device=device, echo=lambda m: click.echo(m, err=True))
    for key in ("valid_auc", "test_auc", "test_window_auc", "test_accuracy", "test_mastery_correlation",
                "test_gain_correlation"):
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
@_experiment_option
@_errors
def runs_cmd(limit: int, stale: bool, older_than, mark: bool, latest_id: bool, experiment) -> None:
    """List recent runs (id, title, status, best val AUC, evaluated, reproduced), or find stale ones.

    \b
    Example:
      gakt-runs --limit 10
      gakt-runs --stale --mark
    """
    from . import tracking
    from .runs import find_stale_runs, format_runs, format_stale, latest_training_exp_id, list_runs, mark_stale_runs

    if mark and not stale:
        raise click.UsageError("--mark goes with --stale")
    client = tracking.connect()
    name = tracking.experiment_name(experiment) if experiment else None
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


from .data_cli import data_group  # noqa: E402


def _script(command):
    def run(argv=None):
        command.main(args=argv, standalone_mode=True)

    return run


from . import cli_study  # noqa: E402 - registers `gakt study` (its commands live there)

launch_main = _script(launch_cmd)
repro_main = _script(repro_cmd)
compare_main = _script(compare_cmd)
eval_main = _script(eval_cmd)
runs_main = _script(runs_cmd)
main.add_command(data_group)  # the `data` verbs live in data_cli.py
data_main = _script(data_group)
study_main = _script(cli_study.study_group)
