"""What every click command module shares: context settings and the error wrapper (cli.py, data_cli.py).

Known errors become one line on stderr: exit 2 for bad input (parameters, files, run ids), 1 for failures.
"""
from __future__ import annotations

import functools
import sys

import click

from .errors import GaktError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def errors(func):
    """Turn our errors into one line on stderr and the documented exit status."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except GaktError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper
