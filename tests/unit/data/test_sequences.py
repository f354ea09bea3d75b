"""Data layer: pyKT reader, validation messages, cache, batches, shuffling, locating a registered data set."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gainakt3exp.data import sequences as data
from gainakt3exp.data.registry import lookup
from gainakt3exp.errors import ConfigError, DataError

HEADER = "fold,uid,concepts,responses,selectmasks"


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("GAKT_CACHE_DIR", str(tmp_path / "cache"))


def _row(fold, uid, concepts, responses, selectmasks):
    return f'{fold},{uid},"{",".join(map(str, concepts))}","{",".join(map(str, responses))}",' \
           f'"{",".join(map(str, selectmasks))}"'


def _write(path, rows, header=HEADER):
    path.write_text("\n".join([header] + rows) + "\n")
    return path


@pytest.fixture
def two_rows(tmp_path):
    """Width 5: row 0 has 4 real steps, row 1 has 2."""
    return _write(tmp_path / "seqs.csv", [
        _row(0, 10, [3, 1, 1, 2, -1], [1, 0, 1, 1, -1], [1, 1, 1, 1, -1]),
        _row(1, 11, [4, 0, -1, -1, -1], [0, 1, -1, -1, -1], [1, 1, -1, -1, -1]),
    ])


def test_read_sequences_parses_values_and_masks(two_rows):
    s = data.read_sequences(two_rows, num_c=5, width=5)
    assert len(s) == 2
    assert s.concepts.dtype == np.int64 and s.responses.dtype == np.int64
    np.testing.assert_array_equal(s.concepts[1], [4, 0, -1, -1, -1])
    np.testing.assert_array_equal(s.responses[0], [1, 0, 1, 1, -1])
    np.testing.assert_array_equal(s.selectmasks[1], [True, True, False, False, False])
    np.testing.assert_array_equal(s.uids, [10, 11])
    np.testing.assert_array_equal(s.lengths, [4, 2])
    assert s.truth is None and s.source == str(two_rows) and len(s.file_hash) == 64


def test_read_sequences_keeps_only_requested_folds(two_rows):
    s = data.read_sequences(two_rows, num_c=5, width=5, folds=[1])
    np.testing.assert_array_equal(s.uids, [11])


def test_extra_columns_such_as_cidxs_are_accepted(tmp_path):
    path = _write(tmp_path / "t.csv", [_row(-1, 1, [0, 1, -1], [1, 1, -1], [1, 1, -1]) + ',"0,1,-1"'],
                  header=HEADER + ",cidxs")
    np.testing.assert_array_equal(data.read_sequences(path, 2, 3).concepts, [[0, 1, -1]])


def test_make_batch_shifts_targets_by_one_step(two_rows):
    s = data.read_sequences(two_rows, num_c=5, width=5)
    b = data.make_batch(s, np.array([0, 1]), "cpu")
    assert b.c.shape == (2, 3)  # trimmed to max length 4 - 1
    np.testing.assert_array_equal(b.c, [[3, 1, 1], [4, 0, 0]])
    np.testing.assert_array_equal(b.q, [[1, 1, 2], [0, 0, 0]])
    np.testing.assert_array_equal(b.r, [[1, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(b.y, [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(b.mask, [[True, True, True], [True, False, False]])
    np.testing.assert_array_equal(b.score, b.mask)
    assert b.y.dtype == torch.float32 and b.c.dtype == torch.long and b.mask.dtype == torch.bool
    np.testing.assert_array_equal(b.rows, [0, 1])


def test_make_batch_trims_to_the_longest_selected_row(two_rows):
    s = data.read_sequences(two_rows, num_c=5, width=5)
    b = data.make_batch(s, torch.tensor([1]), "cpu")
    assert b.c.shape == (1, 1)
    np.testing.assert_array_equal(b.mask, [[True]])


def test_window_score_counts_only_positions_whose_next_selectmask_is_one(tmp_path):
    path = _write(tmp_path / "w.csv", [_row(-1, 1, [0, 1, 1, 0], [1, 0, 1, 1], [-1, -1, -1, 1])])
    b = data.make_batch(data.read_sequences(path, 2, 4), [0], "cpu")
    np.testing.assert_array_equal(b.mask, [[True, True, True]])
    np.testing.assert_array_equal(b.score, [[False, False, True]])


def test_num_interactions_counts_targets(two_rows):
    assert data.num_interactions(data.read_sequences(two_rows, 5, 5)) == 3 + 1


GOOD = _row(0, 1, [0, 1, -1], [1, 0, -1], [1, 1, -1])


@pytest.mark.parametrize("rows, header, line, reason", [
    ([GOOD], "fold,uid,concepts,responses", 1, "missing columns ['selectmasks']"),
    ([GOOD, _row(0, 2, [0, 1], [1, 0, -1], [1, 1, -1])], HEADER, 3, "concepts has 2 values, responses 3"),
    ([_row(0, 2, [0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 1, 1])], HEADER, 2, "each must have exactly 3"),
    ([GOOD, GOOD, _row(0, 2, [0, 1, -1], [1, 2, -1], [1, 1, -1])], HEADER, 4, "response 2 at real step 1"),
    ([_row(0, 2, [0, 1, -1], [1, 0, 0], [1, 1, -1])], HEADER, 2, "response 0 at padding step 2"),
    ([_row(0, 2, [0, 7, -1], [1, 0, -1], [1, 1, -1])], HEADER, 2, "concept id 7 at step 1; allowed -1 (padding) or 0..4"),
    ([_row(0, 2, [0, -3, -1], [1, 0, -1], [1, 1, -1])], HEADER, 2, "concept id -3"),
    ([GOOD, '0,2,"0,x,-1","1,0,-1","1,1,-1"'], HEADER, 3, "column concepts holds a non-numeric"),
    ([_row(0, 2, [0, -1, 1], [1, -1, 0], [1, -1, 1])], HEADER, 2, "padding must be trailing"),
    ([_row(0, 2, [0, 1, -1], [1, 0, -1], [1, 1, 1])], HEADER, 2, "selectmask 1 at padding step 2"),
    (["abc," + GOOD[2:]], HEADER, 2, "column fold holds a non-numeric"),
])
def test_malformed_file_names_file_line_and_reason(tmp_path, rows, header, line, reason):
    path = _write(tmp_path / "bad_file.csv", rows, header=header)
    with pytest.raises(DataError) as e:
        data.read_sequences(path, num_c=5, width=3, dataset="toy")
    msg = str(e.value)
    assert "bad_file.csv" in msg and f"line {line}:" in msg and reason in msg, msg


QHEADER = "fold,uid,questions,concepts,responses,selectmasks,is_repeat"


def _qrow(questions, concepts, responses, is_repeat, fold=0, uid=1):
    lists = (questions, concepts, responses, [1 if c != -1 else -1 for c in concepts], is_repeat)
    return f"{fold},{uid}," + ",".join('"' + ",".join(map(str, x)) + '"' for x in lists)


QGOOD = _qrow([4, 4, 2], [0, 1, 1], [1, 1, 0], [0, 1, 0])


def test_a_question_level_file_gives_questions_and_repeats(tmp_path):
    path = _write(tmp_path / "q.csv", [QGOOD, _qrow([3, 0, -1], [2, 2, -1], [0, 1, -1], [0, 0, -1])],
                  header=QHEADER)
    seqs = data.read_sequences(path, num_c=5, width=3, num_q=5, dataset="toy")
    assert seqs.questions.tolist() == [[4, 4, 2], [3, 0, -1]]
    assert seqs.is_repeat.tolist() == [[False, True, False], [False, False, False]]
    concept_level = data.read_sequences(path, num_c=5, width=3, dataset="toy")  # the same file, concepts only
    assert concept_level.questions is None and concept_level.is_repeat is None
    assert concept_level.concepts.tolist() == seqs.concepts.tolist()


@pytest.mark.parametrize("rows, header, line, reason", [
    ([GOOD], HEADER, 1, "missing columns ['questions', 'is_repeat']; expected ['fold', 'uid', 'concepts', "
                        "'responses', 'selectmasks', 'questions', 'is_repeat']"),
    ([QGOOD, _qrow([4, 5, 2], [0, 1, 1], [1, 1, 0], [0, 0, 0])], QHEADER, 3,
     "question id 5 at step 1; allowed 0..4 (num_q = 5 of dataset 'toy')"),
    ([_qrow([4, 3, 2], [0, 1, 1], [1, 1, 0], [0, 1, 0])], QHEADER, 2,
     "is_repeat 1 at step 1 but its question or response differs from step 0's"),
    ([_qrow([4, 4, 2], [0, 1, 1], [1, 0, 0], [0, 1, 0])], QHEADER, 2,
     "is_repeat 1 at step 1 but its question or response differs from step 0's"),
    ([_qrow([4, 4, 7], [0, 1, -1], [1, 1, -1], [0, 1, -1])], QHEADER, 2, "question id 7 at padding step 2"),
    ([QGOOD.replace('"0,1,1"', '"0,3_x,1"')], QHEADER, 2, "column concepts holds a non-numeric"),
])
def test_a_malformed_question_level_file_names_file_line_and_reason(tmp_path, rows, header, line, reason):
    path = _write(tmp_path / "bad_file.csv", rows, header=header)
    with pytest.raises(DataError) as e:
        data.read_sequences(path, num_c=5, width=3, num_q=5, dataset="toy")
    msg = str(e.value)
    assert "bad_file.csv" in msg and f"line {line}:" in msg and reason in msg, msg


def test_concept_out_of_range_message_names_num_c_and_dataset(tmp_path):
    path = _write(tmp_path / "bad_file.csv", [_row(0, 2, [0, 5, -1], [1, 0, -1], [1, 1, -1])])
    with pytest.raises(DataError, match=r"num_c = 5 of dataset 'toy'"):
        data.read_sequences(path, num_c=5, width=3, dataset="toy")


@pytest.mark.parametrize("text, reason", [("", "line 1: the file is empty"), (HEADER + "\n", "has a header but no rows")])
def test_empty_file_is_refused(tmp_path, text, reason):
    path = tmp_path / "empty.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=reason) as e:
        data.read_sequences(path, 5, 3)
    assert "empty.csv" in str(e.value)


def test_second_load_hits_the_cache_with_identical_arrays(two_rows, tmp_path, monkeypatch):
    first = data.read_sequences(two_rows, 5, 5)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1

    def _fail(*args, **kwargs):
        raise AssertionError("the file was parsed again instead of read from the cache")

    monkeypatch.setattr(data, "_parse_sequence_file", _fail)
    second = data.read_sequences(two_rows, 5, 5)
    for name in ("concepts", "responses", "selectmasks", "uids", "lengths"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
        assert getattr(first, name).dtype == getattr(second, name).dtype
    assert first.file_hash == second.file_hash


def test_corrupt_cache_is_ignored_and_rewritten(two_rows, tmp_path):
    first = data.read_sequences(two_rows, 5, 5)
    (entry,) = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(b"not a zip file")
    second = data.read_sequences(two_rows, 5, 5)
    np.testing.assert_array_equal(first.concepts, second.concepts)
    with np.load(entry) as z:
        assert "concepts" in z.files


def test_changed_file_is_parsed_again(two_rows):
    data.read_sequences(two_rows, 5, 5)
    two_rows.write_text(two_rows.read_text().replace('"3,1,1,2,-1"', '"3,1,1,3,-1"'))
    assert data.read_sequences(two_rows, 5, 5).concepts[0, 3] == 3


def test_cache_is_never_written_next_to_the_data(two_rows):
    data.read_sequences(two_rows, 5, 5)
    assert sorted(p.name for p in two_rows.parent.iterdir()) == ["cache", "seqs.csv"]


@pytest.fixture
def many_rows(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, n in enumerate(rng.integers(1, 11, size=37)):
        c = list(rng.integers(0, 3, size=n)) + [-1] * (10 - n)
        r = list(rng.integers(0, 2, size=n)) + [-1] * (10 - n)
        rows.append(_row(i % 5, i, c, r, [1] * n + [-1] * (10 - n)))
    return data.read_sequences(_write(tmp_path / "many.csv", rows), 3, 10)


def _epoch(seqs, seed, batch_size=4):
    g = torch.Generator().manual_seed(seed)
    return [b.rows.tolist() for b in data.iterate_batches(seqs, batch_size, shuffle=True, generator=g, device="cpu")]


def test_shuffle_is_deterministic_for_a_generator_seed(many_rows):
    assert _epoch(many_rows, 3) == _epoch(many_rows, 3)
    assert _epoch(many_rows, 3) != _epoch(many_rows, 4)


def test_every_row_appears_once_per_epoch(many_rows):
    rows = [r for batch in _epoch(many_rows, 1) for r in batch]
    assert sorted(rows) == list(range(len(many_rows)))


def test_shuffled_batches_hold_windows_of_similar_length(many_rows):
    spans = [np.ptp(many_rows.lengths[b]) for b in _epoch(many_rows, 2)]
    assert max(spans) <= 3  # 37 rows of lengths 1..10 sorted into batches of 4


def test_unshuffled_batches_follow_file_order(many_rows):
    batches = list(data.iterate_batches(many_rows, 8, shuffle=False, generator=None, device="cpu"))
    assert [r for b in batches for r in b.rows.tolist()] == list(range(37))
    assert [len(b.rows) for b in batches] == [8, 8, 8, 8, 5]


# ------------------------------------------------------------------ registry and splits (on a tiny data set)

@pytest.fixture
def tiny_dataset(tmp_path):
    from gainakt3exp.data.synthetic import generate_synthetic

    cfg = lookup("synthetic").entry
    generate_synthetic(tmp_path / "root" / "synthetic", students=40, skills=cfg["num_c"], seed=1,
                       maxlen=cfg["maxlen"])
    return data.dataset_spec("synthetic", tmp_path / "root")


def test_train_and_valid_split_the_folds(tiny_dataset):
    every = data.read_sequences(tiny_dataset.root / tiny_dataset.train_valid_file, 20, 200)
    train = data.load_split(tiny_dataset, "train", 2, 200)
    valid = data.load_split(tiny_dataset, "valid", 2, 200)
    assert len(train) + len(valid) == len(every)
    fold2 = data.read_sequences(tiny_dataset.root / tiny_dataset.train_valid_file, 20, 200, folds=[2])
    np.testing.assert_array_equal(valid.uids, fold2.uids)
    assert not set(valid.uids) & set(train.uids)


def test_truth_is_attached_and_aligned_with_the_labels(tiny_dataset):
    valid = data.load_split(tiny_dataset, "valid", 0, 200)
    assert valid.truth is not None
    np.testing.assert_array_equal(np.isnan(valid.truth), valid.concepts == -1)
    b = data.make_batch(valid, np.arange(len(valid)), "cpu")
    np.testing.assert_allclose(b.truth, valid.truth[:, 1 : b.c.shape[1] + 1])
    assert data.load_split(tiny_dataset, "test_window", 0, 200).truth is not None


def test_seq_len_must_match_the_file_width(tiny_dataset):
    with pytest.raises(ConfigError, match="seq_len 100 does not match the width 200 of .*; set seq_len 200"):
        data.load_split(tiny_dataset, "train", 0, 100)


@pytest.mark.parametrize("split, fold, reason", [("train", 7, "fold 7 is not a fold"), ("dev", 0, "split 'dev'")])
def test_bad_split_or_fold_is_a_config_error(tiny_dataset, split, fold, reason):
    with pytest.raises(ConfigError, match=reason):
        data.load_split(tiny_dataset, split, fold, 200)


def test_unknown_dataset_lists_known_names(tmp_path):
    with pytest.raises(ConfigError, match="known data sets: assist2015, synthetic, synthetic_many"):
        data.dataset_spec("assist2099", tmp_path)


def test_missing_synthetic_folder_says_how_to_generate_it(tmp_path):
    with pytest.raises(DataError, match=r"gakt-data synth --out .*synthetic"):
        data.dataset_spec("synthetic", tmp_path)


def test_missing_real_data_says_how_to_set_data_root(tmp_path):
    (tmp_path / "assist2015").mkdir()
    with pytest.raises(DataError, match=r"train_valid_sequences.csv.*set data_root to the folder that holds assist2015/"):
        data.dataset_spec("assist2015", tmp_path)


def test_relative_data_root_is_resolved_against_the_cwd(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert data.dataset_spec("synthetic", "root").root == tiny_dataset.root


def test_file_hashes_cover_the_existing_files(tiny_dataset):
    hashes = data.file_hashes(tiny_dataset)
    assert {"train_valid_sequences.csv", "test_sequences.csv", "test_window_sequences.csv",
            "true_mastery_sequences.csv"} <= hashes.keys()
    assert hashes["test_sequences.csv"] == data.load_split(tiny_dataset, "test", 0, 200).file_hash


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("\n".join([HEADER, GOOD, "", _row(0, 2, [0, 9, -1], [1, 0, -1], [1, 1, -1])]) + "\n\n")
    with pytest.raises(DataError, match="gaps.csv line 4: concept id 9"):
        data.read_sequences(path, 5, 3)
