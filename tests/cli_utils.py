"""What the command-line tests share: the venv's bin folder and `gakt <args>` run in-process through click's
CliRunner on gainakt3exp.cli.main (what the console scripts call)."""
import sys
from pathlib import Path

from click.testing import CliRunner

from gainakt3exp.cli import main

BIN = Path(sys.executable).parent
HEX_NOBODY = "0123456789abcdef0123456789abcdef"  # a well-formed run id no store holds


def invoke(*args: str):
    """Run `gakt <args>`; the result has exit_code and output (stdout and stderr as the user sees them)."""
    return CliRunner().invoke(main, list(args))


def all_runs(uri: str) -> list:
    """Every run of every experiment of the store at URI."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])
