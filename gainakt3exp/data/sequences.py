"""Data sets: locating a registered set (registry.py), pyKT sequence readers and their cache, batches.

Masks are bool tensors, True = a real interaction. For a window of width seq_len the model sees
L = seq_len - 1 steps: inputs are steps 0..L-1, targets steps 1..L (the next-step shift).

pyKT layout (what `load_split` reads; layout.py and synthetic.py write it): CSV files with columns
fold,uid,concepts,responses,selectmasks (test files add cidxs); every list column holds exactly maxlen
comma-separated values, -1 padded at the end. A history longer than maxlen spans several rows with one uid.
Parsed files are cached as .npz under $GAKT_CACHE_DIR (default ~/.cache/gainakt3exp), keyed by the sha256 of the
file bytes, never next to the data (which may be read-only).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from gainakt3exp.data.registry import dataset_files, dataset_root, is_question_level, lookup
from gainakt3exp.errors import ConfigError, DataError
from gainakt3exp.files import write_bytes_atomic

REQUIRED_COLUMNS = ("fold", "uid", "concepts", "responses", "selectmasks")
#: The input response of a step whose answer continues at the next step (another concept of the same question):
#: the model sees that the step happened, not how it was answered, until the answer's last concept.
HIDDEN = 2
QUESTION_COLUMNS = ("questions", "is_repeat")  # question-level data sets (pyKT input_type "questions")
SPLITS = ("train", "valid", "test", "test_window")
_CACHE_VERSION = "v1"


@dataclass
class Batch:
    """One batch of windows, trimmed to its longest window. All tensors are (B, L), L <= seq_len - 1."""

    c: torch.Tensor  # current concept c_t, long; padding replaced by 0
    r: torch.Tensor  # current response r_t, long; padding replaced by 0; HIDDEN where step t+1 is another concept
    #                  of the same answer (question-level data), so no prediction sees its own answer's response
    q: torch.Tensor  # query concept c_{t+1}, long; padding replaced by 0
    y: torch.Tensor  # label r_{t+1}, float; padding 0
    mask: torch.Tensor  # mu_t = (c_t != -1) & (c_{t+1} != -1), bool
    score: torch.Tensor  # positions that count in AUC/accuracy: mask & selectmask_{t+1} (window test), bool
    rows: torch.Tensor  # (B,) long, row index of each window in its Sequences
    truth: Optional[torch.Tensor] = None  # true mastery of q before answering (synthetic data only), float, NaN = none
    question: Optional[torch.Tensor] = None  # question of step t, long, padding 0 (question-level data only)
    next_question: Optional[torch.Tensor] = None  # question of step t+1, long, padding 0 (question-level data only)


# ----------------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class DatasetSpec:
    """One data set of the registry, located on disk: root = data_root / dpath (absolute)."""

    name: str
    root: Path
    num_c: int
    maxlen: int
    folds: tuple
    train_valid_file: str
    test_file: str
    test_window_file: str
    truth_file: str | None
    num_q: int = 0  # question ids 0..num_q-1 (question-level data, pyKT input_type "questions"); 0 = concepts only
    origin: str = ""  # the registry file that defines the set
    entry: dict = field(default_factory=dict, compare=False)  # its registry entry, as written there


def truth_file_name(truth_file: str, sequence_file: str, train_valid_file: str) -> str:
    """Name of the true-mastery file whose rows match `sequence_file` row for row.

    train_valid_sequences.csv -> truth_file itself (as named in data_config); any other `<x>_sequences.csv`
    -> `<x>_<truth_file>` (test_sequences.csv -> test_true_mastery_sequences.csv).
    """
    if sequence_file == train_valid_file:
        return truth_file
    return f"{sequence_file.removesuffix('.csv').removesuffix('_sequences')}_{truth_file}"


def dataset_spec(dataset: str, data_root: str | Path) -> DatasetSpec:
    """Look `dataset` up in the registry and check its folder and files exist: root = data_root / dpath
    (data_root cwd-relative; an absolute dpath ignores data_root)."""
    known = lookup(dataset)
    entry = known.entry
    root = dataset_root(entry, data_root)
    if "generate" in entry:  # built-in synthetic sets name the command that writes their files
        fix = f"generate it with `{entry['generate'].format(root=root)}`"
    elif known.kind == "user":
        fix = (f"its entry in {known.origin} points there; import it again, or register it again where its files "
               f"are now (see gakt-data list)")
    else:
        fix = (f"set data_root to the folder that holds {entry['dpath']}/ "
               f"(e.g. ../shared/data for assist2015)")
    if not root.is_dir():
        raise DataError(f"data set folder {root} (dataset {dataset!r}, data_root {str(data_root)!r}) "
                        f"does not exist; {fix}")
    spec = DatasetSpec(name=dataset, root=root.resolve(), num_c=int(entry["num_c"]), maxlen=int(entry["maxlen"]),
                       folds=tuple(entry["folds"]), train_valid_file=entry["train_valid_file"],
                       test_file=entry["test_file"], test_window_file=entry["test_window_file"],
                       truth_file=entry.get("truth_file"),
                       num_q=int(entry["num_q"]) if is_question_level(entry) else 0,
                       origin=str(known.origin), entry=dict(entry))
    for name in dataset_files(entry):
        if not (spec.root / name).is_file():
            raise DataError(f"data file {spec.root / name} (dataset {dataset!r}) is missing; {fix}")
    return spec


def file_hashes(spec: DatasetSpec) -> dict[str, str]:
    """File name -> sha256 hex of every file of the data set that exists (sequence files and truth files)."""
    names = [spec.train_valid_file, spec.test_file, spec.test_window_file]
    if spec.truth_file:
        names += [truth_file_name(spec.truth_file, n, spec.train_valid_file) for n in names]
    return {n: _sha256((spec.root / n).read_bytes()) for n in names if (spec.root / n).is_file()}


def dataset_record(spec: DatasetSpec, hashes: dict | None = None) -> dict:
    """What a run records of its data set (config.json "dataset"): the entry as registered, the file that defines
    it, the folder it resolved to and the sha256 of every file (`hashes` if already computed)."""
    return {"name": spec.name, "origin": spec.origin, "root": str(spec.root), "entry": spec.entry,
            "file_hashes": file_hashes(spec) if hashes is None else hashes}


# ----------------------------------------------------------------------------------------------- reading

@dataclass
class Sequences:
    """Rows of one pyKT sequence file (N windows of width W). Valid steps are a prefix of each row."""

    concepts: np.ndarray  # (N, W) int64, -1 padded
    responses: np.ndarray  # (N, W) int64, -1 padded
    selectmasks: np.ndarray  # (N, W) bool, True where the file's selectmask == 1
    uids: np.ndarray  # (N,) int64
    lengths: np.ndarray  # (N,) int64, valid steps per row
    truth: Optional[np.ndarray]  # (N, W) float32 true mastery of the practised skill before answering, NaN padded
    source: str  # path of the sequence file
    file_hash: str  # sha256 hex of its bytes
    questions: Optional[np.ndarray] = None  # (N, W) int64 question ids, -1 padded (question-level data only)
    is_repeat: Optional[np.ndarray] = None  # (N, W) bool: the step repeats the previous step's answer (another
    #                                         concept of the same multi-concept question, same response)
    qidxs: Optional[np.ndarray] = None  # (N, W) int64 answer index of each step (pyKT's question files), -1 padded

    def __len__(self) -> int:
        return len(self.lengths)


def cache_dir() -> Path:
    """Folder of parsed-file caches: $GAKT_CACHE_DIR if set, else ~/.cache/gainakt3exp."""
    env = os.environ.get("GAKT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gainakt3exp"


def read_sequences(path, num_c: int, width: int, folds: Iterable[int] | None = None,
                   truth_path=None, *, dataset: str | None = None, num_q: int = 0) -> Sequences:
    """Parse (or load from cache) a pyKT sequence file; keep rows whose fold is in `folds` (None = all rows).
    num_q > 0: a question-level file, whose `questions` and `is_repeat` columns are read and checked too.

    Raises DataError naming the file, its 1-based line, what is wrong and what is allowed.
    """
    arrays, source, file_hash = _load_arrays(path, num_c, width, truth_path, dataset, num_q)
    keep = None if folds is None else np.isin(arrays["fold"], np.asarray(list(folds), dtype=np.int64))
    return _to_sequences(arrays, keep, source, file_hash)


def load_split(spec: DatasetSpec, split: str, fold: int, seq_len: int) -> Sequences:
    """Rows of one split: train = train_valid rows with fold != `fold`, valid = fold == `fold`,
    test = test_file, test_window = test_window_file.

    Scoring: in train/valid/test every valid step scores (selectmasks = valid steps); in test_window only the
    positions its selectmasks mark 1 score (pyKT window evaluation). Truth (true mastery) is attached when the
    data set names a truth file and the matching file exists.
    """
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is unknown; use one of {', '.join(SPLITS)}")
    name = {"train": spec.train_valid_file, "valid": spec.train_valid_file,
            "test": spec.test_file, "test_window": spec.test_window_file}[split]
    if seq_len != spec.maxlen:
        raise ConfigError(f"seq_len {seq_len} does not match the width {spec.maxlen} of {spec.root / name}; "
                          f"set seq_len {spec.maxlen}")
    if fold not in spec.folds:
        raise ConfigError(f"fold {fold} is not a fold of dataset {spec.name!r}; use one of "
                          f"{', '.join(map(str, spec.folds))}")
    truth_path = None
    if spec.truth_file:
        candidate = spec.root / truth_file_name(spec.truth_file, name, spec.train_valid_file)
        truth_path = candidate if candidate.is_file() else None
    arrays, source, file_hash = _load_arrays(spec.root / name, spec.num_c, spec.maxlen, truth_path, spec.name,
                                             spec.num_q)
    keep = {"train": arrays["fold"] != fold, "valid": arrays["fold"] == fold}.get(split)
    seqs = _to_sequences(arrays, keep, source, file_hash)
    if split != "test_window":
        seqs.selectmasks = seqs.concepts != -1
    return seqs


QUESTION_SPLITS = {"question": False, "question_window": True}  # pyKT's test_question(_window)_sequences.csv


def load_question_split(spec: DatasetSpec, split: str) -> Sequences:
    """The rows of pyKT's question-level test file (split "question": test_question_sequences.csv, or
    "question_window": test_question_window_sequences.csv) of a question-level data set, built from its
    test_original_file (test.csv) exactly as pyKT's generate_question_sequences builds the files (layout.
    question_windows; the importer writes them from the same rows, byte for byte as pyKT), so they need not be on
    disk. Each row predicts the concepts of one answer (selectmask 1) from a history without that answer; qidxs
    says which answer each step belongs to (late fusion)."""
    from gainakt3exp.data.layout import question_windows

    if split not in QUESTION_SPLITS:
        raise ConfigError(f"question split {split!r} is unknown; use one of {', '.join(QUESTION_SPLITS)}")
    if not spec.num_q:
        raise ConfigError(f"data set {spec.name!r} has no question ids (input_type {spec.entry.get('input_type')}); "
                          "pyKT's question-level evaluation needs a question-level data set")
    name = spec.entry.get("test_original_file", "test.csv")
    path = spec.root / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"data file {path} (dataset {spec.name!r}) is missing; the question-level evaluation builds "
                        "pyKT's question rows from it: re-import data.txt with gakt-data import-pykt") from None
    header, rows, lines = _read_csv(data, str(path), ("uid",) + ("concepts", "responses") + QUESTION_COLUMNS,
                                    question_level=True)
    flat, lengths = {}, None
    for c in ("concepts", "responses") + QUESTION_COLUMNS:
        flat[c], counts = parse_lists([row[header.index(c)] for row in rows], lines, str(path), c, np.int64)
        if lengths is not None and first_bad_row(counts != lengths) is not None:
            i = first_bad_row(counts != lengths)
            raise DataError(f"{path} line {lines[i]}: column {c} has {counts[i]} values but concepts has "
                            f"{lengths[i]}; every list of a student has one value per step")
        lengths = counts
    uid, _ = parse_lists([row[header.index("uid")] for row in rows], lines, str(path), "uid", np.int64)
    test = {"uid": uid, "lengths": lengths, **flat}
    made = question_windows(test, spec.maxlen, int(spec.entry.get("min_seq_len", 3)), QUESTION_SPLITS[split])
    idx = made["index"]
    pad = idx < 0

    def column(values: np.ndarray) -> np.ndarray:
        return np.where(pad, -1, values[np.where(pad, 0, idx)])

    concepts = column(flat["concepts"])
    bad = (concepts >= spec.num_c) | (column(flat["questions"]) >= spec.num_q)
    i = first_bad_row(bad)
    if i is not None:
        raise DataError(f"{path}: a concept id >= num_c {spec.num_c} or question id >= num_q {spec.num_q} in the "
                        f"rows of student {int(uid[made['owner'][i]])}; the file does not belong to this entry")
    sm = made["selectmasks"] == 1
    qidxs = column(made["qidxs"])
    # A step repeats the answer of the step before it in *this row* only when both belong to one answer: a row
    # that predicts a later concept of an answer puts it right after the previous answer's last step, and that
    # answer may be to the same question (answered twice in a row), whose response the step must still see.
    repeat = np.zeros_like(pad)
    repeat[:, 1:] = (qidxs[:, 1:] == qidxs[:, :-1]) & ~pad[:, 1:]
    return Sequences(concepts=concepts, responses=column(flat["responses"]), selectmasks=sm,
                     uids=uid[made["owner"]], lengths=(~pad).sum(axis=1), truth=None, source=str(path),
                     file_hash=_sha256(data), questions=column(flat["questions"]), is_repeat=repeat, qidxs=qidxs)


def _to_sequences(arrays: dict, keep: np.ndarray | None, source: str, file_hash: str) -> Sequences:
    sel = slice(None) if keep is None else keep
    truth = arrays.get("truth")
    return Sequences(concepts=arrays["concepts"][sel].astype(np.int64),
                     responses=arrays["responses"][sel].astype(np.int64),
                     selectmasks=arrays["selectmasks"][sel] == 1,
                     uids=arrays["uid"][sel].astype(np.int64), lengths=arrays["lengths"][sel].astype(np.int64),
                     truth=None if truth is None else truth[sel].astype(np.float32),
                     source=source, file_hash=file_hash,
                     questions=arrays["questions"][sel].astype(np.int64) if "questions" in arrays else None,
                     is_repeat=arrays["is_repeat"][sel] == 1 if "is_repeat" in arrays else None)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _load_arrays(path, num_c: int, width: int, truth_path, dataset: str | None,
                 num_q: int = 0) -> tuple[dict, str, str]:
    """All rows of a sequence file (+ truth) as arrays, through the .npz cache keyed by the file hashes."""
    path = Path(path)
    if width < 2:
        raise ConfigError(f"width (seq_len) {width} is too small; a window needs at least 2 steps")
    try:
        data = path.read_bytes()
        truth_data = Path(truth_path).read_bytes() if truth_path is not None else b""
    except FileNotFoundError as e:
        raise DataError(f"data file {e.filename} does not exist; check data_root and the dataset name") from None
    file_hash = _sha256(data)
    questions = f"|q{num_q}" if num_q else ""  # concept-level files keep their cache key
    key = _sha256(f"{_CACHE_VERSION}|{file_hash}|{_sha256(truth_data)}|{width}|{num_c}{questions}".encode())
    cached = cache_dir() / f"{key}.npz"
    arrays = _read_cache(cached)
    if arrays is None:
        arrays = _parse_sequence_file(data, str(path), num_c, width, dataset, num_q)
        if truth_path is not None:
            arrays["truth"] = _parse_truth_file(truth_data, str(truth_path), arrays, width)
        _write_cache(cached, arrays)
    return arrays, str(path), file_hash


def _read_cache(path: Path) -> dict | None:
    """Cached arrays, or None when absent or unreadable (a corrupt entry is then rewritten)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
    needed = {"fold", "uid", "concepts", "responses", "selectmasks", "lengths"}  # (+ questions, is_repeat)
    return arrays if needed <= arrays.keys() else None


