"""Real ASSISTments 2015 files in ../shared/data/assist2015 (read-only; never copied into the repo)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from gainakt3exp.cli import main
from gainakt3exp.data import layout
from gainakt3exp.data import sequences as data
from gainakt3exp.data.three_line import import_three_line
from gainakt3exp.paths import PROJECT_ROOT

SHARED = PROJECT_ROOT.parent / "shared" / "data"
ASSIST = SHARED / "assist2015"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not ASSIST.is_dir(), reason=f"real data folder {ASSIST} is missing "
                                 "(it ships beside the project as ../shared/data/assist2015)")]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("GAKT_CACHE_DIR", str(tmp_path / "cache"))


def test_assist2015_fold0_row_counts():
    spec = data.dataset_spec("assist2015", SHARED)
    assert spec.num_c == 100 and spec.maxlen == 200
    train, valid = data.load_split(spec, "train", 0, 200), data.load_split(spec, "valid", 0, 200)
    assert len(train) + len(valid) == 15426
    assert len(data.load_split(spec, "test", 0, 200)) == 3866
    fold0 = data.read_sequences(ASSIST / spec.train_valid_file, 100, 200, folds=[0])
    np.testing.assert_array_equal(valid.uids, fold0.uids)
    np.testing.assert_array_equal(valid.concepts, fold0.concepts)
    with open(ASSIST / spec.train_valid_file) as f:
        folds = np.array([int(row["fold"]) for row in csv.DictReader(f)])
    assert len(valid) == int((folds == 0).sum()) and len(train) == int((folds != 0).sum())


def test_assist2015_test_window_scores_one_position_per_later_window():
    spec = data.dataset_spec("assist2015", SHARED)
    win = data.load_split(spec, "test_window", 0, 200)
    assert len(win) == 6102
    test = data.load_split(spec, "test", 0, 200)
    assert int(win.selectmasks.sum()) == int(test.lengths.sum())  # no remainders of 1-2 steps are lost here
    first = win.selectmasks.sum(axis=1) > 1
    assert (win.selectmasks[~first].sum(axis=1) == 1).all() and win.selectmasks[~first][:, -1].all()


def _unwindowed(name):
    with open(ASSIST / name) as f:
        rows = list(csv.DictReader(f))
    lengths = np.array([r["concepts"].count(",") + 1 for r in rows])
    flat = {k: np.array(",".join(r[k] for r in rows).split(","), dtype=np.int64)
            for k in rows[0] if k not in ("fold", "uid")}
    return rows, lengths, flat


@pytest.mark.parametrize("source, target, sliding", [("test.csv", "test_sequences.csv", False),
                                                     ("test.csv", "test_window_sequences.csv", True),
                                                     ("train_valid.csv", "train_valid_sequences.csv", False)])
def test_windowing_reproduces_pykt_files_byte_for_byte(tmp_path, source, target, sliding):
    rows, lengths, flat = _unwindowed(source)
    student, start, length = (layout.sliding_windows(lengths, 200) if sliding
                              else layout.split_windows(lengths, 200, 3))
    offsets = np.cumsum(lengths) - lengths
    lists = [layout.gather_windows(flat[k], offsets, student, start, length, 200) for k in ("concepts", "responses")]
    lists.append(layout.window_selectmasks(start, length, 200, sliding))
    if "cidxs" in flat:
        lists.append(layout.gather_windows(flat["cidxs"], offsets, student, start, length, 200))
    header = list(data.REQUIRED_COLUMNS) + (["cidxs"] if "cidxs" in flat else [])
    fold = np.array([int(r["fold"]) for r in rows])
    uid = np.array([int(r["uid"]) for r in rows])
    layout.write_sequence_csv(tmp_path / target, header, fold[student], uid[student], lists)
    assert (tmp_path / target).read_bytes() == (ASSIST / target).read_bytes()


def test_importer_on_akt_fold1_accounts_for_every_student_and_interaction(tmp_path):
    summary = import_three_line(ASSIST / "akt", "assist2015", 1, tmp_path, maxlen=200, min_seq_len=3, name="akt1")
    assert summary["num_c"] == 100 and summary["ids"] == "skill ids 1..100 -> 0..99"  # derived, not given
    src, dropped, written = summary["source"], summary["dropped"], summary["written"]
    tv, test, window = (written[n] for n in ("train_valid_sequences.csv", "test_sequences.csv",
                                             "test_window_sequences.csv"))
    assert src["train"]["students"] == 11904 and src["valid"]["students"] == 3968
    assert src["train"]["students"] + src["valid"]["students"] == tv["students"] + \
        dropped["train"]["students"] + dropped["valid"]["students"]
    assert src["train"]["interactions"] + src["valid"]["interactions"] == tv["interactions"] + \
        dropped["train"]["interactions"] + dropped["valid"]["interactions"]
    assert src["test"]["students"] == test["students"] + dropped["test"]["students"] == window["students"] + \
        dropped["test"]["students"]
    assert src["test"]["interactions"] == test["interactions"] + dropped["test"]["interactions"]
    assert window["interactions"] == src["test"]["interactions"] - dropped["test"]["short_student_interactions"]
    # with nothing dropped (min_seq_len 1) the files hold exactly what was read
    nothing = import_three_line(ASSIST / "akt", "assist2015", 1, tmp_path / "all", num_c=100, maxlen=200,
                                min_seq_len=1, name="akt1")
    assert nothing["written"]["test_sequences.csv"]["interactions"] == nothing["source"]["test"]["interactions"]
    assert nothing["written"]["test_sequences.csv"]["students"] == nothing["source"]["test"]["students"]
    assert nothing["written"]["train_valid_sequences.csv"]["interactions"] == \
        nothing["source"]["train"]["interactions"] + nothing["source"]["valid"]["interactions"]
    back = data.read_sequences(tmp_path / "train_valid_sequences.csv", 100, 200)
    assert data.num_interactions(back) + len(back) == tv["interactions"]
    assert back.concepts.max() <= 99 and back.concepts[back.concepts != -1].min() == 0


def test_import_pykt_of_data_txt_reproduces_pyKTs_files_byte_for_byte(tmp_path, user_registry):
    result = CliRunner().invoke(main, ["data", "import-pykt", "--src", str(ASSIST / "data.txt"), "--out",
                                       str(tmp_path / "a15"), "--name", "a15"])
    assert result.exit_code == 0, result.output
    for name in ("train_valid_sequences.csv", "test_sequences.csv", "test_window_sequences.csv", "train_valid.csv",
                 "test.csv", "keyid2idx.json"):
        assert (tmp_path / "a15" / name).read_bytes() == (ASSIST / name).read_bytes(), name
    spec = data.dataset_spec("a15", "unused")
    assert (spec.num_c, spec.maxlen, spec.folds) == (100, 200, (0, 1, 2, 3, 4))
