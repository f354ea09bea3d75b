"""Bad input gets one clear message (the problem and the fix), the documented exit status, and writes nothing.

Exit 2 = bad input (parameters, data files, run ids, tampered artifacts), 1 = a failure (server unreachable).
The commands run in-process through click's CliRunner on gainakt3exp.cli.main (what the console scripts call).
Fast tests need no training; the few that need a trained run share one tiny run and are marked slow.
"""
import csv
import io
import json
import shutil
import socket
import time
from pathlib import Path

import pytest
from cli_utils import BIN, HEX_NOBODY, invoke  # noqa: F401 - tests/ is on the path
from cli_utils import all_runs as _all_runs


@pytest.fixture(autouse=True)
def _reset_mlflow_uri(reset_mlflow_uri):
    yield


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
             "dataset='nope': unknown; known datasets: assist2015, synthetic, synthetic_many, synthetic_questions (built-in, "
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
    assert ("error: data set 'nope' is unknown; known data sets: assist2015, synthetic, synthetic_many, synthetic_questions (built-in, "
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
    (_record("a", "1,2,1", "1,0,1", questions="q1,q2") * 3,
     "data.txt line 2: questions has 2 values but the header (line 1) says 3"),
    (_record("a", "1_3,2,1", "1,0,1") * 3, "data.txt line 3: concept ids joined by '_' (several concepts per "
                                            "response) but the records have no question ids"),
    (_record("a", "1__3,2,1", "1,0,1", questions="q1,q2,q1") * 3, "data.txt line 3: concept field '1__3' has an "
                                                                   "empty id"),
], ids=["5-line-record", "question-count", "multi-concept-without-questions", "empty-concept-id"])
def test_a_data_txt_pykt_cannot_split_is_refused_naming_the_line(tmp_path, user_registry, text, message):
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


@pytest.mark.parametrize("command", ["register", "predict"])
def test_an_unknown_run_id_is_refused_by_the_model_commands(in_empty_store, command, tmp_path):
    (tmp_path / "h.csv").write_text("student,concept,response\ns1,3,1\n")
    args = (["--name", "m"] if command == "register" else
            ["--input", str(tmp_path / "h.csv"), "--out", str(tmp_path / "o.csv")])
    result = invoke(command, HEX_NOBODY, *args)
    assert result.exit_code == 2, result.output
    assert f"error: run '{HEX_NOBODY}' does not exist in {in_empty_store}; list runs with gakt-runs" in result.output
    assert not (tmp_path / "o.csv").exists()


def test_predict_refuses_an_unknown_registered_model_and_a_missing_history_file(in_empty_store, tmp_path):
    (tmp_path / "h.csv").write_text("student,concept,response\ns1,3,1\n")
    result = invoke("predict", "models:/nobody@champion", "--input", str(tmp_path / "h.csv"), "--out",
                    str(tmp_path / "o.csv"))
    assert result.exit_code == 2, result.output
    assert "error: cannot load model models:/nobody@champion" in result.output and "gakt-runs" in result.output
    result = invoke("predict", "models:/nobody@champion", "--input", str(tmp_path / "none.csv"), "--out",
                    str(tmp_path / "o.csv"))
    assert result.exit_code == 2 and f"error: history file {tmp_path / 'none.csv'} does not exist" in result.output
    assert not (tmp_path / "o.csv").exists()


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
