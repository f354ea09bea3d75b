"""Importers: 3-line files (both header forms) and pyKT's data.txt (pyKT's split, byte for byte) to pyKT layout."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from gainakt3exp.cli import main
from gainakt3exp.data import registry
from gainakt3exp.data import sequences as data
from gainakt3exp.data.pykt_split import import_pykt
from gainakt3exp.data.three_line import import_three_line
from gainakt3exp.errors import DataError

HEADER = "fold,uid,concepts,responses,selectmasks"


def invoke(*args):
    return CliRunner().invoke(main, list(args))


# ------------------------------------------------------------------ 3-line files

def _three_line(path, students, header="row", end="\n", trailing=""):
    """Write students [(uid, skills, responses)] in the 3-line layout; header "row" = `<row>,<uid>`, "count" = the
    number of responses."""
    text = ""
    for i, (uid, s, r) in enumerate(students):
        head = f"{i},{uid}" if header == "row" else f"{len(s)}"
        text += end.join([head, ",".join(map(str, s)) + trailing, ",".join(map(str, r)) + trailing]) + end
    path.write_bytes(text.encode())


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


def _import(src, out, prefix="toy", **kw):
    kw = {"maxlen": 4, "min_seq_len": 3, "name": "toy", "num_c": 3, **kw}
    return import_three_line(src, prefix, 1, out, **kw)


def test_importer_writes_pykt_layout_with_zero_based_ids(akt_dir, tmp_path):
    out = tmp_path / "out"
    summary = _import(akt_dir, out)
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
    assert json.loads((out / "keyid2idx.json").read_text()) == {"concepts": {"1": 0, "2": 1, "3": 2},
                                                                "max_concepts": 1}
    entry = json.loads((out / "data_config.json").read_text())["toy"]
    assert (entry["dpath"], entry["num_c"], entry["maxlen"], entry["input_type"]) == (str(out), 3, 4, ["concepts"])
    assert (out / "train_valid.csv").read_text().splitlines()[1] == '0,200,"0,0,0","1,0,1"'


def test_importer_writes_pykt_sliding_test_windows(akt_dir, tmp_path):
    out = tmp_path / "out"
    summary = _import(akt_dir, out)
    win = data.read_sequences(out / "test_window_sequences.csv", 3, 4)
    np.testing.assert_array_equal(win.concepts, [[1, 2, 2, 0], [2, 2, 0, 0], [2, 0, 0, 1]])
    np.testing.assert_array_equal(win.selectmasks, [[1, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])
    assert summary["written"]["test_window_sequences.csv"]["interactions"] == 6
    assert summary["written"]["test_sequences.csv"] == {"rows": 1, "students": 1, "interactions": 4}
    lines = (out / "test_window_sequences.csv").read_text().splitlines()
    assert lines[0] == HEADER + ",cidxs" and lines[2].endswith('"-1,-1,-1,1","1,2,3,4"')


@pytest.fixture
def count_dir(tmp_path):
    """30 students in DKVMN's form: count headers, trailing commas, CRLF line ends, blank lines between students."""
    rng = np.random.default_rng(4)
    src = tmp_path / "dkvmn"
    src.mkdir()
    students = {}
    for split, n in (("train", 18), ("valid", 6), ("test", 6)):
        rows = [(0, list(rng.integers(1, 6, size=k)), list(rng.integers(0, 2, size=k)))
                for k in rng.integers(1, 13, size=n)]
        _three_line(src / f"toy_{split}1.csv", rows, header="count", end="\r\n", trailing=",")
        text = (src / f"toy_{split}1.csv").read_bytes().replace(b",\r\n1", b",\r\n\r\n1", 2)  # blank lines
        (src / f"toy_{split}1.csv").write_bytes(text + b"\r\n\r\n")
        students[split] = rows
    return src, students


