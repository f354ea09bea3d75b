"""A run's trained model in MLflow's own terms: the logged model (MLflow 3 LoggedModel, pyfunc flavour, linked to
the run and to its metrics at the best epoch), its registration under a name and alias, and loading it back from
a run id or a `models:/` URI (gakt-predict). The pyfunc itself is service/pyfunc.py; inference is loops/predict.py.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from gainakt3exp import tracking
from gainakt3exp.errors import ConfigError, RunNotFoundError
from gainakt3exp.paths import PROJECT_ROOT

#: The logged model's name (its artifact folder in the model's store).
MODEL_NAME = "model"
_PACKAGE_DIR = PROJECT_ROOT / "gainakt3exp"
#: What a served model needs installed (the code travels with the model): the pins of pyproject.toml.
_REQUIREMENTS = ("torch", "mlflow", "numpy", "pandas", "scipy")


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in _REQUIREMENTS]


def signature_and_example(num_c: int, num_q: int, question_ids: bool, mastery: bool, gains: bool):
    """The model signature (history rows in, one row per student out) and a two-student input example.

    The input columns are typed `any`: MLflow's own enforcement would refuse an integer response for a double
    column or a numeric student id for a string one; loops/predict.py checks every value instead and names the
    row of any problem. `question` is required when the model reads question ids (question_embedding rasch)."""
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    inputs = [ColSpec(AnyType(), "student"), ColSpec(AnyType(), "concept")]
    if num_q:
        inputs.append(ColSpec(AnyType(), "question", required=question_ids))
    inputs.append(ColSpec(AnyType(), "response"))
    outputs = [ColSpec("string", "student"), ColSpec("string", "next"), ColSpec("double", "p_correct"),
               ColSpec("long", "answers"), ColSpec("long", "steps")]
    outputs += [ColSpec("double", f"mastery_{k}") for k in range(num_c) if mastery]
    outputs += [ColSpec("double", f"gain_{k}") for k in range(num_c) if gains]
    last = min(num_c - 1, 2)
    example = {"student": ["s1", "s1", "s1", "s2", "s2"], "concept": [0, 1 % num_c, last, 0, last],
               "response": [1, 0, None, 0, 1]}
    if num_q:
        example["question"] = [0, 1 % num_q, 2 % num_q, 0, 1 % num_q]
    frame = pd.DataFrame(example)
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs)), frame


def log_run_model(client, run_id: str, checkpoint_bytes: bytes, *, step: int) -> str:
    """Log the checkpoint as the run's MLflow model (pyfunc; weights, code, signature, input example); its metrics
    at `step` (the best epoch) are linked to the model. Returns the model id."""
    import mlflow
    from mlflow.models import Model

    from gainakt3exp.config.choices import resolve_question_embedding
    from gainakt3exp.config.params import with_added_defaults
    from gainakt3exp.loops.checkpoint import dump_checkpoint, load_checkpoint
    from gainakt3exp.service import served_model
    from gainakt3exp.service.pyfunc import CHECKPOINT_ARTIFACT

    checkpoint = load_checkpoint(checkpoint_bytes)
    params = with_added_defaults(checkpoint["params"])  # a checkpoint older than a parameter: its default
    if params != checkpoint["params"]:  # the model carries complete params: it has no parameter_default.json
        checkpoint_bytes = dump_checkpoint({**checkpoint, "params": params})
    num_c, num_q = checkpoint["num_c"], checkpoint.get("num_q", 0)
    signature, example = signature_and_example(
        num_c, num_q, question_ids=resolve_question_embedding(params["question_embedding"], num_q) == "rasch",
        mastery=bool(params["use_mastery_head"]), gains=bool(params["use_gain_head"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model_best.pth"
        path.write_bytes(checkpoint_bytes)
        with tracking.whole_call():
            info = Model.log(
                artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id, step=int(step),
                python_model=str(Path(served_model.__file__)), artifacts={CHECKPOINT_ARTIFACT: str(path)},
                code_paths=[str(_PACKAGE_DIR)], signature=signature, input_example=example,
                pip_requirements=_requirements(),
                model_type="knowledge-tracing",
                tags={tracking.TAG_MODEL_EPOCH: str(checkpoint["epoch"]),
                      tracking.TAG_MODEL_VAL_AUC: f"{checkpoint['val_auc']:.6f}"})
    return info.model_id


def logged_model_id(client, run) -> str | None:
    """The id of the run's logged model (the newest when there are several), or None."""
    outputs = getattr(run, "outputs", None)
    ids = [m.model_id for m in (outputs.model_outputs if outputs else [])]
    if not ids:
        found = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                            filter_string=f"source_run_id = '{run.info.run_id}'")
        ids = [m.model_id for m in found]
    return ids[-1] if ids else None