def _write_cache(path: Path, arrays: dict) -> None:
    try:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_bytes_atomic(path, buffer.getvalue())
    except OSError as e:  # a cache is an optimisation: warn, keep the parsed arrays
        warnings.warn(f"cannot write the data cache {path} ({e}); set GAKT_CACHE_DIR to a writable folder")


def _read_csv(data: bytes, name: str, required: tuple,
              question_level: bool = False) -> tuple[list[str], list[list[str]], np.ndarray]:
    """Header, data rows and their 1-based file line numbers; the header must hold the `required` columns."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: not UTF-8 text (byte {e.start}); expected a pyKT CSV file") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise DataError(f"{name} line 1: the file is empty; expected a header "
                        f"{','.join(required)} and one row per window")
    missing = [c for c in required if c not in header]
    if missing:
        why = (" (the data set is question-level: its entry's input_type holds questions, so its sequence files "
               "need the questions and is_repeat columns pyKT's split writes; re-import data.txt with gakt-data "
               "import-pykt, or register the set without questions)") if question_level and \
            set(missing) & set(QUESTION_COLUMNS) else ""
        raise DataError(f"{name} line 1: missing columns {missing}; expected {list(required)} "
                        f"(extra columns such as cidxs are fine), found {header}{why}")
    records = [(reader.line_num, row) for row in reader if row]  # blank lines carry no row
    if not records:
        raise DataError(f"{name}: the file has a header but no rows; expected one row per window")
    lines = np.array([ln for ln, _ in records], dtype=np.int64)
    rows = [row for _, row in records]
    bad = [i for i, row in enumerate(rows) if len(row) != len(header)]
    if bad:
        i = bad[0]
        raise DataError(f"{name} line {lines[i]}: the row has {len(rows[i])} fields, the header has "
                        f"{len(header)} ({','.join(header)}); every row needs one value per column")
    return header, rows, lines


def parse_lists(strings: list[str], lines: np.ndarray, name: str, column: str, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Comma-separated numbers of every row at once -> (flat values, count per row)."""
    counts = np.fromiter((s.count(",") + 1 for s in strings), dtype=np.int64, count=len(strings))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            flat = np.fromstring(",".join(strings), sep=",", dtype=dtype)
        except (ValueError, DeprecationWarning):
            flat = None
    if flat is not None and flat.size == counts.sum():
        return flat, counts
    for i, s in enumerate(strings):  # error path only: find the first row that does not parse
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                ok = np.fromstring(s, sep=",", dtype=dtype).size == counts[i]
            except (ValueError, DeprecationWarning):
                ok = False
        if not ok:
            kind = "integers" if np.issubdtype(dtype, np.integer) else "numbers"
            raise DataError(f"{name} line {lines[i]}: column {column} holds a non-numeric or empty value "
                            f"({s[:60]!r}{'...' if len(s) > 60 else ''}); allowed: comma-separated {kind}")
    raise AssertionError("unreachable: the joined column failed to parse but every row parses")


