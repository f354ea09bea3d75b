"""The `gakt-data` verbs (also `gakt data ...`): list and register data sets, import 3-line files and pyKT's
data.txt, generate synthetic students. Thin: each calls registry.py, three_line.py, pykt_split.py or synthetic.py.

    gakt-data list
    gakt-data import-pykt --src ../shared/data/assist2015/data.txt --out data/a15 --name a15
"""
from __future__ import annotations

from pathlib import Path

import click

from gainakt3exp.cli.common import CONTEXT as _CONTEXT
from gainakt3exp.cli.common import errors as _errors
from gainakt3exp.config.params import load_defaults


@click.group("data", context_settings=_CONTEXT)
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

    from gainakt3exp.data import registry
    from gainakt3exp.data.registry import dataset_files, dataset_root, resolve_data_root

    root = resolve_data_root(data_root if data_root is not None else load_defaults().values["data_root"])
    known = registry.known_sets()
    for name in names:
        registry.lookup(name)  # an unknown name: one line listing the known ones, exit 2
    rows = []
    for name in names or known:
        k = known[name]
        folder = dataset_root(k.entry, root).resolve()
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
    that file's folder. Concept-level and question-level entries (input_type with questions, num_q) alike. Nothing
    of the project is edited.

    \b
    Example:
      gakt-data register --pykt-config ~/pykt-toolkit/configs/data_config.json --name assist2015 --as pykt_a15
    """
    from gainakt3exp.data import registry
    from gainakt3exp.data.registry import dataset_files

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
    from gainakt3exp.data import registry

    entry = registry.unregister(name)
    click.echo(f"removed data set {name!r} (files in {entry['dpath']}, kept) from {registry.user_registry_path()}")


@data_group.command("synth", context_settings=_CONTEXT)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to write.")
@click.option("--students", required=True, type=click.IntRange(min=5), help="Number of simulated students.")
@click.option("--skills", required=True, type=click.IntRange(min=1), help="Number of skills (<= num_c).")
@click.option("--seed", required=True, type=int, help="Seed of the generator (same seed = same files).")
@click.option("--questions", type=click.IntRange(min=0), default=0, show_default=True,
              help="Questions (0: concept-level students, one skill per response; > 0: question-level data).")
@click.option("--max_concepts", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --questions: each question is tagged with 1..this many concepts.")
@_errors
def synth_cmd(out: Path, students: int, skills: int, seed: int, questions: int, max_concepts: int) -> None:
    """Write simulated students with known mastery in pyKT layout (plus the true mastery). With --questions, a
    question-level data set: each question tagged with 1..--max_concepts concepts, answered by the concepts' true
    mastery (the built-in set synthetic_questions).

    \b
    Example:
      gakt-data synth --out data/synthetic --students 1000 --skills 20 --seed 7
      gakt-data synth --out data/synthetic_questions --students 1000 --skills 20 --questions 200 \\
          --max_concepts 3 --seed 7
    """
    from gainakt3exp.data.registry import BUILTIN, read_data_config
    from gainakt3exp.data.synthetic import generate_synthetic, generate_synthetic_questions

    maxlen = read_data_config(BUILTIN)["synthetic"]["maxlen"]  # the window width the synthetic sets declare (200)
    if questions:
        summary = generate_synthetic_questions(out, students=students, skills=skills, seed=seed, maxlen=maxlen,
                                               questions=questions, max_concepts=max_concepts)
    else:
        if max_concepts != 1:
            raise click.UsageError("--max_concepts goes with --questions (concepts per question)")
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
    from gainakt3exp.data.registry import check_new_name

    kept: dict = {}

    def on_entry(entry: dict) -> None:
        if name is not None:
            check_new_name(name, entry)
        kept.update(entry)

    return kept, on_entry


def _register_imported(name: str, entry: dict) -> None:
    from gainakt3exp.data import registry

    added = registry.register({name: entry})
    click.echo(f"{'registered' if added else 'already registered:'} data set {name!r} (files in "
               f"{entry['dpath']}) in the user registry {registry.user_registry_path()}; train on it with "
               f"--dataset {name} --seq_len {entry['maxlen']}")


@data_group.command("import-3line", context_settings=_CONTEXT)
@click.option("--src", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with <prefix>_train<k>.csv, _valid<k>.csv and _test<k>.csv (or _test.csv).")
@click.option("--prefix", required=True, help="File prefix, e.g. assist2015 (AKT's 4-line sets: assist2009_pid).")
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

    A prefix ending in _pid reads AKT's 4-line question-level files (header / problem ids / skill ids /
    responses): a problem with k skills is k consecutive rows with the same problem and response, collapsed into
    one multi-concept answer and written as pyKT writes question-level data (k steps, is_repeat), every row kept.

    \b
    Example:
      gakt-data import-3line --src ../shared/data/assist2015/akt --prefix assist2015 --fold 1 \\
          --out data/assist2015_akt --maxlen 200 --min_seq_len 3 --register assist2015_akt
      gakt-data import-3line --src ../shared/data/assist2009/akt --prefix assist2009_pid --fold 1 \\
          --out data/assist2009_akt --maxlen 200 --min_seq_len 3 --register assist2009_akt
    """
    from gainakt3exp.data.three_line import import_three_line

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
    ids remapped, windows) into OUT, then register it as NAME. Concept-level data, and question-level data with
    multi-concept questions (`_`-joined concept ids: pyKT's expansion with is_repeat, and its two question test
    files).

    \b
    Example:
      gakt-data import-pykt --src ../shared/data/assist2015/data.txt --out data/a15 --name a15
    """
    from gainakt3exp.data.pykt_split import import_pykt

    folder = _out_folder(out)
    entry, on_entry = _entry_check(name)
    summary = import_pykt(src, folder, name=name, min_seq_len=min_seq_len, maxlen=maxlen, kfold=kfold,
                          on_entry=on_entry)
    click.echo(f"wrote {out}: {summary}")
    _register_imported(name, entry)