def test_count_headers_import_every_student_and_response(count_dir, tmp_path):
    src, students = count_dir
    summary = _import(src, tmp_path / "out", maxlen=20, min_seq_len=1, num_c=None)
    assert summary["num_c"] == 5 and summary["ids"] == "skill ids 1..5 -> 0..4"
    responses = sum(len(r) for rows in students.values() for _, _, r in rows)
    assert sum(s["students"] for s in summary["source"].values()) == 30
    assert sum(s["interactions"] for s in summary["source"].values()) == responses
    tv = data.read_sequences(tmp_path / "out" / "train_valid_sequences.csv", 5, 20)
    test = data.read_sequences(tmp_path / "out" / "test_sequences.csv", 5, 20)
    assert len(set(tv.uids)) + len(set(test.uids)) == 30 and not set(tv.uids) & set(test.uids)
    assert int(tv.lengths.sum() + test.lengths.sum()) == responses
    first = students["train"][0]
    row = int(np.flatnonzero(tv.uids == 0)[0])  # students are numbered over train, valid, test
    np.testing.assert_array_equal(tv.concepts[row, :len(first[1])], np.array(first[1]) - 1)
    np.testing.assert_array_equal(tv.responses[row, :len(first[2])], first[2])


def test_a_count_header_that_disagrees_with_its_lines_is_refused_with_file_and_line(count_dir, tmp_path):
    src, _ = count_dir
    path = src / "toy_valid1.csv"
    lines = path.read_bytes().decode().split("\r\n")
    assert b"\r\n\r\n" in path.read_bytes()  # CRLF ends and blank lines, as the fixture promises
    heads = [i for i, line in enumerate(lines) if line and "," not in line]
    lines[heads[2]] = str(int(lines[heads[2]]) + 1)
    path.write_bytes("\r\n".join(lines).encode())
    with pytest.raises(DataError) as e:
        _import(src, tmp_path / "out", maxlen=20, min_seq_len=1, num_c=None)
    assert f"toy_valid1.csv line {heads[2] + 1}: the header says" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_sparse_ids_are_remapped_in_order_of_first_appearance(tmp_path):
    for split, rows in (("train", [(1, [7014, 12, 7014], [1, 0, 1])]), ("valid", [(2, [5, 12, 5], [0, 0, 1])]),
                        ("test", [(3, [12, 900, 900], [1, 1, 1])])):
        _three_line(tmp_path / f"toy_{split}1.csv", rows)
    summary = _import(tmp_path, tmp_path / "out", num_c=None)
    assert summary["num_c"] == 4 and "remapped" in summary["ids"]
    assert json.loads((tmp_path / "out" / "keyid2idx.json").read_text())["concepts"] == \
        {"7014": 0, "12": 1, "5": 2, "900": 3}
    tv = data.read_sequences(tmp_path / "out" / "train_valid_sequences.csv", 4, 4)
    np.testing.assert_array_equal(tv.concepts[:, :3], [[2, 1, 2], [0, 1, 0]])  # valid (fold 0) first
    with pytest.raises(DataError, match=r"toy_train1.csv line 2: skill id 7014 is outside 1..3 .* pass --num_c 4"):
        _import(tmp_path, tmp_path / "out2", num_c=3)
    assert _import(tmp_path, tmp_path / "out3", num_c=4)["num_c"] == 4


def test_a_dkvmn_single_test_file_is_used_when_the_fold_has_none(akt_dir, tmp_path):
    (akt_dir / "toy_test1.csv").rename(akt_dir / "toy_test.csv")
    assert _import(akt_dir, tmp_path / "out")["source"]["test"]["file"] == "toy_test.csv"


@pytest.mark.parametrize("content, line, reason", [
    ("0,1\n1,2\n1,0\n0,2\n1,2\n", 4, "the last student is incomplete"),
    ("0,1\n1,2\n1,5\n", 3, "response 5; allowed 0 or 1"),
    ("0,1\n1,2\n1\n", 3, "1 responses for 2 skills"),
    ("0,1\n1,a\n1,0\n", 2, "non-numeric"),
    ("2\n1,2\n1,0\n0,1\n1,2\n1,0\n", 4, "expected a header like the file's first (line 1: a response count"),
    ("0\n1,2\n1,0\n", 1, "the header says 0 responses but line 2 has 2 skill ids"),
    ("0,1,2\n1,2\n1,0\n", 1, "expected a header"),
])
def test_malformed_three_line_file_names_file_and_line(tmp_path, content, line, reason):
    for split in ("train", "valid", "test"):
        (tmp_path / f"toy_{split}1.csv").write_text("0,1\n1,2\n1,0\n")
    (tmp_path / "toy_valid1.csv").write_text(content)
    with pytest.raises(DataError) as e:
        _import(tmp_path, tmp_path / "out", min_seq_len=1)
    msg = str(e.value)
    assert "toy_valid1.csv" in msg and f"line {line}:" in msg and reason in msg, msg


