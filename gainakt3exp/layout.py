"""Writing the pyKT layout: windowing histories as pyKT does, sequence CSVs, and the AKT/DKVMN 3-line importer.

    summary = import_three_line(Path("akt"), "assist2015", 1, Path("data/mine"), num_c=100, maxlen=200,
                                min_seq_len=3)     # what `gakt-data import-3line` runs

data.py reads what this module and synthetic.py write; the layout itself is described there.
"""
from __future__ import annotations

import fcntl
import json
import re
from pathlib import Path

import numpy as np

from gainakt3exp.data import REQUIRED_COLUMNS, data_config_path, first_bad_row, load_data_config, parse_lists
from gainakt3exp.errors import ConfigError, DataError
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
    if np.issubdtype(a.dtype, np.floating):  # values in [0, 1] or -1 padding, rounded to 4 decimals
        table = np.array(["-1"] + [f"{i / 10000:.4f}" for i in range(10001)], dtype=object)
        s = table[np.where(a == -1, 0, np.rint(np.clip(a, 0, 1) * 10000).astype(np.int64) + 1)]
    elif a.size and int(a.max()) - int(a.min()) < 1_000_000:
        lo = int(a.min())
        s = np.array([str(v) for v in range(lo, int(a.max()) + 1)], dtype=object)[a - lo]
    else:
        s = a.astype(str)
    return [",".join(row) for row in s.tolist()]


# ----------------------------------------------------------------------------------------------- 3-line import

