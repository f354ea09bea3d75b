"""Thin click commands. Each verb is also a console script: gakt-launch, gakt-eval, gakt-repro, gakt-compare,
gakt-runs, gakt-data (and `gakt <verb>`).

    gakt-launch --short_title baseline --profile quickstart
    gakt-eval 423891 && gakt-repro 423891 && gakt-compare 423891

Known errors become one line on stderr: exit 2 for bad input (parameters, files, run ids), 1 for failures.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from .errors import GaktError
from .params import format_value, list_profiles, load_defaults

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _errors(func):
    """Turn our errors into one line on stderr and the documented exit status."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except GaktError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


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

    \b
    Example:
      gakt-repro 423891 --eval && gakt-compare 423891
    """
    from .experiment import reproduce

    sys.exit(reproduce(run, echo=click.echo, evaluate=evaluate))


@main.command("compare", context_settings=_CONTEXT)
@click.argument("run")
@click.option("--repro", default=None, metavar="RUN", help="The reproduction to compare with (default: the latest).")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Largest |difference| that still counts as a match.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_errors
def compare_cmd(run: str, repro, tolerance: float, as_json: bool) -> None:
    """Compare RUN with its reproduction through the tracking API. Exit 0: identical or within tolerance; 1: differs.

    \b
    Example:
      gakt-compare 423891 --tolerance 1e-6
    """
    from . import tracking
    from .compare import compare_runs, format_report, report_json, verdict_exit_code

    if tolerance < 0:
        raise click.BadParameter("must be >= 0", param_hint="--tolerance")
    report = compare_runs(tracking.connect(), run, repro, tolerance)
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


@main.group("data", context_settings=_CONTEXT)
def data_group() -> None:
    """Data sets: list and register them, import 3-line files or pyKT's data.txt, generate synthetic students.

    Built-in sets live in configs/data_config.json; your own in the user registry $GAKT_DATA_REGISTRY (default
    ~/.config/gainakt3exp/data_config.json), so registering never edits a file of the project.

    \b
    Example:
      gakt-data list
      gakt-data import-pykt --src ../pykt/data/assist2015/data.txt --out data/a15 --name a15
      gakt-data register --pykt-config ../pykt-toolkit/configs/data_config.json --name statics2011
    """


@data_group.command("list", context_settings=_CONTEXT)
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--data_root", default=None, metavar="DIR",
              help="Where built-in sets' folders are (default: data_root of configs/parameter_default.json, "
                   "relative to the project folder, as a run resolves it).")
@_errors
def list_cmd(names: tuple, data_root) -> None:
    """Every known data set: where its entry comes from, its folder, whether its files exist. With NAMEs: their
    entries in full.

    \b
    Example:
      gakt-data list
      gakt-data list assist2015 --data_root ../shared/data
    """
    import json

    from . import registry
    from .data import dataset_files, dataset_root
    from .train import resolve_data_root

    root = resolve_data_root(data_root if data_root is not None else load_defaults().values["data_root"])
    known = registry.known_sets()
    for name in names:
        registry.lookup(name)  # an unknown name: one line listing the known ones, exit 2
    rows = []
    for name in names or known:
        k = known[name]
        folder = dataset_root(k.entry, root)
        missing = [f for f in dataset_files(k.entry) if not (folder / f).is_file()]
        files = "ok" if not missing else ("folder missing" if not folder.is_dir() else f"missing {', '.join(missing)}")
        rows.append((name, k.kind, str(k.entry["num_c"]), str(k.entry["maxlen"]), files, str(folder)))
        if names:
            click.echo(f"{name} ({k.kind}, {k.origin}): files {files} in {folder}")
            click.echo(json.dumps(k.entry, indent=2))
    if not names:
        header = ("name", "source", "num_c", "maxlen", "files", "folder")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
        for row in [header, *rows]:
            click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[5])
        click.echo(f"built-in: {registry.BUILTIN}; user registry: {registry.user_registry_path()} "
                   f"(${registry.REGISTRY_ENV})")


@data_group.command("register", context_settings=_CONTEXT)
@click.option("--pykt-config", "pykt_config", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A pyKT data_config.json (pyKT's own configs/data_config.json, or one an importer wrote).")
@click.option("--name", default=None, help="The data set of that file to register (default: every one).")
@click.option("--as", "as_name", default=None, metavar="NEW", help="Register it under this name (with --name).")
@_errors
def register_cmd(pykt_config: Path, name, as_name) -> None:
    """Add data sets of a pyKT data_config.json to the user registry; relative dpaths are resolved against
    that file's folder. Nothing of the project is edited.

    \b
    Example:
      gakt-data register --pykt-config ~/pykt-toolkit/configs/data_config.json --name assist2015 --as pykt_a15
    """
    from . import registry
    from .data import dataset_files

    if as_name is not None and name is None:
        raise click.UsageError("--as goes with --name (it renames one data set)")
    entries = registry.pykt_entries(pykt_config, name)
    if as_name is not None:
        entries = {as_name: entries[name]}
    new = registry.register(entries)
    for key, entry in entries.items():
        missing = [f for f in dataset_files(entry) if not (Path(entry["dpath"]) / f).is_file()]
        note = f" (files missing in {entry['dpath']}: {', '.join(missing)})" if missing else ""
        click.echo(f"{'registered' if key in new else 'already registered:'} data set {key!r} in "
                   f"{registry.user_registry_path()}{note}; train on it with --dataset {key} "
                   f"--seq_len {entry['maxlen']}")


@data_group.command("unregister", context_settings=_CONTEXT)
@click.argument("name")
@_errors
def unregister_cmd(name: str) -> None:
    """Remove data set NAME from the user registry (its files stay; built-in sets cannot be removed).

    \b
    Example:
      gakt-data unregister a15
    """
    from . import registry

    entry = registry.unregister(name)
    click.echo(f"removed data set {name!r} (files in {entry['dpath']}, kept) from {registry.user_registry_path()}")


@data_group.command("synth", context_settings=_CONTEXT)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to write.")
@click.option("--students", required=True, type=click.IntRange(min=5), help="Number of simulated students.")
@click.option("--skills", required=True, type=click.IntRange(min=1), help="Number of skills (<= num_c).")
@click.option("--seed", required=True, type=int, help="Seed of the generator (same seed = same files).")
@_errors
def synth_cmd(out: Path, students: int, skills: int, seed: int) -> None:
    """Write simulated students with known mastery in pyKT layout (plus the true mastery).

    \b
    Example:
      gakt-data synth --out data/synthetic --students 1000 --skills 20 --seed 7
    """
    from .registry import BUILTIN, read_data_config
    from .synthetic import generate_synthetic

    maxlen = read_data_config(BUILTIN)["synthetic"]["maxlen"]  # the window width the synthetic sets declare (200)
    summary = generate_synthetic(out, students=students, skills=skills, seed=seed, maxlen=maxlen)
    click.echo(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in summary.items() if not isinstance(v, dict)))


def _out_folder(out: Path) -> Path:
    folder = out.resolve()  # `--out .` or `--out data/x/` name the folder too
    if not folder.name:
        raise click.BadParameter(f"{out} is the file system root; write into a folder", param_hint="--out")
    return folder


def _entry_check(name: str | None) -> tuple[dict, callable]:
    """An importer's on_entry hook: refuses a taken `name` before anything is written (None: no check) and keeps
    the entry, for _register_imported."""
    from .registry import check_new_name

    kept: dict = {}

    def on_entry(entry: dict) -> None:
        if name is not None:
            check_new_name(name, entry)
        kept.update(entry)

    return kept, on_entry


def _register_imported(name: str, entry: dict) -> None:
    from . import registry

    added = registry.register({name: entry})
    click.echo(f"{'registered' if added else 'already registered:'} data set {name!r} (files in "
               f"{entry['dpath']}) in the user registry {registry.user_registry_path()}; train on it with "
               f"--dataset {name} --seq_len {entry['maxlen']}")


@data_group.command("import-3line", context_settings=_CONTEXT)
@click.option("--src", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with <prefix>_train<k>.csv, _valid<k>.csv and _test<k>.csv (or _test.csv).")
@click.option("--prefix", required=True, help="File prefix, e.g. assist2015.")
@click.option("--fold", required=True, type=click.IntRange(min=1), help="Which fold k to import (1-based).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to write.")
@click.option("--num_c", default=None, type=click.IntRange(min=1),
              help="Number of skills; checked if given. Omitted: derived (ids exactly 1..max: max; otherwise "
                   "ids are remapped 0-based as pyKT does and num_c = their number).")
@click.option("--maxlen", required=True, type=click.IntRange(min=2), help="Window length (pyKT maxlen).")
@click.option("--min_seq_len", required=True, type=click.IntRange(min=1), help="Drop shorter histories.")
@click.option("--register", "register_as", default=None, metavar="NAME",
              help="Also register the written folder as data set NAME in the user registry "
                   "(train with --dataset NAME).")
@_errors
def import_cmd(src: Path, prefix: str, fold: int, out: Path, num_c, maxlen: int, min_seq_len: int,
               register_as: str | None) -> None:
    """Convert the 3-line layout of DKT/DKVMN/AKT/SAKT code (header = a response count or <row>,<student id>)
    to pyKT layout, with keyid2idx.json and a pyKT data_config.json entry.

    \b
    Example:
      gakt-data import-3line --src ../shared/data/assist2015/akt --prefix assist2015 --fold 1 \\
          --out data/assist2015_akt --maxlen 200 --min_seq_len 3 --register assist2015_akt
    """
    from .three_line import import_three_line

    folder = _out_folder(out)
    entry, on_entry = _entry_check(register_as)
    summary = import_three_line(src, prefix, fold, folder, maxlen=maxlen, min_seq_len=min_seq_len,
                                name=register_as or folder.name, num_c=num_c, on_entry=on_entry)
    click.echo(f"wrote {out}: {summary}")
    if register_as is not None:
        _register_imported(register_as, entry)


@data_group.command("import-pykt", context_settings=_CONTEXT)
@click.option("--src", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="pyKT's data.txt (6 lines per student, what its data_preprocess.py writes).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to write.")
@click.option("--name", required=True, help="Data set name, registered in the user registry.")
@click.option("--min_seq_len", type=click.IntRange(min=1), default=3, show_default=True,
              help="pyKT's min_seq_len: drop shorter histories and window remainders.")
@click.option("--maxlen", type=click.IntRange(min=2), default=200, show_default=True, help="pyKT's maxlen.")
@click.option("--kfold", type=click.IntRange(min=2), default=5, show_default=True, help="pyKT's number of folds.")
@_errors
def import_pykt_cmd(src: Path, out: Path, name: str, min_seq_len: int, maxlen: int, kfold: int) -> None:
    """Split pyKT's data.txt exactly as pyKT's split_datasets does (80/20 test split and folds with its seed 1024,
    ids remapped, windows) into OUT, then register it as NAME. Concept-level data only.

    \b
    Example:
      gakt-data import-pykt --src ../shared/data/assist2015/data.txt --out data/a15 --name a15
    """
    from .pykt_split import import_pykt

    folder = _out_folder(out)
    entry, on_entry = _entry_check(name)
    summary = import_pykt(src, folder, name=name, min_seq_len=min_seq_len, maxlen=maxlen, kfold=kfold,
                          on_entry=on_entry)
    click.echo(f"wrote {out}: {summary}")
    _register_imported(name, entry)


def _script(command):
    def run(argv=None):
        command.main(args=argv, standalone_mode=True)

    return run


launch_main = _script(launch_cmd)
repro_main = _script(repro_cmd)
compare_main = _script(compare_cmd)
eval_main = _script(eval_cmd)
runs_main = _script(runs_cmd)
data_main = _script(data_group)