def test_skill_ids_outside_the_given_num_c_are_refused_naming_the_line(tmp_path):
    for split in ("train", "valid", "test"):
        _three_line(tmp_path / f"toy_{split}1.csv", [(1, [1, 2, 3], [1, 0, 1])])
    _three_line(tmp_path / "toy_test1.csv", [(1, [1, 2, 3], [1, 0, 1]), (2, [1, 4, 3], [1, 1, 1])])
    with pytest.raises(DataError, match=r"toy_test1.csv line 5: skill id 4 is outside 1..3"):
        _import(tmp_path, tmp_path / "out")


def _import_cli(src, out, *extra):
    return invoke("data", "import-3line", "--src", str(src), "--prefix", "toy", "--fold", "1", "--out", str(out),
                  "--num_c", "3", "--maxlen", "4", "--min_seq_len", "3", *extra)


def test_import_with_register_writes_the_user_registry_not_the_project(akt_dir, tmp_path, user_registry):
    builtin = registry.BUILTIN.read_bytes()
    result = _import_cli(akt_dir, tmp_path / "imported" / "toy_akt", "--register", "toy_akt")
    assert result.exit_code == 0, result.output
    assert "--dataset toy_akt --seq_len 4" in result.output and str(user_registry) in result.output
    assert registry.BUILTIN.read_bytes() == builtin
    entry = json.loads(user_registry.read_text())["toy_akt"]
    assert entry["dpath"] == str(tmp_path / "imported" / "toy_akt") and entry["num_c"] == 3
    spec = data.dataset_spec("toy_akt", tmp_path / "anywhere")  # an absolute dpath ignores data_root
    assert (spec.num_c, spec.maxlen, spec.origin) == (3, 4, str(user_registry))
    np.testing.assert_array_equal(data.load_split(spec, "valid", 0, 4).uids, [200])
    np.testing.assert_array_equal(data.load_split(spec, "train", 0, 4).uids, [100, 100, 102])
    again = _import_cli(akt_dir, tmp_path / "imported" / "toy_akt", "--register", "toy_akt")
    assert again.exit_code == 0 and "already registered" in again.output


def test_import_register_into_the_current_folder_uses_its_path(akt_dir, tmp_path, user_registry, monkeypatch):
    folder = tmp_path / "root" / "here"
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    result = _import_cli(akt_dir, ".", "--register", "here_akt")
    assert result.exit_code == 0, result.output
    assert json.loads(user_registry.read_text())["here_akt"]["dpath"] == str(folder.resolve())
    assert data.dataset_spec("here_akt", tmp_path).root == folder.resolve()


@pytest.mark.parametrize("name, reason", [("assist2015", "is a built-in data set"), ("../x", "is not allowed")])
def test_import_register_refuses_a_built_in_or_malformed_name_before_writing(akt_dir, tmp_path, user_registry, name,
                                                                             reason):
    result = _import_cli(akt_dir, tmp_path / "out", "--register", name)
    assert result.exit_code == 2 and reason in result.output, result.output
    assert not user_registry.exists() and not (tmp_path / "out").exists()


def test_import_register_refuses_a_name_taken_by_another_entry(akt_dir, tmp_path, user_registry):
    assert _import_cli(akt_dir, tmp_path / "a", "--register", "mine").exit_code == 0
    before = user_registry.read_bytes()
    result = _import_cli(akt_dir, tmp_path / "b", "--register", "mine")
    assert result.exit_code == 2 and "is already in" in result.output and "gakt-data unregister mine" in result.output
    assert user_registry.read_bytes() == before and not (tmp_path / "b").exists()


def _register(name):
    from gainakt3exp.data.layout import pykt_entry

    return registry.register({name: pykt_entry(f"/data/{name}", 3, 4, 3, [0, 1, 2, 3, 4])})


def test_concurrent_registrations_all_land(user_registry):
    import multiprocessing

    names = [f"set{i}" for i in range(6)]
    with multiprocessing.get_context("fork").Pool(6) as pool:
        assert pool.map(_register, names) == [[n] for n in names]
    assert set(json.loads(user_registry.read_text())) == set(names)
    assert not list(user_registry.parent.glob(".data_config.json.*.gakt-partial"))


# ------------------------------------------------------------------ pyKT's data.txt