def first_bad_row(bad: np.ndarray) -> int | None:
    rows = bad.reshape(len(bad), -1).any(axis=1)
    return int(np.argmax(rows)) if rows.any() else None


def _parse_sequence_file(data: bytes, name: str, num_c: int, width: int, dataset: str | None,
                         num_q: int = 0) -> dict:
    required = REQUIRED_COLUMNS + (QUESTION_COLUMNS if num_q else ())
    header, rows, lines = _read_csv(data, name, required, question_level=bool(num_q))
    col = {c: [row[header.index(c)] for row in rows] for c in required}
    out = {}
    for c in ("fold", "uid"):
        values, counts = parse_lists(col[c], lines, name, c, np.int64)
        i = first_bad_row(counts != 1)
        if i is not None:
            raise DataError(f"{name} line {lines[i]}: column {c} must hold one integer, found {col[c][i]!r}")
        out[c] = values
    counts = {}
    lists = ("concepts", "responses", "selectmasks") + (QUESTION_COLUMNS if num_q else ())
    for c in lists:
        values, counts[c] = parse_lists(col[c], lines, name, c, np.int64)
        out[c] = values
    wrong = np.zeros(len(rows), dtype=bool)
    for c in lists:
        wrong |= counts[c] != width
    i = first_bad_row(wrong)
    if i is not None:
        found = ", ".join(f"{c} {counts[c][i]}" for c in lists[1:])
        raise DataError(f"{name} line {lines[i]}: concepts has {counts['concepts'][i]} values, {found}; each must "
                        f"have exactly {width} (the maxlen/seq_len of the data set, -1 padded)")
    n = len(rows)
    c, r, sm = (out[k].reshape(n, width) for k in ("concepts", "responses", "selectmasks"))
    real = c != -1
    where = f" of dataset {dataset!r}" if dataset else ""
    checks = [
        ((c < -1) | (c >= num_c), lambda i, j: f"concept id {c[i, j]} at step {j}; allowed -1 (padding) or "
                                                f"0..{num_c - 1} (num_c = {num_c}{where})"),
        (~real[:, :-1] & real[:, 1:], lambda i, j: f"padding (-1) at step {j} is followed by a real step; "
                                                    f"padding must be trailing"),
        (real & (r != 0) & (r != 1), lambda i, j: f"response {r[i, j]} at real step {j}; allowed 0 or 1"),
        (~real & (r != -1), lambda i, j: f"response {r[i, j]} at padding step {j}; padding must be -1"),
        ((sm != -1) & (sm != 0) & (sm != 1), lambda i, j: f"selectmask {sm[i, j]} at step {j}; allowed -1, 0, 1"),
        (~real & (sm == 1), lambda i, j: f"selectmask 1 at padding step {j}; padding must be -1 or 0"),
    ]
    if num_q:
        qs, rep = out["questions"].reshape(n, width), out["is_repeat"].reshape(n, width)
        same = np.zeros_like(real)
        same[:, 1:] = (qs[:, 1:] == qs[:, :-1]) & (r[:, 1:] == r[:, :-1])
        checks += [
            (real & ((qs < 0) | (qs >= num_q)), lambda i, j: f"question id {qs[i, j]} at step {j}; allowed "
                                                             f"0..{num_q - 1} (num_q = {num_q}{where})"),
            (~real & (qs != -1), lambda i, j: f"question id {qs[i, j]} at padding step {j}; padding must be -1"),
            (real & (rep != 0) & (rep != 1), lambda i, j: f"is_repeat {rep[i, j]} at real step {j}; allowed 0 "
                                                          "(a new answer) or 1 (another concept of the answer before)"),
            (real & (rep == 1) & ~same & (np.arange(width) > 0), lambda i, j: (
                f"is_repeat 1 at step {j} but its question or response differs from step {j - 1}'s; a repeated "
                "step is another concept of the same answer (pyKT's multi-concept expansion)")),
        ]
    for bad, message in checks:
        i = first_bad_row(bad)
        if i is not None:
            j = int(np.argmax(bad[i]))
            raise DataError(f"{name} line {lines[i]}: {message(i, j)}")
    small = np.int16 if num_c < 2 ** 15 else np.int64
    arrays = {"fold": out["fold"], "uid": out["uid"], "concepts": c.astype(small), "responses": r.astype(np.int8),
              "selectmasks": sm.astype(np.int8), "lengths": real.sum(axis=1)}
    if num_q:
        arrays["questions"] = qs.astype(np.int32 if num_q < 2 ** 31 else np.int64)
        arrays["is_repeat"] = np.where(real, rep, 0).astype(np.int8)
    return arrays