def ensure_logged_model(client, ref: str, echo=print) -> tuple:
    """(run, model id) of a run given by id or 6-digit id; a run trained before models were logged gets its model
    logged now, from its model_best.pth (artifacts are added; its params and metrics stay as they are)."""
    from gainakt3exp.service.evaluation import read_checkpoint

    run = tracking.resolve_run(client, ref)
    model_id = logged_model_id(client, run)
    if model_id is None:
        raw, checkpoint = read_checkpoint(client, run.info.run_id)
        echo(f"run {run.info.run_id} has no logged model yet; logging it from model_best.pth "
             f"(epoch {checkpoint['epoch']})")
        model_id = log_run_model(client, run.info.run_id, raw, step=int(checkpoint["epoch"]))
    return run, model_id


def register_run_model(client, ref: str, name: str, alias: str | None, echo=print) -> dict:
    """Register the run's logged model under `name` (a new version) and point `alias` at it."""
    import mlflow

    if not name.strip():
        raise ConfigError("--name is empty; give the registered model a name, e.g. --name gakt-assist2015")
    run, model_id = ensure_logged_model(client, ref, echo)
    with tracking.whole_call():
        version = mlflow.register_model(f"models:/{model_id}", name, await_registration_for=60)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return {"name": name, "version": version.version, "alias": alias, "run_id": run.info.run_id,
            "model_id": model_id, "uri": f"models:/{name}@{alias}" if alias else f"models:/{name}/{version.version}"}


def registrations(client) -> dict[str, list[str]]:
    """run id -> ["NAME v2 @champion", ...] for every registered model version (what gakt-runs shows)."""
    out: dict[str, list[str]] = {}
    try:
        versions = client.search_model_versions(max_results=10000)
    except Exception:  # noqa: BLE001 - a store without a registry lists no registrations
        return out
    aliases: dict[tuple, list[str]] = {}  # search_model_versions leaves aliases out; the registered model has them
    for name in sorted({v.name for v in versions}):
        try:
            for alias, version in client.get_registered_model(name).aliases.items():
                aliases.setdefault((name, str(version)), []).append(alias)
        except Exception:  # noqa: BLE001 - deleted between the two calls
            continue
    for v in versions:
        tail = "".join(f" @{a}" for a in sorted(aliases.get((v.name, str(v.version)), [])))
        if v.run_id:
            out.setdefault(v.run_id, []).append(f"{v.name} v{v.version}{tail}")
    return out


def load_predictor(client, ref: str, echo=print):
    """The pyfunc model of `ref`: a run id / 6-digit id (its logged model, logged first if missing) or a model URI
    (models:/NAME@ALIAS, models:/NAME/VERSION, models:/<model id>, runs:/...). Returns (python model, uri)."""
    import mlflow

    if ":/" in ref:
        uri = ref
    else:
        _run, model_id = ensure_logged_model(client, ref, echo)
        uri = f"models:/{model_id}"
    try:
        with tracking.whole_call():
            loaded = mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # noqa: BLE001 - MlflowException (unknown name, alias, version), OSError...
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunNotFoundError(f"cannot load model {uri}: {text[:300]}; list registered models with gakt-runs "
                               "(column registered) or give a run id") from None
    return loaded.unwrap_python_model(), uri


def read_history_file(path: str):
    """A history CSV: one row per interaction (student, concept[, question], response) or pyKT sequence rows (uid,
    concepts, responses[, questions, is_repeat, selectmasks]), read as text so ids keep their spelling."""
    import pandas as pd

    from gainakt3exp.errors import DataError
    from gainakt3exp.loops.predict import history_rows

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"history file {path} does not exist") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"history file {path} is not a readable CSV ({str(exc).splitlines()[0][:200]}); it needs a "
                        "header row and one row per interaction") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if {"uid", "concepts", "responses"} <= set(frame.columns):
        return history_rows(frame)
    return frame


def predict_file(client, ref: str, input_path: str, out_path: str, *, plot: str | None = None,
                 plot_students: int = 4, echo=print) -> dict:
    """gakt-predict: load the model of `ref`, predict every student of the input file, write the CSV (and the
    mastery heatmap of the first students with `plot`)."""
    from tqdm import tqdm

    from gainakt3exp.files import write_bytes_atomic
    from gainakt3exp.loops.predict import student_trajectories

    frame = read_history_file(input_path)
    predictor, uri = load_predictor(client, ref, echo)

    def progress(batches):
        return tqdm(batches, desc="predicting", unit="batch", disable=None if len(batches) > 1 else True)

    table = predictor.predict_frame(frame, progress=progress)
    write_bytes_atomic(Path(out_path), table.to_csv(index=False).encode())
    result = {"uri": uri, "students": len(table), "out": out_path}
    if plot:
        from gainakt3exp.service.plots import mastery_students_png

        students = student_trajectories(predictor.model, frame, students=plot_students, device="cpu")
        if students:
            write_bytes_atomic(Path(plot), mastery_students_png(students, title=f"Mastery per concept ({uri})"))
            result["plot"] = plot
        else:
            echo("the model has no mastery head: no mastery picture")
    return result