# A data.txt with timestamps and string ids, and the files pyKT's own split_datasets.main(..., min_seq_len=3,
# maxlen=5, kfold=5) wrote from it (pykt-toolkit f766468, pandas 3.1, numpy 2.4): the golden reference.
DATA_TXT = """\
s9,7
NA
c3,c1,c3,c3,c7,c1,c1
1,0,1,1,0,1,1
1007,1021,1042,1070,1105,1147,1196
NA
s2,2
NA
c1,c1
0,1
1203,1217
NA
s5,6
NA
c7,c7,c2,c2,c2,c3
0,0,1,1,1,0
1224,1238,1259,1287,1322,1364
NA
s1,3
NA
c2,c2,c2
1,1,0
1371,1385,1406
NA
s7,11
NA
c3,c1,c1,c1,c2,c2,c7,c7,c7,c7,c2
1,0,0,1,1,1,0,1,1,1,1
1413,1427,1448,1476,1511,1553,1602,1658,1721,1791,1868
NA
s4,4
NA
c1,c2,c3,c7
0,1,0,1
1875,1889,1910,1938
NA
s8,5
NA
c9,c9,c9,c1,c1
1,1,1,0,0
1945,1959,1980,2008,2043
NA
s3,8
NA
c2,c3,c2,c3,c2,c3,c2,c3
0,1,0,1,1,1,1,1
2050,2064,2085,2113,2148,2190,2239,2295
NA
"""

TRAIN_VALID_SEQUENCES = """\
fold,uid,concepts,responses,timestamps,selectmasks
0,4,"1,3,0,2,-1","0,1,0,1,-1","1875,1889,1910,1938,-1","1,1,1,1,-1"
0,1,"2,2,3,3,3","0,0,1,1,1","1224,1238,1259,1287,1322","1,1,1,1,1"
1,6,"3,0,3,0,3","0,1,0,1,1","2050,2064,2085,2113,2148","1,1,1,1,1"
1,6,"0,3,0,-1,-1","1,1,1,-1,-1","2190,2239,2295,-1,-1","1,1,1,-1,-1"
2,5,"4,4,4,1,1","1,1,1,0,0","1945,1959,1980,2008,2043","1,1,1,1,1"
3,2,"3,3,3,-1,-1","1,1,0,-1,-1","1371,1385,1406,-1,-1","1,1,1,-1,-1"
4,0,"0,1,0,0,2","1,0,1,1,0","1007,1021,1042,1070,1105","1,1,1,1,1"
"""

TEST_SEQUENCES = """\
fold,uid,concepts,responses,timestamps,selectmasks,cidxs
-1,3,"0,1,1,1,3","1,0,0,1,1","1413,1427,1448,1476,1511","1,1,1,1,1","0,1,2,3,4"
-1,3,"3,2,2,2,2","1,0,1,1,1","1553,1602,1658,1721,1791","1,1,1,1,1","5,6,7,8,9"
"""

TEST_WINDOW_SEQUENCES = """\
fold,uid,concepts,responses,timestamps,selectmasks,cidxs
-1,3,"0,1,1,1,3","1,0,0,1,1","1413,1427,1448,1476,1511","1,1,1,1,1","0,1,2,3,4"
-1,3,"1,1,1,3,3","0,0,1,1,1","1427,1448,1476,1511,1553","-1,-1,-1,-1,1","1,2,3,4,5"
-1,3,"1,1,3,3,2","0,1,1,1,0","1448,1476,1511,1553,1602","-1,-1,-1,-1,1","2,3,4,5,6"
-1,3,"1,3,3,2,2","1,1,1,0,1","1476,1511,1553,1602,1658","-1,-1,-1,-1,1","3,4,5,6,7"
-1,3,"3,3,2,2,2","1,1,0,1,1","1511,1553,1602,1658,1721","-1,-1,-1,-1,1","4,5,6,7,8"
-1,3,"3,2,2,2,2","1,0,1,1,1","1553,1602,1658,1721,1791","-1,-1,-1,-1,1","5,6,7,8,9"
-1,3,"2,2,2,2,3","0,1,1,1,1","1602,1658,1721,1791,1868","-1,-1,-1,-1,1","6,7,8,9,10"
"""

TRAIN_VALID = """\
fold,uid,concepts,responses,timestamps
0,4,"1,3,0,2","0,1,0,1","1875,1889,1910,1938"
0,1,"2,2,3,3,3,0","0,0,1,1,1,0","1224,1238,1259,1287,1322,1364"
1,6,"3,0,3,0,3,0,3,0","0,1,0,1,1,1,1,1","2050,2064,2085,2113,2148,2190,2239,2295"
2,5,"4,4,4,1,1","1,1,1,0,0","1945,1959,1980,2008,2043"
3,2,"3,3,3","1,1,0","1371,1385,1406"
4,0,"0,1,0,0,2,1,1","1,0,1,1,0,1,1","1007,1021,1042,1070,1105,1147,1196"
"""

