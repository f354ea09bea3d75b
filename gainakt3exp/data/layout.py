"""Writing the pyKT layout: windowing histories as pyKT's split_datasets does, its CSV files, its data_config
entry and keyid2idx.json. The importers (three_line.py, pykt_split.py) and synthetic.py write through it.

    summary = write_pykt_folder(Path("data/mine"), train_valid, folds, test, maxlen=200, min_seq_len=3)

sequences.py reads what this module writes; the layout itself is described there. Students are passed as dicts of
arrays: uid (n,), lengths (n,) and per-step columns stored back to back (concepts, responses, and optional extra
string columns such as pyKT's timestamps/usetimes), in the order they go to the files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gainakt3exp.files import write_bytes_atomic

# ----------------------------------------------------------------------------------------------- writing

def split_windows(lengths: np.ndarray, maxlen: int, min_seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pyKT's generate_sequences for histories of `lengths`: consecutive windows of maxlen; a final remainder is
    kept only if it has >= min_seq_len steps. Returns (student of each row, start offset, row length)."""
    full, rest = lengths // maxlen, lengths % maxlen
    nrows = full + (rest >= min_seq_len)
    student = np.repeat(np.arange(len(lengths)), nrows)
    k = np.arange(len(student)) - np.repeat(np.cumsum(nrows) - nrows, nrows)
    return student, k * maxlen, np.where(k < full[student], maxlen, rest[student])