def _parse_truth_file(data: bytes, name: str, arrays: dict, width: int) -> np.ndarray:
    """True mastery (fold,uid,mastery), one row per sequence row; -1 padding -> NaN."""
    header, rows, lines = _read_csv(data, name, ("fold", "uid", "mastery"))
    if len(rows) != len(arrays["uid"]):
        raise DataError(f"{name}: {len(rows)} rows but its sequence file has {len(arrays['uid'])}; "
                        f"a truth file needs one row per sequence row, in the same order (regenerate the data)")
    uid, _ = parse_lists([row[header.index("uid")] for row in rows], lines, name, "uid", np.int64)
    i = first_bad_row(uid != arrays["uid"])
    if i is not None:
        raise DataError(f"{name} line {lines[i]}: uid {uid[i]} but the sequence file has uid {arrays['uid'][i]} "
                        f"in that row; the rows must match one to one (regenerate the data)")
    m, counts = parse_lists([row[header.index("mastery")] for row in rows], lines, name, "mastery", np.float64)
    i = first_bad_row(counts != width)
    if i is not None:
        raise DataError(f"{name} line {lines[i]}: mastery has {counts[i]} values; expected {width}")
    m = m.reshape(len(rows), width)
    real = arrays["concepts"] != -1
    i = first_bad_row(real & ~((m >= 0) & (m <= 1)) | ~real & (m != -1))
    if i is not None:
        raise DataError(f"{name} line {lines[i]}: mastery must lie in [0, 1] at real steps and be -1 at padding")
    return np.where(real, m, np.nan).astype(np.float32)


