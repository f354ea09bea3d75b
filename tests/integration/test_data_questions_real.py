"""Real question-level data: ../shared/data/assist2009 (ASSISTments 2009 as distributed with AKT's code, split by
pyKT's own split_datasets.py; read-only, never copied into the repo)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from cli_utils import invoke

from gainakt3exp.data import sequences as data
from gainakt3exp.data.pykt_split import import_pykt
from gainakt3exp.paths import PROJECT_ROOT

A09 = PROJECT_ROOT.parent / "shared" / "data" / "assist2009"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (A09 / "data.txt").is_file(), reason=f"real data folder {A09} is missing "
                                 "(it ships beside the project as ../shared/data/assist2009)")]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("GAKT_CACHE_DIR", str(tmp_path / "cache"))


def test_import_pykt_rebuilds_every_file_pykts_split_wrote_byte_for_byte(tmp_path):
    """SHA256SUMS pins what pyKT's split wrote, the two question test files (not shipped, 259 MB) included."""
    summary = import_pykt(A09 / "data.txt", tmp_path / "a09", name="assist2009")
    sums = dict(line.split()[::-1] for line in (A09 / "SHA256SUMS").read_text().splitlines())
    assert len(sums) == 8
    for name, digest in sums.items():
        assert hashlib.sha256((tmp_path / "a09" / name).read_bytes()).hexdigest() == digest, name
    assert (summary["num_q"], summary["num_c"], summary["max_concepts"]) == (16877, 110, 4)
    assert summary["dropped"] == {"students": 320, "interactions": 498} and summary["expanded_steps"] == 325052
    assert summary["written"]["test_question_window_sequences.csv"]["rows"] == 31170


def test_the_shared_folder_registers_as_pykt_wrote_it_and_reads_its_questions(tmp_path, user_registry):
    result = invoke("data", "register", "--pykt-config", str(A09 / "data_config.json"))
    assert result.exit_code == 0, result.output
    entry = json.loads(user_registry.read_text())["assist2009"]
    assert entry["num_q"] == 16877 and entry["input_type"] == ["questions", "concepts"]
    listed = invoke("data", "list", "assist2009")
    assert listed.exit_code == 0 and "assist2009" in listed.output, listed.output
    spec = data.dataset_spec("assist2009", tmp_path)
    assert (spec.num_q, spec.num_c, spec.maxlen) == (16877, 110, 200)
    train, valid = data.load_split(spec, "train", 0, 200), data.load_split(spec, "valid", 0, 200)
    assert len(train) + len(valid) == 3688 and len(valid) == 735
    for seqs in (train, valid, data.load_split(spec, "test_window", 0, 200)):
        real = seqs.concepts != -1
        assert ((seqs.questions >= 0) == real).all() and seqs.questions.max() < 16877
        # a repeated step is another concept of the answer before it: same question, same response
        rep = seqs.is_repeat[:, 1:]
        assert (seqs.questions[:, 1:][rep] == seqs.questions[:, :-1][rep]).all()
        assert (seqs.responses[:, 1:][rep] == seqs.responses[:, :-1][rep]).all()
    assert int(train.is_repeat.sum() + valid.is_repeat.sum()) > 0.1 * int(train.lengths.sum() + valid.lengths.sum())
    assert np.array_equal(np.unique(train.is_repeat), [False, True])


def test_akts_four_line_files_import_with_every_row_and_answer(tmp_path):
    """AKT's fold-1 `_pid` files hold the 4,151 students of data.txt: 325,637 rows, 274,590 answers (README)."""
    from gainakt3exp.data.three_line import import_three_line

    summary = import_three_line(A09 / "akt", "assist2009_pid", 1, tmp_path / "akt", maxlen=200, min_seq_len=3,
                                name="akt09")
    source = summary["source"]
    assert sum(s["students"] for s in source.values()) == 4151
    assert sum(s["interactions"] for s in source.values()) == 325637
    assert sum(s["answers"] for s in source.values()) == 274590
    assert sum(d["students"] for d in summary["dropped"].values()) == 320  # fewer than 3 answers, as pyKT drops
    assert (summary["num_q"], summary["num_c"], summary["max_concepts"]) == (16877, 110, 4)
    written = summary["written"]
    kept_rows = 325637 - sum(d["short_student_interactions"] for d in summary["dropped"].values())
    test_rows = written["test_window_sequences.csv"]["interactions"]
    train_rows = written["train_valid_sequences.csv"]["interactions"] + summary["dropped"]["train"][
        "remainder_interactions"] + summary["dropped"]["valid"]["remainder_interactions"]
    assert train_rows + test_rows == kept_rows  # every kept row is written once (window test: every step)
