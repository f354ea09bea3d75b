"""Bad input gets one clear message (the problem and the fix), the documented exit status, and writes nothing.

Exit 2 = bad input (parameters, data files, run ids, tampered artifacts), 1 = a failure (server unreachable).
The commands run in-process through click's CliRunner on gainakt3exp.cli.main (what the console scripts call).
Fast tests need no training; the few that need a trained run share one tiny run and are marked slow.
"""
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from gainakt3exp.cli import main

BIN = Path(sys.executable).parent
HEX_NOBODY = "0123456789abcdef0123456789abcdef"


def invoke(*args: str):
    """Run `gakt <args>`; the result has exit_code and output (stdout and stderr as the user sees them)."""
    return CliRunner().invoke(main, list(args))


@pytest.fixture(autouse=True)
def _reset_mlflow_uri():
    """tracking.connect() sets MLflow's process-wide URI; do not let it leak into other tests."""
    yield
    import mlflow

    mlflow.set_tracking_uri(None)


@pytest.fixture
def store_dir(tmp_path, monkeypatch) -> Path:
    """Where the tracking store would go; tests that refuse early assert it was never created."""
    folder = tmp_path / "store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    return folder


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> str:
    """An initialised store with no runs (created once: a fresh SQLite store takes a second or two)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('empty-store') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture
def in_empty_store(empty_store, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty_store)
    yield empty_store
    assert _all_runs(empty_store) == []  # nothing was created by the refused command


def _all_runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _launch(data_root: Path, *extra: str):
    return invoke("launch", "--short_title", "bad", "--profile", "tiny", "--data_root", str(data_root), *extra)


# --- parameters ---------------------------------------------------------------------------------------------------


def _refused(result, store_dir: Path, *expected: str) -> None:
    """Exit 2 with every expected message in the output, and no tracking store created."""
    assert result.exit_code == 2, result.output
    for text in expected:
        assert text in result.output, (text, result.output)
    assert not store_dir.exists()


def test_unknown_option_is_refused_with_every_other_problem(synthetic_root, store_dir):
    result = _launch(synthetic_root, "--foo", "1", "--epochs", "abc")
    _refused(result, store_dir, "unknown parameter 'foo'; did you mean 'fold'?",
             "epochs='abc': expected an integer")


def test_non_integer_epochs_is_refused(synthetic_root, store_dir):
    result = _launch(synthetic_root, "--epochs", "abc")
    _refused(result, store_dir, "epochs='abc': expected an integer, e.g. 12")


def test_n_heads_not_dividing_d_model_is_refused_with_values_that_fit(synthetic_root, store_dir):
    result = _launch(synthetic_root, "--d_model", "100", "--n_heads", "8")
    _refused(result, store_dir,
             "d_model=100 n_heads=8: n_heads must divide d_model (e.g. n_heads 10, or d_model 104)")


def test_a_constraint_weight_with_its_head_off_is_refused_naming_what_to_change(synthetic_root, store_dir):
    result = _launch(synthetic_root, "--use_mastery_head", "false")
    _refused(result, store_dir,
             "mastery_performance_loss_weight=0.8 needs use_mastery_head true but use_mastery_head is false: "
             "set mastery_performance_loss_weight 0 or use_mastery_head true",
             "monotonicity_loss_weight=0.1")  # every problem at once, not the first only


def test_a_fold_the_data_set_lacks_is_refused_listing_its_folds(synthetic_root, store_dir):
    result = _launch(synthetic_root, "--fold", "9")
    _refused(result, store_dir, "fold=9: synthetic has folds [0, 1, 2, 3, 4]")


def test_an_unknown_dataset_is_refused_listing_the_known_ones(synthetic_root, store_dir, user_registry):
    result = _launch(synthetic_root, "--dataset", "nope")
    _refused(result, store_dir,
             "dataset='nope': unknown; known datasets: assist2015, synthetic, synthetic_many (built-in, "
             f"configs/data_config.json); none in the user registry {user_registry}; see gakt-data list")


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_cuda_device_this_machine_lacks_is_refused_before_any_run(synthetic_root, store_dir, device):
    import torch

    if torch.cuda.is_available() and device == "cuda":
        pytest.skip("this machine has a CUDA device")
    result = _launch(synthetic_root, "--device", device)
    _refused(result, store_dir, f"device='{device}': this machine has")
    assert "--device cpu" in result.output or "pick one of them" in result.output


def test_an_unknown_profile_is_refused_listing_the_known_ones(synthetic_root, store_dir):
    result = invoke("launch", "--short_title", "bad", "--profile", "nope", "--data_root", str(synthetic_root))
    _refused(result, store_dir, "unknown profile 'nope'; known profiles:", "tiny")


@pytest.mark.parametrize("after", [[], ["--epochs", "1"]], ids=["last", "before-another-option"])
def test_a_bare_bool_flag_is_refused_asking_for_true_or_false(synthetic_root, store_dir, after):
    result = _launch(synthetic_root, "--use_amp", *after)
    _refused(result, store_dir, "Invalid value for '--use_amp': needs a value: --use_amp true or --use_amp false")


# --- data files ---------------------------------------------------------------------------------------------------


def test_a_missing_data_folder_is_refused_with_the_command_that_makes_it(tmp_path, store_dir):
    result = _launch(tmp_path / "nodata")
    _refused(result, store_dir, f"data set folder {tmp_path / 'nodata' / 'synthetic'}",
             "does not exist; generate it with `gakt-data synth --out")


def _corrupt(path: Path, row: int, change) -> None:
    """Rewrite one data row (0-based; file line row + 2) of a pyKT CSV through `change(record) -> record`."""
    with open(path, newline="") as handle:
        records = list(csv.DictReader(handle))
    records[row] = change(dict(records[row]))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    path.write_text(out.getvalue())


def _set_first(column: str, value: str):
    def change(record):
        values = record[column].split(",")
        values[0] = value
        record[column] = ",".join(values)
        return record

    return change


def _drop_last_concept(record):
    record["concepts"] = ",".join(record["concepts"].split(",")[:-1])
    return record


def _rename_column(path: Path, old: str, new: str) -> None:
    lines = path.read_text().split("\n", 1)
    path.write_text(lines[0].replace(old, new) + "\n" + lines[1])


BAD_FILES = {
    "unequal-lengths": ("train_valid_sequences.csv", lambda p: _corrupt(p, 3, _drop_last_concept),
                        "train_valid_sequences.csv line 5: concepts has 199 values, responses 200, selectmasks 200; "
                        "each must have exactly 200"),
    "response-2": ("train_valid_sequences.csv", lambda p: _corrupt(p, 3, _set_first("responses", "2")),
                   "train_valid_sequences.csv line 5: response 2 at real step 0; allowed 0 or 1"),
    "concept-id-ge-num_c": ("train_valid_sequences.csv", lambda p: _corrupt(p, 3, _set_first("concepts", "20")),
                            "train_valid_sequences.csv line 5: concept id 20 at step 0; allowed -1 (padding) or "
                            "0..19 (num_c = 20 of dataset 'synthetic')"),
    "wrong-header": ("test_sequences.csv", lambda p: _rename_column(p, "responses", "answers"),
                     "test_sequences.csv line 1: missing columns ['responses']"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_malformed_data_file_is_refused_naming_file_line_and_problem(synthetic_root, tmp_path, store_dir, case):
    name, corrupt, message = BAD_FILES[case]
    root = tmp_path / "data"
    shutil.copytree(synthetic_root / "synthetic", root / "synthetic")
    corrupt(root / "synthetic" / name)
    result = _launch(root)
    _refused(result, store_dir, message, str(root / "synthetic" / name))  # the full path, so the user can open it


# --- data sets: the registry and the importers ---------------------------------------------------------------------


def test_listing_an_unknown_data_set_is_refused_listing_the_known_ones(user_registry):
    result = invoke("data", "list", "nope")
    assert result.exit_code == 2
    assert ("error: data set 'nope' is unknown; known data sets: assist2015, synthetic, synthetic_many (built-in, "
            f"configs/data_config.json); none in the user registry {user_registry}; see gakt-data list") \
        in result.output


def test_a_pykt_config_without_the_named_set_is_refused(tmp_path, user_registry):
    config = tmp_path / "data_config.json"
    config.write_text(json.dumps({"assist2015": {"dpath": "../data/assist2015"}, "poj": {"dpath": "../data/poj"}}))
    result = invoke("data", "register", "--pykt-config", str(config), "--name", "assist2009")
    assert result.exit_code == 2
    assert f"error: pyKT config {config} has no data set 'assist2009'; it has: assist2015, poj" in result.output
    assert not user_registry.exists()


def _record(uid, concepts, responses, questions="NA"):
    return f"{uid},{responses.count(',') + 1}\n{questions}\n{concepts}\n{responses}\nNA\nNA\n"


@pytest.mark.parametrize("text, message", [
    (_record("a", "1,2,1", "1,0,1") + _record("b", "2,2", "0,1")[:-3] + _record("c", "1,1,1", "1,1,1"),
     "data.txt line 12: the usetimes line is present here but NA in the first record, found 'c,3'"),
    (_record("a", "1,2,1", "1,0,1", questions="q1,q2,q1") * 3,
     "data.txt line 2: the records hold question ids (question-level data, e.g. pyKT's assist2009 or "
     "algebra2005); gainakt3exp imports concept-level data only"),
    (_record("a", "1_3,2,1", "1,0,1") * 3, "data.txt line 3: concept ids joined by '_' (several concepts per "
                                            "response: pyKT's multi-concept question-level data)"),
], ids=["5-line-record", "question-level", "multi-concept"])
def test_a_data_txt_pykt_cannot_split_at_concept_level_is_refused_naming_the_line(tmp_path, user_registry, text,
                                                                                  message):
    (tmp_path / "data.txt").write_text(text)
    result = invoke("data", "import-pykt", "--src", str(tmp_path / "data.txt"), "--out", str(tmp_path / "out"),
                    "--name", "mine")
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists() and not user_registry.exists()


def test_an_import_under_a_built_in_name_is_refused_before_anything_is_written(tmp_path, user_registry):
    for split in ("train", "valid", "test"):
        (tmp_path / f"toy_{split}1.csv").write_text("3\n1,2,1\n1,0,1\n")
    result = invoke("data", "import-3line", "--src", str(tmp_path), "--prefix", "toy", "--fold", "1", "--out",
                    str(tmp_path / "out"), "--maxlen", "200", "--min_seq_len", "3", "--register", "assist2015")
    assert result.exit_code == 2
    assert "error: data set 'assist2015' is a built-in data set" in result.output
    assert not (tmp_path / "out").exists() and not user_registry.exists()


# --- run ids and titles -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["eval", "repro", "compare"])
def test_an_unknown_run_id_is_refused(in_empty_store, command):
    result = invoke(command, HEX_NOBODY)
    assert result.exit_code == 2
    assert f"error: run '{HEX_NOBODY}' does not exist in {in_empty_store}; list runs with gakt-runs" in result.output


def test_a_malformed_run_id_is_refused_saying_what_an_id_looks_like(in_empty_store):
    result = invoke("eval", "abc")
    assert result.exit_code == 2
    assert ("'abc' is neither a run id (32 hex characters) nor a 6-digit experiment id; list runs with gakt-runs"
            in result.output)


def test_an_experiment_id_nobody_has_is_refused(in_empty_store):
    result = invoke("repro", "123456")
    assert result.exit_code == 2
    assert f"no run has experiment id 123456 in {in_empty_store}; list runs with gakt-runs" in result.output


@pytest.mark.parametrize("command", ["eval", "repro", "compare"])
def test_a_run_id_holding_a_path_is_refused(in_empty_store, command):
    result = invoke(command, f"../{HEX_NOBODY}")
    assert result.exit_code == 2
    assert f"'../{HEX_NOBODY}' is neither a run id (32 hex characters)" in result.output


def test_a_short_title_with_a_slash_is_refused(synthetic_root, store_dir):
    result = invoke("launch", "--short_title", "../evil/x", "--profile", "tiny", "--data_root", str(synthetic_root))
    _refused(result, store_dir, "short_title '../evil/x': use 1-64 letters, digits, '_', '-' or '.'")


# --- tracking server URIs -----------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_server_fails_fast_naming_the_uri(synthetic_root, monkeypatch):
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    result = _launch(synthetic_root)
    assert result.exit_code == 1
    assert f"tracking server {uri} cannot be reached" in result.output
    assert "start it or fix MLFLOW_TRACKING_URI" in result.output
    assert time.monotonic() - start < 15


def test_a_tracking_uri_of_an_unknown_scheme_is_refused_with_the_forms_that_work(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://x")
    result = invoke("runs")
    assert result.exit_code == 2
    assert "MLFLOW_TRACKING_URI='ftp://x': scheme 'ftp' is not a tracking store; use http(s)://host:port" \
        in result.output
    assert "Traceback" not in result.output


# --- a trained run, then its artifacts tampered with (slow: one tiny training run for the module) -----------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny launched run (1 epoch) in its own store: {uri, run_id, exp_id, artifacts (folder)}."""
    from gainakt3exp.data.synthetic import generate_synthetic

    tmp = tmp_path_factory.mktemp("bad-inputs-run")
    generate_synthetic(tmp / "synthetic", students=120, skills=20, seed=3, maxlen=200)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "GAKT_CACHE_DIR": str(tmp / "cache"),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(BIN / "gakt-launch"), "--short_title", "tamper", "--profile", "tiny", "--epochs", "1",
                           "--data_root", str(tmp)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = _all_runs(uri)
    return {"uri": uri, "run_id": run.info.run_id, "exp_id": run.data.tags["gakt.experiment_id"],
            "artifacts": Path(run.info.artifact_uri.replace("file://", ""))}