# ----------------------------------------------------------------------------------------------- batches

def make_batch(seqs: Sequences, rows, device) -> Batch:
    """The Batch of `rows` (next-step shift), trimmed to L = max(lengths of rows) - 1 steps (at least 1).

    c_t = concepts[:, t], q_t = concepts[:, t+1], r_t, y_t = responses[:, t+1];
    mask mu_t = (c_t != -1) & (c_{t+1} != -1); score = mu_t & selectmask_{t+1}; truth_t = truth[:, t+1].
    Question-level data (pyKT's multi-concept expansion): a question with k concepts is k steps with one response;
    r_t is HIDDEN when step t+1 repeats step t's answer (is_repeat_{t+1} and the same question), so the prediction
    of every concept of an answer, and every mastery and gain it reads, sees none of that answer's response (no
    label leakage); the answer's last step carries its response for later answers.
    The rows' arrays travel to the device as one tensor (pinned and non-blocking on a GPU) and the fields are
    derived there.
    """
    idx = np.asarray(rows.cpu() if isinstance(rows, torch.Tensor) else rows, dtype=np.int64)
    assert idx.ndim == 1 and idx.size > 0, "make_batch needs a non-empty 1-d array of row indices"
    width = seqs.concepts.shape[1]
    L = min(max(int(seqs.lengths[idx].max()) - 1, 1), width - 1)
    questions = seqs.questions is not None
    packed = np.empty((5 if questions else 3, idx.size, L + 1), dtype=np.int64)  # (fields, B, L+1)
    packed[0] = seqs.concepts[idx, : L + 1]
    packed[1] = seqs.responses[idx, : L + 1]
    packed[2] = seqs.selectmasks[idx, : L + 1]
    if questions:
        packed[3] = seqs.questions[idx, : L + 1]
        packed[4] = seqs.is_repeat[idx, : L + 1]
    host = torch.from_numpy(packed)
    truth = None if seqs.truth is None else torch.from_numpy(np.ascontiguousarray(seqs.truth[idx, 1 : L + 1]))
    dev = torch.device(device)
    if dev.type == "cuda":  # one pinned host-to-device copy per tensor, overlapping the previous step
        host = host.pin_memory().to(dev, non_blocking=True)
        truth = None if truth is None else truth.pin_memory().to(dev, non_blocking=True)
    cc, rr, sm = host[0], host[1], host[2]
    c, q = cc[:, :L], cc[:, 1:]
    mask = (c != -1) & (q != -1)
    r = rr[:, :L].clamp(min=0)
    question = next_question = None
    if questions:
        qs, rep = host[3], host[4]
        continues = (rep[:, 1:] == 1) & (qs[:, 1:] == qs[:, :-1])  # step t+1 is step t's answer again
        r = torch.where(continues, HIDDEN, r)
        question, next_question = qs[:, :L].clamp(min=0), qs[:, 1:].clamp(min=0)
    return Batch(c=c.clamp(min=0), r=r, q=q.clamp(min=0), y=rr[:, 1:].clamp(min=0).float(),
                 mask=mask, score=mask & (sm[:, 1:] != 0), rows=torch.from_numpy(idx).to(dev), truth=truth,
                 question=question, next_question=next_question)


