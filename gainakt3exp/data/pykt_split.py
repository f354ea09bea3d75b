"""pyKT's own 6-line data.txt, split exactly as pyKT's split_datasets.main does, without pandas row loops.

    summary = import_pykt(Path("../pykt/data/assist2015/data.txt"), Path("data/a15"), name="a15")
    # what `gakt-data import-pykt --src ... --out data/a15 --name a15` runs

data.txt (what every pyKT data_preprocess.py writes): per student six lines, `<uid>,<length>` / question ids /
concept ids / responses / timestamps / usetimes, "NA" where a line is absent. The split (pyKT's
pykt/preprocess/split_datasets.py, byte for byte):
1. records whose header length is below min_seq_len are dropped (read_data);
2. concept ids and uids become 0-based in order of first appearance (id_mapping; keyid2idx.json);
3. students are shuffled as pandas' sample(frac=1, random_state=1024) does (RandomState(1024).permutation) and
   the last int(n * 0.2) are the test set (train_test_split);
4. train_valid is shuffled again the same way and cut into k folds in that order, the first n % k folds one
   student larger (KFold_split);
5. windows and files as layout.write_pykt_folder writes them (generate_sequences, generate_window_sequences,
   get_inter_qidx), plus keyid2idx.json and data_config.json.
Concept-level data only (questions NA, one concept per response, as pyKT's assist2015 and statics2011):
question-level data (question ids, `_`-joined multi-concept ids) is refused with that reason, not imported at
another level. Malformed records (a missing or extra line, a line whose length disagrees with its header,
responses other than 0/1) are refused with file and line, where pyKT's reader would misread or drop them.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from gainakt3exp.data.layout import pykt_entry, write_keyid2idx, write_pykt_config, write_pykt_folder
from gainakt3exp.data.sequences import parse_lists
from gainakt3exp.errors import DataError

LINES = ("header", "questions", "concepts", "responses", "timestamps", "usetimes")
SHUFFLE_SEED = 1024  # pyKT's train_test_split and KFold_split
TEST_RATIO = 0.2
_HEADER = re.compile(r"([^,]+),(\d+)")
_RECORD = "every record has 6 lines: <uid>,<length> / questions / concepts / responses / timestamps / usetimes, NA " \
          "where absent"


def _header(line: str) -> tuple[str, int] | None:
    """(uid, length) of a record's first line, both of pyKT's forms (`uid,len` and `(uid, ...),x,len`)."""
    if "(" in line.split(",")[0]:
        parts = line.split(",")
        return (parts[0].replace("(", ""), int(parts[2])) if len(parts) > 2 and parts[2].isdigit() else None
    match = _HEADER.fullmatch(line)
    return (match[1], int(match[2])) if match else None


def read_data_txt(path: Path) -> dict:
    """Parse and check data.txt: per record uid, length, and per line kind the raw line; refuses what pyKT's
    concept-level split cannot take, naming the line."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"pyKT data file {path} does not exist; pass the data.txt that pyKT's "
                        "data_preprocess.py wrote") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); expected pyKT's data.txt") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DataError(f"{path} line 1: the file is empty; {_RECORD}")
    n = -(-len(lines) // 6)
    slots = lines + [None] * (6 * n - len(lines))  # None: a line the last record lacks
    heads = [_header(line) for line in slots[0::6]]
    length = np.array([h[1] if h else -1 for h in heads], dtype=np.int64)
    absent = np.array([s is None or "NA" in s for s in slots]).reshape(n, 6)  # pyKT: a line holding NA is absent
    count = np.array([-1 if s is None else s.count(",") + 1 for s in slots]).reshape(n, 6)
    bad = np.zeros((n, 6), dtype=bool)
    bad[:, 0] = length < 0
    bad[:, 3] = absent[:, 3]
    for j in (1, 2, 4, 5):
        bad[:, j] = absent[:, j] != absent[0, j]
    bad[:, 1:] |= ~absent[:, 1:] & (count[:, 1:] != length[:, None])
    bad[:, 1:] |= np.array([s is None for s in slots]).reshape(n, 6)[:, 1:]
    if bad.any():
        flat = int(np.argmax(bad.reshape(-1)))
        r, j = divmod(flat, 6)
        raise DataError(f"{path} line {flat + 1}: {_problem(slots, r, j, length, absent)}; {_RECORD} (a line "
                        "missing or extra above here shifts the records)")
    if absent[0, 2]:
        raise DataError(f"{path} line 3: the records have no concept ids (NA); gainakt3exp imports data with a "
                        "concept id per response (and question ids where pyKT's data.txt has them)")
    question_level = not absent[0, 1]
    for r in range(n):
        field = slots[6 * r + 2]
        if "_" not in field:
            continue
        if not question_level:
            raise DataError(f"{path} line {6 * r + 3}: concept ids joined by '_' (several concepts per response) "
                            "but the records have no question ids (line 2 is NA); pyKT expands multi-concept "
                            "answers only for question-level data: add the question ids, or give one concept per "
                            "response")
        empty = next((part for part in field.split(",") if "" in part.split("_")), None)
        if empty is not None:
            raise DataError(f"{path} line {6 * r + 3}: concept field {empty!r} has an empty id; a multi-concept "
                            "answer lists its concept ids joined by '_', e.g. 7_9")
    return {"uid": np.array([h[0] for h in heads]), "lengths": length,
            "lines": {kind: slots[j::6] for j, kind in enumerate(LINES)},
            "present": [kind for j, kind in enumerate(LINES) if j and not absent[0, j]], "path": path,
            "question_level": question_level}


def _problem(slots: list, r: int, j: int, length: np.ndarray, absent: np.ndarray) -> str:
    line = slots[6 * r + j]
    shown = "nothing (the file ends)" if line is None else repr(line if len(line) <= 60 else line[:60] + "...")
    if j == 0:
        return f"expected a record header `<uid>,<length>`, found {shown}"
    kind = LINES[j]
    if line is None:
        return f"the last record ends before its {kind} line"
    if j == 3 and absent[r, 3]:
        return f"the {kind} line is NA or missing, found {shown}"
    if absent[r, j] != absent[0, j]:
        return (f"the {kind} line is {'NA' if absent[r, j] else 'present'} here but "
                f"{'NA' if absent[0, j] else 'present'} in the first record, found {shown}")
    return f"{kind} has {line.count(',') + 1} values but the header (line {6 * r + 1}) says {length[r]}"


def _steps(lengths: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Indices into back-to-back per-student arrays of the steps of students `order`, in that order."""
    offsets = np.cumsum(lengths) - lengths
    sizes = lengths[order]
    return np.repeat(offsets[order] - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))


def _first_appearance(values: np.ndarray) -> tuple[np.ndarray, list]:
    """0-based ids in order of first appearance (pyKT's id_mapping) and the original values in id order."""
    uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    return rank[inverse.reshape(-1)], uniq[order].tolist()


def split_folds(n: int, k: int) -> np.ndarray:
    """pyKT's KFold_split: fold of each of n (shuffled) students, in blocks, the first n % k one larger."""
    size, rest = int(n * (1 / k)), n % k
    folds = np.repeat(np.arange(k), [size + (i < rest) for i in range(k)])
    if len(folds) != n:
        raise DataError(f"pyKT's {k}-fold split does not cover {n} students (its fold sizes add up to "
                        f"{len(folds)}); pyKT itself fails on this count")
    return folds


def import_pykt(src: Path, out_dir: Path, *, name: str, min_seq_len: int = 3, maxlen: int = 200, kfold: int = 5,
                on_entry: Callable[[dict], None] | None = None) -> dict:
    """Split data.txt as pyKT's split_datasets.main(dname, fname, name, configf, min_seq_len, maxlen, kfold)
    does and write its files to out_dir (see the module doc). `on_entry(entry)` runs before anything is written.
    Returns counts: records read, dropped (shorter than min_seq_len), students per split, num_c, and per file
    written rows, students and interactions (positions with selectmask 1)."""
    rec = read_data_txt(src)
    lines, lengths = rec["lines"], rec["lengths"]
    keep = np.flatnonzero(lengths >= min_seq_len)
    kept_len = lengths[keep]
    resp_lines = [lines["responses"][i] for i in keep]
    responses, _ = parse_lists(resp_lines, 6 * keep + 4, str(rec["path"]), "responses", np.int64)
    bad = (responses != 0) & (responses != 1)
    if bad.any():
        k = int(np.repeat(6 * keep + 4, kept_len)[np.argmax(bad)])
        raise DataError(f"{rec['path']} line {k}: response {responses[np.argmax(bad)]}; allowed 0 or 1 (pyKT's "
                        "read_data would drop this student silently; fix or remove the record)")
    extra = [kind for kind in ("timestamps", "usetimes") if kind in rec["present"]]
    per_answer = {kind: np.array(",".join(lines[kind][i] for i in keep).split(",")) for kind in extra}
    if rec["question_level"]:
        step_len, flat, max_concepts = _expand_multi_concepts(lines, keep, kept_len, responses, per_answer)
        flat["questions"], question_ids = _first_appearance(flat["questions"])
    else:
        step_len, max_concepts = kept_len, 1
        flat = {"concepts": np.array(",".join(lines["concepts"][i] for i in keep).split(",")),
                "responses": responses, **per_answer}
    flat["concepts"], concept_ids = _first_appearance(flat["concepts"])
    uid, uids = _first_appearance(rec["uid"][keep])
    num_q = len(question_ids) if rec["question_level"] else 0
    entry = pykt_entry(str(Path(out_dir).resolve()), len(concept_ids), maxlen, min_seq_len, list(range(kfold)),
                       num_q=num_q, max_concepts=max_concepts)
    if on_entry is not None:
        on_entry(entry)

    n = len(keep)
    shuffled = np.random.RandomState(SHUFFLE_SEED).permutation(n)  # = DataFrame.sample(frac=1, random_state=1024)
    train_num = n - int(n * TEST_RATIO)
    train_valid = shuffled[:train_num][np.random.RandomState(SHUFFLE_SEED).permutation(train_num)]
    test = shuffled[train_num:]

    def students(order: np.ndarray) -> dict:
        steps = _steps(step_len, order)
        return {"uid": uid[order], "lengths": step_len[order], **{k: v[steps] for k, v in flat.items()}}

    written = write_pykt_folder(out_dir, students(train_valid), split_folds(train_num, kfold), students(test),
                                maxlen, min_seq_len, extra=tuple(extra))
    ids = {"questions": question_ids} if num_q else {}
    ids.update(concepts=concept_ids, uid=uids)
    write_keyid2idx(out_dir, {**{key: dict(zip(v, range(len(v)))) for key, v in ids.items()},
                              "max_concepts": max_concepts})
    write_pykt_config(out_dir, name, entry)
    return {"records": len(lengths), "dropped": {"students": len(lengths) - n,
                                                 "interactions": int(lengths.sum() - kept_len.sum())},
            "students": {"train_valid": train_num, "test": n - train_num}, "num_c": len(concept_ids),
            "num_q": num_q, "max_concepts": max_concepts,
            "expanded_steps": int(step_len.sum()) if num_q else None, "written": written}


def _expand_multi_concepts(lines: dict, keep: np.ndarray, kept_len: np.ndarray, responses: np.ndarray,
                           per_answer: dict) -> tuple[np.ndarray, dict, int]:
    """pyKT's extend_multi_concepts: an answer tagged `7_9` becomes two steps, concepts 7 then 9, with the
    answer's question, response (and times) on each, is_repeat 0 on the first and 1 on the others. Returns each
    student's step count, the per-step arrays and max_concepts (pyKT's get_max_concepts, before expansion)."""
    fields = ",".join(lines["concepts"][i] for i in keep).split(",")
    k = np.fromiter((f.count("_") + 1 for f in fields), dtype=np.int64, count=len(fields))
    answer = np.repeat(np.arange(len(fields)), k)
    is_repeat = np.ones(len(answer), dtype=np.int64)
    is_repeat[np.cumsum(k) - k] = 0
    student = np.repeat(np.arange(len(keep)), kept_len)
    questions = np.array(",".join(lines["questions"][i] for i in keep).split(","))
    flat = {"questions": questions[answer], "concepts": np.array("_".join(fields).split("_")),
            "responses": responses[answer], **{kind: v[answer] for kind, v in per_answer.items()},
            "is_repeat": is_repeat}
    return np.bincount(student[answer], minlength=len(keep)).astype(np.int64), flat, int(k.max())
