"""Data layer: pyKT reader, validation messages, cache, batches, shuffling, registry, 3-line importer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gainakt3exp import data, layout
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
    from gainakt3exp.synthetic import generate_synthetic

    cfg = data.load_data_config()["synthetic"]
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
    with pytest.raises(ConfigError, match="known datasets: assist2015, synthetic, synthetic_many"):
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


# ------------------------------------------------------------------ 3-line importer

def _three_line(path, students):
    path.write_text("".join(f"{i},{uid}\n{','.join(map(str, s))}\n{','.join(map(str, r))}\n"
                            for i, (uid, s, r) in enumerate(students)))


@pytest.fixture
def akt_dir(tmp_path):
    src = tmp_path / "akt"
    src.mkdir()
    _three_line(src / "toy_train1.csv", [(100, [1, 2, 2, 3, 3, 3, 1], [0, 1, 1, 0, 1, 1, 1]),  # 7 -> 4 + 3
                                         (101, [2, 2], [1, 1]),  # too short: dropped
                                         (102, [3, 3, 3, 3, 3], [0, 0, 1, 1, 1])])  # 5 -> 4 + 1 (dropped)
    _three_line(src / "toy_valid1.csv", [(200, [1, 1, 1], [1, 0, 1])])
    _three_line(src / "toy_test1.csv", [(300, [2, 3, 3, 1, 1, 2], [1, 1, 0, 1, 0, 1])])  # 6 -> 4 + 2 (dropped)
    return src


def test_importer_writes_pykt_layout_with_zero_based_ids(akt_dir, tmp_path):
    out = tmp_path / "out"
    summary = layout.import_three_line(akt_dir, "toy", 1, out, num_c=3, maxlen=4, min_seq_len=3)
    assert summary["source"]["train"] == {"file": "toy_train1.csv", "students": 3, "interactions": 14}
    assert summary["dropped"]["train"] == {"students": 1, "interactions": 3, "short_student_interactions": 2,
                                           "remainder_interactions": 1}
    assert summary["written"]["train_valid_sequences.csv"] == {"rows": 4, "students": 3, "interactions": 14 + 3 - 3}
    tv = data.read_sequences(out / "train_valid_sequences.csv", 3, 4)
    np.testing.assert_array_equal(tv.uids, [200, 100, 100, 102])
    np.testing.assert_array_equal(tv.concepts[1:3], [[0, 1, 1, 2], [2, 2, 0, -1]])
    np.testing.assert_array_equal(data.read_sequences(out / "train_valid_sequences.csv", 3, 4, folds=[0]).uids, [200])
    np.testing.assert_array_equal(data.read_sequences(out / "train_valid_sequences.csv", 3, 4, folds=[1]).uids,
                                  [100, 100])
    text = (out / "train_valid_sequences.csv").read_text().splitlines()
    assert text[0] == HEADER and text[1] == '0,200,"0,0,0,-1","1,0,1,-1","1,1,1,-1"'


def test_importer_writes_pykt_sliding_test_windows(akt_dir, tmp_path):
    out = tmp_path / "out"
    summary = layout.import_three_line(akt_dir, "toy", 1, out, num_c=3, maxlen=4, min_seq_len=3)
    win = data.read_sequences(out / "test_window_sequences.csv", 3, 4)
    np.testing.assert_array_equal(win.concepts, [[1, 2, 2, 0], [2, 2, 0, 0], [2, 0, 0, 1]])
    np.testing.assert_array_equal(win.selectmasks, [[1, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])
    assert summary["written"]["test_window_sequences.csv"]["interactions"] == 6
    assert summary["written"]["test_sequences.csv"] == {"rows": 1, "students": 1, "interactions": 4}
    lines = (out / "test_window_sequences.csv").read_text().splitlines()
    assert lines[0] == HEADER + ",cidxs" and lines[2].endswith('"-1,-1,-1,1","1,2,3,4"')


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A copy of configs/data_config.json that the registry code reads and writes instead of the repo's."""
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "data_config.json").write_text((data.CONFIG_DIR / "data_config.json").read_text())
    monkeypatch.setattr(data, "CONFIG_DIR", config_dir)
    return config_dir / "data_config.json"


def _import_cli(akt_dir, out, *extra):
    from click.testing import CliRunner

    from gainakt3exp.cli import main

    return CliRunner().invoke(main, ["data", "import-3line", "--src", str(akt_dir), "--prefix", "toy", "--fold", "1",
                                     "--out", str(out), "--num_c", "3", "--maxlen", "4", "--min_seq_len", "3",
                                     *extra])