TEST = """\
fold,uid,concepts,responses,timestamps,cidxs
-1,3,"0,1,1,1,3,3,2,2,2,2,3","1,0,0,1,1,1,0,1,1,1,1","1413,1427,1448,1476,1511,1553,1602,1658,1721,1791,1868","0,1,2,3,4,5,6,7,8,9,10"
"""

KEYID2IDX = '{"concepts": {"c3": 0, "c1": 1, "c7": 2, "c2": 3, "c9": 4}, "uid": {"s9": 0, "s5": 1, "s1": 2, "s7": 3, "s4": 4, "s8": 5, "s3": 6}, "max_concepts": 1}'



def test_data_txt_splits_exactly_as_pykt_does(tmp_path):
    (tmp_path / "data.txt").write_text(DATA_TXT)
    summary = import_pykt(tmp_path / "data.txt", tmp_path / "out", name="toy", maxlen=5)
    expected = {"train_valid_sequences.csv": TRAIN_VALID_SEQUENCES, "test_sequences.csv": TEST_SEQUENCES,
                "test_window_sequences.csv": TEST_WINDOW_SEQUENCES, "train_valid.csv": TRAIN_VALID,
                "test.csv": TEST, "keyid2idx.json": KEYID2IDX}
    for name, text in expected.items():
        assert (tmp_path / "out" / name).read_text() == text, name
    assert summary["dropped"] == {"students": 1, "interactions": 2}
    assert summary["students"] == {"train_valid": 6, "test": 1} and summary["num_c"] == 5
    spec_entry = json.loads((tmp_path / "out" / "data_config.json").read_text())["toy"]
    assert (spec_entry["num_c"], spec_entry["maxlen"], spec_entry["folds"]) == (5, 5, [0, 1, 2, 3, 4])


def test_kfold_blocks_follow_pykt(tmp_path):
    from gainakt3exp.data.pykt_split import split_folds

    np.testing.assert_array_equal(split_folds(7, 5), [0, 0, 1, 1, 2, 3, 4])
    assert np.bincount(split_folds(15275, 5)).tolist() == [3055] * 5


def _record(uid, concepts, responses, questions="NA"):
    return f"{uid},{len(responses)}\n{questions}\n{','.join(concepts)}\n{','.join(map(str, responses))}\nNA\nNA\n"


GOOD = _record("a", ["1", "2", "1"], [1, 0, 1]) + _record("b", ["2", "2", "3", "1"], [0, 1, 1, 1])


@pytest.mark.parametrize("text, line, reason", [
    (GOOD + GOOD.replace("NA\nNA\nb,4", "NA\nb,4", 1), 18,
     "usetimes line is present here but NA in the first record, found 'b,4'"),  # a 5-line record
    (GOOD.replace("NA\nNA\nb,4", "NA\nb,4", 1), 6, "usetimes has 2 values but the header (line 1) says 3"),
    (GOOD.replace("b,4", "b,5"), 9, "concepts has 4 values but the header (line 7) says 5"),
    (GOOD.replace("0,1,1,1", "0,1,2,1"), 10, "response 2; allowed 0 or 1"),
    (GOOD.replace("b,4", "b,x"), 7, "expected a record header `<uid>,<length>`"),
    (GOOD[:-3], 12, "the last record ends before its usetimes line"),
    (GOOD.replace("1,0,1\nNA", "NA\nNA"), 4, "the responses line is NA or missing"),
])
def test_a_malformed_data_txt_is_refused_with_file_and_line(tmp_path, text, line, reason):
    (tmp_path / "data.txt").write_text(text)
    with pytest.raises(DataError) as e:
        import_pykt(tmp_path / "data.txt", tmp_path / "out", name="toy")
    assert f"data.txt line {line}: " in str(e.value) and reason in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, line, reason", [
    (_record("a", ["1_4", "2", "1"], [1, 0, 1]) * 2, 3, "concept ids joined by '_' (several concepts per response) "
                                                       "but the records have no question ids"),
    (_record("a", ["1_", "2", "1"], [1, 0, 1], questions="q1,q2,q1") * 2, 3, "concept field '1_' has an empty id"),
])
def test_multi_concept_data_needs_question_ids_and_whole_ids(tmp_path, text, line, reason):
    (tmp_path / "data.txt").write_text(text)
    with pytest.raises(DataError) as e:
        import_pykt(tmp_path / "data.txt", tmp_path / "out", name="toy")
    assert f"line {line}: " in str(e.value) and reason in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()