def question_inputs(batch: Batch) -> dict:
    """The model's question keywords for a batch: none for concept-level data (a model without questions is
    called as before), question and next_question for question-level data."""
    if batch.question is None:
        return {}
    return {"question": batch.question, "next_question": batch.next_question}


def iterate_batches(seqs: Sequences, batch_size: int, *, shuffle: bool, generator: torch.Generator | None,
                    device) -> Iterator[Batch]:
    """Batches covering every row once. Without shuffle: file order. With shuffle: rows permuted with
    torch.randperm(N, generator), stably sorted by length (similar lengths share a batch, so trimming removes
    most padding), cut into batches, and the batch order permuted with the same generator."""
    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size} must be >= 1")
    n = len(seqs)
    if not shuffle:
        order = np.arange(n)
        chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    else:  # host-side index arithmetic only (the generator is a CPU one): nothing waits on the device
        perm = torch.randperm(n, generator=generator)
        lengths = torch.from_numpy(seqs.lengths)[perm]
        order = perm[torch.sort(lengths, stable=True).indices].numpy()
        chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
    for rows in chunks:
        yield make_batch(seqs, rows, device)


def num_interactions(seqs: Sequences) -> int:
    """Real responses that are targets: the sum of mask over all rows (a prefix of length n has n-1)."""
    return int(np.clip(seqs.lengths - 1, 0, None).sum())