def test_import_with_register_makes_the_folder_a_data_set_runs_can_load(akt_dir, tmp_path, registry):
    before = json.loads(registry.read_text())
    result = _import_cli(akt_dir, tmp_path / "imported" / "toy_akt", "--register", "toy_akt")
    assert result.exit_code == 0, result.output
    assert f"--dataset toy_akt --data_root {tmp_path / 'imported'} --seq_len 4" in result.output
    config = json.loads(registry.read_text())
    assert {k: v for k, v in config.items() if k != "toy_akt"} == before  # other entries untouched
    assert registry.read_text().startswith(layout.format_registry(before)[:-3])  # ... and so is their text
    assert config["toy_akt"]["dpath"] == "toy_akt" and config["toy_akt"]["num_c"] == 3
    spec = data.dataset_spec("toy_akt", tmp_path / "imported")
    assert (spec.num_c, spec.maxlen) == (3, 4)
    np.testing.assert_array_equal(data.load_split(spec, "valid", 0, 4).uids, [200])
    np.testing.assert_array_equal(data.load_split(spec, "train", 0, 4).uids, [100, 100, 102])
    again = _import_cli(akt_dir, tmp_path / "imported" / "toy_akt", "--register", "toy_akt")
    assert again.exit_code == 0 and "already registered" in again.output


def test_import_register_into_the_current_folder_uses_its_name(akt_dir, tmp_path, registry, monkeypatch):
    folder = tmp_path / "root" / "here"
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    result = _import_cli(akt_dir, ".", "--register", "here_akt")
    assert result.exit_code == 0, result.output
    assert json.loads(registry.read_text())["here_akt"]["dpath"] == "here"
    assert data.dataset_spec("here_akt", tmp_path / "root").root == folder.resolve()


def _register(args):
    name, path = args
    return layout.register_dataset(name, layout.imported_entry(name, 3, 4, 3), path)


def test_concurrent_registrations_all_land(registry):
    import multiprocessing

    names = [f"set{i}" for i in range(6)]
    with multiprocessing.get_context("fork").Pool(6) as pool:
        assert pool.map(_register, [(n, registry) for n in names]) == [True] * 6
    config = json.loads(registry.read_text())
    assert set(names) <= set(config) and {"assist2015", "synthetic"} <= set(config)
    assert not list(registry.parent.glob(".data_config.json.*.gakt-partial"))


def test_a_registry_that_is_not_an_object_of_entries_is_refused(tmp_path):
    bad = tmp_path / "data_config.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object of data set name -> entry"):
        data.load_data_config(bad)


@pytest.mark.parametrize("name, reason", [("assist2015", "already in"), ("../x", "is not allowed")])
def test_import_register_refuses_a_taken_or_malformed_name_before_writing(akt_dir, tmp_path, registry, name,
                                                                         reason):
    before = registry.read_bytes()
    result = _import_cli(akt_dir, tmp_path / "out", "--register", name)
    assert result.exit_code == 2 and reason in result.output, result.output
    assert registry.read_bytes() == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, line, reason", [
    ("0,1\n1,2\n1,0\n0,2\n1,2\n", 4, "the last student is incomplete"),
    ("0,1\n1,4\n1,0\n", 2, "skill id 4; allowed 1..3"),
    ("0,1\n1,0\n1,0\n", 2, "skill id 0"),
    ("0,1\n1,2\n1,5\n", 3, "response 5; allowed 0 or 1"),
    ("0,1\n1,2\n1\n", 3, "1 responses for 2 skills"),
    ("0,1\n1,a\n1,0\n", 2, "non-numeric"),
    ("0\n1,2\n1,0\n", 1, "expected `<row>,<student id>`"),
])
def test_malformed_three_line_file_names_file_and_line(tmp_path, content, line, reason):
    for split in ("train", "valid", "test"):
        (tmp_path / f"toy_{split}1.csv").write_text("0,1\n1,2\n1,0\n")
    (tmp_path / "toy_valid1.csv").write_text(content)
    with pytest.raises(DataError) as e:
        layout.import_three_line(tmp_path, "toy", 1, tmp_path / "out", num_c=3, maxlen=4, min_seq_len=1)
    msg = str(e.value)
    assert "toy_valid1.csv" in msg and f"line {line}:" in msg and reason in msg, msg


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("\n".join([HEADER, GOOD, "", _row(0, 2, [0, 9, -1], [1, 0, -1], [1, 1, -1])]) + "\n\n")
    with pytest.raises(DataError, match="gaps.csv line 4: concept id 9"):
        data.read_sequences(path, 5, 3)