QUESTION_TXT = "".join(_record(f"u{i}", ["7_9", "9", "15", "7_15", "9"], [1, 0, 1, 1, i % 2],
                               questions="q1,q2,q3,q4,q2") for i in range(10))


def test_question_level_data_txt_is_expanded_numbered_and_split_as_pykt_does(tmp_path):
    summary = import_pykt_file(tmp_path, QUESTION_TXT)
    assert (summary["num_q"], summary["num_c"], summary["max_concepts"], summary["expanded_steps"]) == (4, 3, 2, 70)
    ids = json.loads((tmp_path / "out" / "keyid2idx.json").read_text())
    assert list(ids) == ["questions", "concepts", "uid", "max_concepts"]
    assert ids["questions"] == {"q1": 0, "q2": 1, "q3": 2, "q4": 3} and ids["concepts"] == {"7": 0, "9": 1, "15": 2}
    assert ids["max_concepts"] == 2
    header, *rows = (tmp_path / "out" / "train_valid.csv").read_text().splitlines()
    assert header == "fold,uid,questions,concepts,responses,is_repeat"
    # 7_9 -> two steps of question q1 (concepts 7, 9), is_repeat 0 then 1, the answer's response on both
    assert rows[0].split(",", 2)[2] == '"0,0,1,2,3,3,1","0,1,1,2,0,2,1","1,1,0,1,1,1,{r}","0,1,0,0,0,1,0"'.format(
        r=rows[0].split('"')[5][-1])
    seq_header = (tmp_path / "out" / "train_valid_sequences.csv").read_text().splitlines()[0]
    assert seq_header == "fold,uid,questions,concepts,responses,selectmasks,is_repeat"
    for name in ("test_sequences.csv", "test_window_sequences.csv"):
        assert (tmp_path / "out" / name).read_text().splitlines()[0] == \
            "fold,uid,questions,concepts,responses,selectmasks,is_repeat,cidxs"
    entry = json.loads((tmp_path / "out" / "data_config.json").read_text())["toy"]
    assert (entry["num_q"], entry["input_type"], entry["max_concepts"]) == (4, ["questions", "concepts"], 2)
    assert entry["test_question_window_file"] == "test_question_window_sequences.csv"


def import_pykt_file(tmp_path, text, **kwargs):
    (tmp_path / "data.txt").write_text(text)
    return import_pykt(tmp_path / "data.txt", tmp_path / "out", name="toy", **kwargs)


def test_question_rows_predict_each_concept_from_a_history_without_its_answer(tmp_path):
    """pyKT's documented example (quick start, generate_question_sequences): questions 3, 4, 5 tagged 1_3, 1_2, 3,
    responses 1, 0, 1 give three rows; every concept of the first answer is history only."""
    from gainakt3exp.data.layout import write_question_file

    test = {"uid": np.array([0]), "lengths": np.array([5]), "questions": np.array([3, 3, 4, 4, 5]),
            "concepts": np.array([1, 3, 1, 2, 3]), "responses": np.array([1, 1, 0, 0, 1]),
            "is_repeat": np.array([0, 1, 0, 1, 0])}
    summary = write_question_file(tmp_path / "q.csv", test, maxlen=6, min_seq_len=3, extra=(), sliding=True)
    header, *rows = (tmp_path / "q.csv").read_text().splitlines()
    assert header == "fold,uid,questions,concepts,responses,selectmasks,is_repeat,qidxs,rest,orirow"
    cells = [[c.split(",") for c in row.split('"')[1::2]] for row in rows]
    assert [c[0] for c in cells] == [["3", "3", "4", "-1", "-1", "-1"], ["3", "3", "4", "-1", "-1", "-1"],
                                     ["3", "3", "4", "4", "5", "-1"]]
    assert [c[1][:3] for c in cells] == [["1", "3", "1"], ["1", "3", "2"], ["1", "3", "1"]]
    assert [c[3] for c in cells] == [["-1", "-1", "1", "-1", "-1", "-1"], ["-1", "-1", "1", "-1", "-1", "-1"],
                                     ["-1", "-1", "-1", "-1", "1", "-1"]]
    assert [c[5][:5] for c in cells] == [["0", "0", "1", "-1", "-1"], ["0", "0", "1", "-1", "-1"],
                                         ["0", "0", "1", "1", "2"]]
    assert [c[6][:5] for c in cells] == [["1", "0", "1", "-1", "-1"], ["1", "0", "0", "-1", "-1"],
                                         ["1", "0", "1", "0", "0"]]
    assert summary == {"rows": 3, "students": 1, "interactions": 3}


