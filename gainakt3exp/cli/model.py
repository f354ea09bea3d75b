"""The trained model as a product: gakt-register (the Model Registry, with an alias) and gakt-predict (mastery and
P(correct) of students' histories, from a run or a registered model)."""
from __future__ import annotations

import click

from gainakt3exp.cli.common import CONTEXT, errors
from gainakt3exp.cli.run import main


@main.command("register", context_settings=CONTEXT)
@click.argument("run")
@click.option("--name", required=True, help="Registered model name (created on first use; each call adds a version).")
@click.option("--alias", default=None, metavar="ALIAS",
              help="Point this alias (e.g. champion) at the new version; serve it as models:/NAME@ALIAS.")
@errors
def register_cmd(run: str, name: str, alias) -> None:
    """Register RUN's logged model (run id or 6-digit id) in the Model Registry under NAME, optionally with ALIAS.

    A run trained before models were logged gets its model logged first, from its model_best.pth.

    \b
    Example:
      gakt-register 423891 --name gakt-assist2015 --alias champion
      mlflow models serve -m models:/gakt-assist2015@champion --env-manager local
    """
    from gainakt3exp.service.models import register_run_model
    from gainakt3exp.service.runs import open_store

    done = register_run_model(open_store()[0], run, name, alias, echo=lambda m: click.echo(m, err=True))
    click.echo(f"registered run {done['run_id']} (model {done['model_id']}) as {done['name']} version "
               f"{done['version']}" + (f", alias @{done['alias']}" if done["alias"] else "") + f": {done['uri']}")


@main.command("predict", context_settings=CONTEXT)
@click.argument("model")
@click.option("--input", "input_path", required=True, metavar="CSV",
              help="Histories: one row per interaction (student, concept, [question,] response; an empty response "
                   "on a student's last row asks for P(correct) of that question), or pyKT sequence rows (uid, "
                   "concepts, responses[, questions, is_repeat]).")
@click.option("--out", "out_path", required=True, metavar="CSV",
              help="One row per student: student, next, p_correct, answers, steps, mastery_<k>, gain_<k>.")
@click.option("--plot", default=None, metavar="PNG", help="Also draw the mastery heatmap of the first students.")
@click.option("--plot_students", type=click.IntRange(min=1), default=4, show_default=True,
              help="How many students --plot draws.")
@errors
def predict_cmd(model: str, input_path: str, out_path: str, plot, plot_students: int) -> None:
    """Mastery of every concept, the last step's gains and P(correct) of a next question, for each student of a
    history file, from MODEL: a run id, a 6-digit id, or a model URI (models:/NAME@ALIAS, models:/NAME/VERSION).

    The model reads the last seq_len - 1 steps of a history (pyKT's window evaluation); docs/serving.md.

    \b
    Example:
      gakt-predict models:/gakt-assist2015@champion --input history.csv --out mastery.csv --plot mastery.png
    """
    from gainakt3exp.service.models import predict_file
    from gainakt3exp.service.runs import open_store

    done = predict_file(open_store()[0], model, input_path, out_path, plot=plot, plot_students=plot_students,
                        echo=lambda m: click.echo(m, err=True))
    click.echo(f"{done['students']} student(s) predicted with {done['uri']}: {done['out']}"
               + (f", picture {done['plot']}" if "plot" in done else ""))