def sliding_windows(lengths: np.ndarray, maxlen: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pyKT's generate_window_sequences: a history of n <= maxlen steps is one row; a longer one gives its first
    maxlen steps, then one window per further step ending at that step. Returns (student, start, length)."""
    nrows = 1 + np.maximum(lengths - maxlen, 0)
    student = np.repeat(np.arange(len(lengths)), nrows)
    start = np.arange(len(student)) - np.repeat(np.cumsum(nrows) - nrows, nrows)
    return student, start, np.minimum(lengths[student], maxlen)


def gather_windows(flat: np.ndarray, offsets: np.ndarray, student: np.ndarray, start: np.ndarray,
                   length: np.ndarray, maxlen: int, pad=-1) -> np.ndarray:
    """(rows, maxlen) array of windows of per-student histories stored back to back in `flat`, `pad` padded."""
    idx = (offsets[student] + start)[:, None] + np.arange(maxlen)
    valid = np.arange(maxlen) < length[:, None]
    return np.where(valid, flat[np.minimum(idx, len(flat) - 1)], pad)


def window_selectmasks(start: np.ndarray, length: np.ndarray, maxlen: int, sliding: bool) -> np.ndarray:
    """pyKT selectmasks: 1 at real steps, -1 padding; in sliding windows after a history's first window
    (start > 0) only the last position is 1 (the one new step it scores), all others -1."""
    pos = np.arange(maxlen)
    sm = np.where(pos < length[:, None], 1, -1)
    if sliding:
        later = start > 0
        sm[later] = np.where(pos == maxlen - 1, 1, -1)
    return sm


def write_sequence_csv(path: Path, header: list[str], fold: np.ndarray, uid: np.ndarray,
                       lists: list[np.ndarray]) -> None:
    """Write fold,uid + quoted comma lists (as pandas.to_csv does for pyKT), atomically (temp file + rename).
    Float lists (mastery in [0, 1]) are written rounded to 4 decimals; -1 stays -1."""
    cols = [_format_rows(a) for a in lists]
    body = "".join(f"{f},{u}," + ",".join(f'"{c[i]}"' for c in cols) + "\n"
                   for i, (f, u) in enumerate(zip(fold.tolist(), uid.tolist())))
    write_bytes_atomic(path, (",".join(header) + "\n" + body).encode())


def _format_rows(a: np.ndarray) -> list[str]:
    """One comma-joined string per row, formatting each distinct value once (a lookup table, not per element)."""
    return [",".join(row) for row in _format_values(a).tolist()]


def _format_values(a: np.ndarray) -> np.ndarray:
    """Each value of `a` as its CSV text (same shape, object array); strings pass through."""
    if a.dtype.kind in "USO":
        return a.astype(object)
    if np.issubdtype(a.dtype, np.floating):  # values in [0, 1] or -1 padding, rounded to 4 decimals
        table = np.array(["-1"] + [f"{i / 10000:.4f}" for i in range(10001)], dtype=object)
        s = table[np.where(a == -1, 0, np.rint(np.clip(a, 0, 1) * 10000).astype(np.int64) + 1)]
    elif a.size and int(a.max()) - int(a.min()) < 1_000_000:
        lo = int(a.min())
        s = np.array([str(v) for v in range(lo, int(a.max()) + 1)], dtype=object)[a - lo]
    else:
        s = a.astype(str).astype(object)
    return s


# ----------------------------------------------------------------------------------------------- a whole folder

TRAIN_VALID_FILE, TEST_FILE, TEST_WINDOW_FILE = "train_valid_sequences.csv", "test_sequences.csv", \
    "test_window_sequences.csv"
TRAIN_VALID_ORIGINAL, TEST_ORIGINAL = "train_valid.csv", "test.csv"
TEST_QUESTION_FILE, TEST_QUESTION_WINDOW_FILE = "test_question_sequences.csv", "test_question_window_sequences.csv"


def write_pykt_folder(out_dir: Path, train_valid: dict, folds: np.ndarray, test: dict, maxlen: int,
                      min_seq_len: int, extra: tuple = ()) -> dict:
    """Write what pyKT's split_datasets.main writes for concept-level data, in its byte format:
    train_valid_sequences.csv (fold of each student from `folds`), test_sequences.csv and
    test_window_sequences.csv (fold -1, plus cidxs = each test interaction's running index), and the unwindowed
    train_valid.csv and test.csv. `extra` names per-step string columns (timestamps, usetimes) written after
    responses, as pyKT does. Returns per file: rows, students, interactions (positions with selectmask 1)."""
    out_dir = Path(out_dir)
    test = {**test, "cidxs": np.arange(int(test["lengths"].sum()))}
    questions = "questions" in train_valid  # pyKT's column order: questions first, is_repeat after selectmasks
    steps = [*(["questions"] if questions else []), "concepts", "responses", *extra]
    after = ["is_repeat"] if questions else []
    summary = {}
    for name, d, fold, windows, sliding in (
            (TRAIN_VALID_FILE, train_valid, np.asarray(folds), split_windows(train_valid["lengths"], maxlen,
                                                                              min_seq_len), False),
            (TEST_FILE, test, None, split_windows(test["lengths"], maxlen, min_seq_len), False),
            (TEST_WINDOW_FILE, test, None, sliding_windows(test["lengths"], maxlen), True)):
        fold = np.full(len(d["uid"]), -1) if fold is None else fold
        student, start, length = windows
        offsets = np.cumsum(d["lengths"]) - d["lengths"]
        sm = window_selectmasks(start, length, maxlen, sliding)
        lists = [gather_windows(d[k], offsets, student, start, length, maxlen,
                                pad="-1" if d[k].dtype.kind in "USO" else -1) for k in steps]
        later = [gather_windows(d[k], offsets, student, start, length, maxlen) for k in after]
        cidxs = [gather_windows(d["cidxs"], offsets, student, start, length, maxlen)] if "cidxs" in d else []
        header = ["fold", "uid", *steps, "selectmasks", *after] + (["cidxs"] if cidxs else [])
        write_sequence_csv(out_dir / name, header, fold[student], d["uid"][student], lists + [sm] + later + cidxs)
        summary[name] = {"rows": int(len(student)), "students": int(len(np.unique(student))),
                         "interactions": int((sm == 1).sum())}
    write_unwindowed_csv(out_dir / TRAIN_VALID_ORIGINAL, ["fold", "uid", *steps, *after], np.asarray(folds),
                         train_valid, [*steps, *after])
    write_unwindowed_csv(out_dir / TEST_ORIGINAL, ["fold", "uid", *steps, *after, "cidxs"],
                         np.full(len(test["uid"]), -1), test, [*steps, *after, "cidxs"])
    if questions:
        for name, sliding in ((TEST_QUESTION_FILE, False), (TEST_QUESTION_WINDOW_FILE, True)):
            summary[name] = write_question_file(out_dir / name, test, maxlen, min_seq_len, tuple(extra), sliding)
    return summary


def question_rows(is_repeat: np.ndarray, lengths: np.ndarray) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """pyKT's expand_question for every student: the rows that predict each concept of an answer from a history
    without that answer (generate_question_sequences), before windowing.

    A "running" row holds the single-concept answers and ends with the first concept of a multi-concept answer;
    each further concept of that answer gets a row of its own: the history before the answer plus that step.
    Returns (rows: per student a list of (prefix P, tail steps T), student-local step indices; a row is steps
    0..P-1 with selectmask -1, then T with selectmask 1), qidxs (each step's answer, counted over all students),
    rest (later steps of the same answer) and the per-step offsets of the students."""
    offsets = np.cumsum(lengths) - lengths
    starts = is_repeat == 0
    qidxs = np.cumsum(starts) - 1
    answer_end = np.empty(len(is_repeat), dtype=np.int64)  # global index one past each step's answer
    first = np.flatnonzero(starts)
    ends = np.append(first[1:], len(is_repeat))
    answer_end[:] = ends[qidxs]
    # an answer never spans two students: is_repeat is 0 at every student's first step
    rest = answer_end - 1 - np.arange(len(is_repeat))
    rows = []
    for o, n in zip(offsets.tolist(), lengths.tolist()):
        rep = is_repeat[o:o + n]
        mine = []
        answer_start = 0
        i = 0
        while i < n:
            if rep[i] == 0:  # a running row: single-concept answers, then the first concept of the next one
                e = i + 1
                while e < n and rep[e] == 0:
                    e += 1
                p = max(i, 1)  # a student's very first step is history only
                mine.append((p, np.arange(p, e)))
                answer_start = e - 1  # the answer that the following repeated steps belong to
                i = e
            else:
                mine.append((answer_start, np.array([i])))
                i += 1
        rows.append(mine)
    return rows, qidxs, rest, offsets


def question_windows(test: dict, maxlen: int, min_seq_len: int, sliding: bool) -> dict:
    """The rows of test_question_sequences.csv (sliding False) or test_question_window_sequences.csv (True), as
    pyKT's generate_question_sequences makes them from the test students (test.csv): the rows of question_rows,
    cut to maxlen (chunks whose last step scores and a tail of >= min_seq_len steps; or the first window and one
    window per later scored step). Returns owner (student of each row), index (rows, maxlen) into the students'
    back-to-back steps (-1 padding), selectmasks, and per step qidxs, rest and orirow."""
    rows, qidxs, rest, offsets = question_rows(np.asarray(test["is_repeat"]), np.asarray(test["lengths"]))
    orirow = np.repeat(np.arange(len(test["lengths"])), test["lengths"])
    index, masks, owner = [], [], []
    for student, mine in enumerate(rows):
        o = offsets[student]
        for p, tail in mine:
            steps = np.concatenate([np.arange(p), tail]) + o
            sm = np.concatenate([np.full(p, -1), np.ones(len(tail), dtype=np.int64)])
            n = len(steps)
            if n < 2:
                continue
            if n < maxlen:
                index.append(np.pad(steps, (0, maxlen - n), constant_values=-1))
                masks.append(np.pad(sm, (0, maxlen - n), constant_values=-1))
                owner.append(student)
            elif sliding:
                if sm[maxlen - 1] == 1:
                    index.append(steps[:maxlen]), masks.append(sm[:maxlen]), owner.append(student)
                last = np.zeros(maxlen, dtype=np.int64) - 1
                last[-1] = 1
                for end in (np.flatnonzero(sm[maxlen:] == 1) + maxlen + 1).tolist():
                    index.append(steps[end - maxlen:end]), masks.append(last), owner.append(student)
            else:
                k = 0
                while n >= k + maxlen:
                    if sm[k + maxlen - 1] == 1:
                        index.append(steps[k:k + maxlen]), masks.append(sm[k:k + maxlen]), owner.append(student)
                    k += maxlen
                if n - k >= min_seq_len:
                    index.append(np.pad(steps[k:], (0, maxlen - (n - k)), constant_values=-1))
                    masks.append(np.pad(sm[k:], (0, maxlen - (n - k)), constant_values=-1))
                    owner.append(student)
    return {"owner": np.array(owner, dtype=np.int64), "index": np.array(index, dtype=np.int64).reshape(-1, maxlen),
            "selectmasks": np.array(masks, dtype=np.int64).reshape(-1, maxlen), "qidxs": qidxs, "rest": rest,
            "orirow": orirow}


def write_question_file(path: Path, test: dict, maxlen: int, min_seq_len: int, extra: tuple, sliding: bool) -> dict:
    """test_question_sequences.csv (sliding False) or test_question_window_sequences.csv (True) in pyKT's byte
    format (question_windows), with the columns
    fold,uid,questions,concepts,responses[,timestamps,usetimes],selectmasks,is_repeat,qidxs,rest,orirow."""
    rows = question_windows(test, maxlen, min_seq_len, sliding)
    idx, sm, owner = rows["index"], rows["selectmasks"], rows["owner"]
    qidxs, rest, orirow = rows["qidxs"], rows["rest"], rows["orirow"]
    pad = idx < 0

    def column(values: np.ndarray) -> np.ndarray:
        string = values.dtype.kind in "USO"
        got = values[np.where(pad, 0, idx)]
        return np.where(pad, "-1" if string else -1, got)

    steps = ["questions", "concepts", "responses", *extra]
    lists = [column(np.asarray(test[k])) for k in steps] + [sm] + [column(np.asarray(test["is_repeat"]))] + \
        [column(v) for v in (qidxs, rest, orirow)]
    header = ["fold", "uid", *steps, "selectmasks", "is_repeat", "qidxs", "rest", "orirow"]
    write_sequence_csv(path, header, np.full(len(owner), -1), np.asarray(test["uid"])[owner], lists)
    return {"rows": int(len(owner)), "students": int(len(np.unique(owner))), "interactions": int((sm == 1).sum())}


def write_unwindowed_csv(path: Path, header: list[str], fold: np.ndarray, d: dict, columns: list[str]) -> None:
    """pyKT's train_valid.csv / test.csv: one row per student, each list column whole (quoted when it holds a
    comma, as pandas.to_csv does)."""
    offsets = np.concatenate([[0], np.cumsum(d["lengths"])]).tolist()
    cols = []
    for c in columns:
        values = _format_values(np.asarray(d[c])).tolist()
        joined = (",".join(values[a:b]) for a, b in zip(offsets[:-1], offsets[1:]))
        cols.append([f'"{s}"' if "," in s else s for s in joined])
    body = "".join(f"{f},{u}," + ",".join(col[i] for col in cols) + "\n"
                   for i, (f, u) in enumerate(zip(fold.tolist(), np.asarray(d["uid"]).tolist())))
    write_bytes_atomic(path, (",".join(header) + "\n" + body).encode())


def pykt_entry(dpath: str, num_c: int, maxlen: int, min_seq_len: int, folds: list[int], num_q: int = 0,
               max_concepts: int = 1) -> dict:
    """The data_config.json entry pyKT's split_datasets.write_config writes: concept-level (num_q 0) or, with
    num_q question ids, question-level (input_type questions and concepts, and the two question test files)."""
    entry = {"dpath": dpath, "num_q": int(num_q), "num_c": int(num_c),
             "input_type": ["questions", "concepts"] if num_q else ["concepts"], "max_concepts": int(max_concepts),
             "min_seq_len": int(min_seq_len), "maxlen": int(maxlen), "emb_path": "",
             "train_valid_original_file": TRAIN_VALID_ORIGINAL, "train_valid_file": TRAIN_VALID_FILE,
             "folds": list(folds), "test_original_file": TEST_ORIGINAL, "test_file": TEST_FILE,
             "test_window_file": TEST_WINDOW_FILE}
    if num_q:
        entry.update(test_question_file=TEST_QUESTION_FILE, test_question_window_file=TEST_QUESTION_WINDOW_FILE)
    return entry


def write_pykt_config(out_dir: Path, name: str, entry: dict) -> Path:
    """OUT/data_config.json holding {name: entry} as pyKT writes its config (indent 4), so the folder can be
    registered (gakt-data register --pykt-config) or merged into pyKT's own configs/data_config.json."""
    path = Path(out_dir) / "data_config.json"
    write_bytes_atomic(path, json.dumps({name: entry}, ensure_ascii=False, indent=4).encode())
    return path


def write_keyid2idx(out_dir: Path, mapping: dict) -> None:
    """keyid2idx.json as pyKT's save_id2idx writes it (json.dumps defaults): original id -> 0-based index."""
    write_bytes_atomic(Path(out_dir) / "keyid2idx.json", json.dumps(mapping).encode())