def test_import_pykt_registers_the_set_and_refuses_a_taken_name_first(tmp_path, user_registry):
    (tmp_path / "data.txt").write_text(DATA_TXT)
    result = invoke("data", "import-pykt", "--src", str(tmp_path / "data.txt"), "--out", str(tmp_path / "out"),
                    "--name", "toy", "--maxlen", "5")
    assert result.exit_code == 0, result.output
    spec = data.dataset_spec("toy", tmp_path)
    assert (spec.num_c, spec.maxlen, spec.root) == (5, 5, tmp_path / "out")
    assert len(data.load_split(spec, "test_window", 0, 5)) == 7
    taken = invoke("data", "import-pykt", "--src", str(tmp_path / "data.txt"), "--out", str(tmp_path / "other"),
                   "--name", "synthetic")
    assert taken.exit_code == 2 and "'synthetic' is a built-in data set" in taken.output
    assert not (tmp_path / "other").exists()


def _four_line(path, students):
    """AKT's `_pid` layout: header, problem ids, skill ids, responses (a problem with k skills: k rows)."""
    path.write_text("".join(f"{i},{1000 + i}\n{','.join(map(str, p))}\n{','.join(map(str, s))}\n"
                            f"{','.join(map(str, r))}\n" for i, (p, s, r) in enumerate(students)))


def test_akt_four_line_files_collapse_multi_skill_rows_into_question_level_answers(tmp_path):
    """Problem 7 with skills 1 and 3 is one answer (two steps, is_repeat 0, 1); problem 7 again straight away with
    skill 1 repeated is a new answer; every row and response is kept; a student with 2 answers in 3 rows is dropped."""
    student = ([7, 7, 7, 7, 8, 9], [1, 3, 1, 3, 2, 2], [1, 1, 1, 1, 0, 0])
    short = ([4, 4, 5], [1, 2, 2], [0, 0, 1])
    for split in ("train", "valid", "test"):
        _four_line(tmp_path / f"toy_pid_{split}1.csv", [student] * 3 + ([short] if split == "train" else []))
    summary = import_three_line(tmp_path, "toy_pid", 1, tmp_path / "out", maxlen=5, min_seq_len=3, name="toy")
    assert summary["source"]["train"] == {"file": "toy_pid_train1.csv", "students": 4, "interactions": 21,
                                          "answers": 14}
    assert summary["dropped"]["train"]["students"] == 1 and summary["num_q"] == 3 and summary["max_concepts"] == 2
    header, *rows = (tmp_path / "out" / "train_valid.csv").read_text().splitlines()
    assert header == "fold,uid,questions,concepts,responses,is_repeat"
    assert rows[0].split(",", 2)[2] == '"0,0,0,0,1,2","0,2,0,2,1,1","1,1,1,1,0,0","0,1,0,1,0,0"'
    ids = json.loads((tmp_path / "out" / "keyid2idx.json").read_text())
    assert ids["questions"] == {"7": 0, "8": 1, "9": 2} and ids["max_concepts"] == 2
    entry = json.loads((tmp_path / "out" / "data_config.json").read_text())["toy"]
    assert entry["num_q"] == 3 and entry["input_type"] == ["questions", "concepts"]
    assert (tmp_path / "out" / "test_question_window_sequences.csv").is_file()


def test_a_four_line_file_with_a_missing_line_is_refused_naming_it(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"toy_pid_{split}1.csv").write_text("0,1\n7,7\n1,3\n1,1\n1,2\n8\n2\n")
    with pytest.raises(DataError, match=r"toy_pid_train1.csv line 5: the last student is incomplete"):
        import_three_line(tmp_path, "toy_pid", 1, tmp_path / "out", maxlen=5, min_seq_len=3, name="toy")
    assert not (tmp_path / "out").exists()