def _read_three_line(path: Path, num_c: int) -> dict:
    """Per student: `<row>,<student id>` / skill ids 1..num_c / 0-1 responses. Ids are returned 0-based."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"3-line file {path} does not exist; pass the folder and prefix of "
                        f"<prefix>_train<k>.csv / _valid<k>.csv / _test<k>.csv") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{path.name} line 1: the file is empty; expected 3 lines per student")
    if len(lines) % 3:
        raise DataError(f"{path.name} line {len(lines) - len(lines) % 3 + 1}: the last student is incomplete "
                        f"({len(lines)} lines); the 3-line format needs <row>,<student id> / skills / responses")
    n = len(lines) // 3
    name = path.name
    head, hc = parse_lists(lines[0::3], np.arange(n) * 3 + 1, name, "<row>,<student id>", np.int64)
    i = first_bad_row(hc != 2)
    if i is not None:
        raise DataError(f"{name} line {3 * i + 1}: expected `<row>,<student id>`, found {lines[3 * i]!r}")
    skills, sc = parse_lists(lines[1::3], np.arange(n) * 3 + 2, name, "skills", np.int64)
    resp, rc = parse_lists(lines[2::3], np.arange(n) * 3 + 3, name, "responses", np.int64)
    i = first_bad_row(sc != rc)
    if i is not None:
        raise DataError(f"{name} line {3 * i + 3}: {rc[i]} responses for {sc[i]} skills (line {3 * i + 2}); "
                        f"each student needs one response per skill")
    student = np.repeat(np.arange(n), sc)
    for values, bad, what, line, allowed in (
            (skills, (skills < 1) | (skills > num_c), "skill id", 2, f"1..{num_c} (num_c = {num_c})"),
            (resp, (resp != 0) & (resp != 1), "response", 3, "0 or 1")):
        if bad.any():
            k = int(np.argmax(bad))
            raise DataError(f"{name} line {3 * student[k] + line}: {what} {values[k]}; allowed {allowed}")
    return {"uid": head.reshape(n, 2)[:, 1], "lengths": sc, "concepts": skills - 1, "responses": resp}


def import_three_line(src_dir: Path, prefix: str, fold: int, out_dir: Path, num_c: int, maxlen: int,
                      min_seq_len: int) -> dict:
    """Convert AKT/DKVMN 3-line files of fold k into pyKT layout in out_dir.

    Reads <prefix>_train<k>.csv, _valid<k>.csv, _test<k>.csv (k = `fold`, 1-based as in the AKT files).
    train_valid_sequences.csv: valid<k> students get fold 0, train<k> students folds 1..4 round-robin in file
    order, so a run with fold 0 trains on train<k> and validates on valid<k>. test_sequences.csv and
    test_window_sequences.csv (fold -1, plus pyKT's cidxs) hold test<k>. Students with fewer than min_seq_len
    steps are dropped, histories are windowed as pyKT does (`split_windows`, `sliding_windows`), skill ids become
    0-based. Returns counts: "source" per file read (students, interactions); "dropped" per file read (students
    shorter than min_seq_len; interactions = theirs + window remainders shorter than min_seq_len, the latter kept
    in the window file); "written" per output file (rows, students, interactions = positions with selectmask 1).
    Invariants: read = written + dropped for train_valid (train + valid) and for test_sequences.csv;
    test_window interactions = test read - dropped short_student_interactions.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    read = {s: _read_three_line(src_dir / f"{prefix}_{s}{fold}.csv", num_c) for s in ("train", "valid", "test")}
    summary = {"source": {}, "dropped": {}, "written": {}}
    kept = {}
    for s, d in read.items():
        keep = d["lengths"] >= min_seq_len
        step_keep = np.repeat(keep, d["lengths"])
        kept[s] = {"uid": d["uid"][keep], "lengths": d["lengths"][keep],
                   "concepts": d["concepts"][step_keep], "responses": d["responses"][step_keep]}
        summary["source"][s] = {"file": f"{prefix}_{s}{fold}.csv", "students": int(len(keep)),
                                "interactions": int(d["lengths"].sum())}
    train_folds = 1 + np.arange(len(kept["train"]["uid"])) % 4
    tv = {k: np.concatenate([kept["valid"][k], kept["train"][k]]) for k in kept["train"]}
    tv_fold = np.concatenate([np.zeros(len(kept["valid"]["uid"]), dtype=np.int64), train_folds])
    header = list(REQUIRED_COLUMNS)
    for s in ("train", "valid", "test"):
        _, _, length = split_windows(kept[s]["lengths"], maxlen, min_seq_len)
        short = int(summary["source"][s]["interactions"] - kept[s]["lengths"].sum())
        remainder = int(kept[s]["lengths"].sum() - length.sum())
        summary["dropped"][s] = {"students": int(summary["source"][s]["students"] - len(kept[s]["uid"])),
                                 "interactions": short + remainder, "short_student_interactions": short,
                                 "remainder_interactions": remainder}
    outputs = [("train_valid_sequences.csv", tv, tv_fold, split_windows(tv["lengths"], maxlen, min_seq_len), False),
               ("test_sequences.csv", kept["test"], np.full(len(kept["test"]["uid"]), -1),
                split_windows(kept["test"]["lengths"], maxlen, min_seq_len), True),
               ("test_window_sequences.csv", kept["test"], np.full(len(kept["test"]["uid"]), -1),
                sliding_windows(kept["test"]["lengths"], maxlen), True)]
    for fname, d, folds, (student, start, length), is_test in outputs:
        offsets = np.cumsum(d["lengths"]) - d["lengths"]
        lists = [gather_windows(d[k], offsets, student, start, length, maxlen) for k in ("concepts", "responses")]
        sm = window_selectmasks(start, length, maxlen, sliding=fname == "test_window_sequences.csv")
        lists.append(sm)
        if is_test:
            lists.append(gather_windows(np.arange(int(d["lengths"].sum())), offsets, student, start, length, maxlen))
        write_sequence_csv(out_dir / fname, header + (["cidxs"] if is_test else []), folds[student],
                           d["uid"][student], lists)
        summary["written"][fname] = {"rows": int(len(student)), "students": int(len(np.unique(student))),
                                     "interactions": int((sm == 1).sum())}
    return summary


def window_selectmasks(start: np.ndarray, length: np.ndarray, maxlen: int, sliding: bool) -> np.ndarray:
    """pyKT selectmasks: 1 at real steps, -1 padding; in sliding windows after a history's first window
    (start > 0) only the last position is 1 (the one new step it scores), all others -1."""
    pos = np.arange(maxlen)
    sm = np.where(pos < length[:, None], 1, -1)
    if sliding:
        later = start > 0
        sm[later] = np.where(pos == maxlen - 1, 1, -1)
    return sm


# ----------------------------------------------------------------------------------------------- registry

_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def imported_entry(dpath: str, num_c: int, maxlen: int, min_seq_len: int) -> dict:
    """The data_config.json entry of a folder import_three_line wrote (pyKT keys; folds 0..4 as it assigns them)."""
    return {"dpath": dpath, "num_q": 0, "num_c": int(num_c), "input_type": ["concepts"], "max_concepts": 1,
            "min_seq_len": int(min_seq_len), "maxlen": int(maxlen), "folds": [0, 1, 2, 3, 4],
            "train_valid_file": "train_valid_sequences.csv", "test_file": "test_sequences.csv",
            "test_window_file": "test_window_sequences.csv"}


def check_new_dataset(name: str, entry: dict, path: Path | None = None) -> dict:
    """Refuse a name that is malformed or registered with another entry; returns the registry as read (the
    name is in it when the same entry is already there)."""
    path = data_config_path(path)
    if not _DATASET_NAME.fullmatch(name):
        raise ConfigError(f"dataset name {name!r} is not allowed; use letters, digits, '_', '-' and '.' "
                          "(starting with a letter or digit)")
    config = load_data_config(path)
    if name in config and config[name] != entry:
        raise ConfigError(f"dataset {name!r} is already in {path} with another entry; choose another name "
                          "or remove that entry first")
    return config


def register_dataset(name: str, entry: dict, path: Path | None = None) -> bool:
    """Add `name: entry` to the registry (locked against concurrent registrations, written atomically, other
    entries kept). Returns False if the same entry was already there."""
    path = data_config_path(path)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # read-modify-write: a concurrent registration would be lost
        config = check_new_dataset(name, entry, path)
        if name in config:
            return False
        config[name] = entry
        write_bytes_atomic(path, format_registry(config).encode())
        return True


def format_registry(config: dict) -> str:
    """data_config.json text in the file's own style: one key per line, lists on one line."""
    def dump(value) -> str:
        return json.dumps(value, ensure_ascii=False)

    entries = (f"  {dump(name)}: {{\n" + ",\n".join(f"    {dump(k)}: {dump(v)}" for k, v in e.items()) + "\n  }"
               for name, e in config.items())
    return "{\n" + ",\n".join(entries) + "\n}\n"