@pytest.fixture
def in_trained(trained, monkeypatch):
    """The trained run's store; every artifact is restored afterwards, and no run may have been added."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    saved = {p.name: p.read_bytes() for p in trained["artifacts"].iterdir()}
    yield trained
    for path in trained["artifacts"].iterdir():
        if path.name not in saved:
            path.unlink()
    for name, data in saved.items():
        (trained["artifacts"] / name).write_bytes(data)
    assert len(_all_runs(trained["uri"])) == 1  # no reproduction or evaluation run was created


def _assert_not_evaluated(trained) -> None:
    from mlflow.tracking import MlflowClient

    run = MlflowClient(trained["uri"]).get_run(trained["run_id"])
    assert not [k for k in run.data.metrics if k.startswith("eval/")]
    assert "gakt.evaluated" not in run.data.tags
    assert not (trained["artifacts"] / "eval_results.json").exists()


@pytest.mark.slow
def test_compare_without_a_reproduction_says_how_to_make_one(in_trained):
    result = invoke("compare", in_trained["exp_id"])
    assert result.exit_code == 2
    assert (f"run {in_trained['run_id']} (experiment {in_trained['exp_id']}) has no reproduction; "
            f"run gakt-repro {in_trained['exp_id']}") in result.output


def _edit_params_only(config):
    config["params"]["learning_rate"] = 0.01


def _edit_params_and_overrides(config):
    config["params"]["learning_rate"] = config["overrides"]["learning_rate"] = 0.01


@pytest.mark.slow
@pytest.mark.parametrize("edit, message", [
    (_edit_params_only, "'learning_rate': defaults+overrides give 0.003 but params records 0.01"),
    (_edit_params_and_overrides, "its logged params disagree with its config.json; refusing to reproduce:\n"
                                 "  - 'learning_rate': logged '0.003', config.json '0.01'"),
], ids=["inconsistent-file", "consistent-file-disagreeing-with-logged-params"])
def test_repro_of_an_edited_config_is_refused_naming_the_key(in_trained, edit, message):
    path = in_trained["artifacts"] / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    result = invoke("repro", in_trained["exp_id"])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.slow
def test_repro_without_config_json_is_refused(in_trained):
    (in_trained["artifacts"] / "config.json").unlink()
    result = invoke("repro", in_trained["run_id"])
    assert result.exit_code == 2
    assert f"run {in_trained['run_id']} has no artifact 'config.json'" in result.output


@pytest.mark.slow
def test_eval_of_a_garbage_checkpoint_is_refused(in_trained):
    (in_trained["artifacts"] / "model_best.pth").write_bytes(b"this is not a checkpoint\n" * 10)
    result = invoke("eval", in_trained["exp_id"])
    assert result.exit_code == 2
    assert f"model_best.pth of run {in_trained['run_id']} is not a weights-only checkpoint" in result.output
    assert "re-train the run (gakt-repro) or restore the file" in result.output
    _assert_not_evaluated(in_trained)


class _Payload:
    """Pickles as a call to os.system: what a malicious model_best.pth would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_eval_of_a_checkpoint_carrying_code_refuses_and_runs_nothing(in_trained, tmp_path):
    import torch

    marker = tmp_path / "code-ran"
    torch.save({"state_dict": _Payload(marker), "params": {}, "num_c": 20, "epoch": 1, "val_auc": 0.5},
               in_trained["artifacts"] / "model_best.pth")
    result = invoke("eval", in_trained["run_id"])
    assert result.exit_code == 2
    assert "is not a weights-only checkpoint (Trying to load unsupported GLOBAL posix.system" in result.output
    assert "nothing in it was executed" in result.output
    assert not marker.exists()
    _assert_not_evaluated(in_trained)
