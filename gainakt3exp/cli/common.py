"""What every click command module shares, defined once: context settings, the error wrapper, the run-parameter
options (one `--<name> VALUE` per parameter), --experiment, and console-script wrappers.

Known errors become one line on stderr: exit 2 for bad input (parameters, files, run ids), 1 for failures.
"""
from __future__ import annotations

import functools
import sys

import click

from gainakt3exp.config.params import format_value, load_defaults, parameter_meanings
from gainakt3exp.errors import GaktError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def errors(func):
    """Turn the project's errors into one line on stderr and the documented exit status."""

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


def param_options(func):
    """One optional `--<name> VALUE` per run parameter (values parsed and validated together, bools true|false)."""
    meanings = parameter_meanings()
    defaults = load_defaults().values
    for key in reversed(list(defaults)):
        # A bool option given bare gets _NO_VALUE (then refused); others keep click's "requires an argument",
        # because an optional value would read a negative number (-0.1) as an option.
        bare = {"is_flag": False, "flag_value": _NO_VALUE} if isinstance(defaults[key], bool) else {}
        func = click.option(f"--{key}", key, default=None, metavar="VALUE", help=meanings.get(key),
                            callback=_require_value, **bare)(func)
    return func


def experiment_option(func):
    return click.option("--experiment", default=None, metavar="NAME",
                        help="MLflow experiment to use (else $GAKT_EXPERIMENT_NAME, else 'gainakt3exp').")(func)


def extra_pairs(args: list[str]) -> dict:
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


def script(command):
    """A console-script entry point (pyproject's [project.scripts]) that runs one click command."""
    def run(argv=None):
        command.main(args=argv, standalone_mode=True)

    return run
