"""The 3-line layout of DKT/DKVMN/AKT/SAKT code, and the 4-line layout of AKT's `_pid` sets, imported to pyKT
layout.

    summary = import_three_line(Path("akt"), "assist2015", 1, Path("data/mine"), maxlen=200, min_seq_len=3,
                                name="mine")      # what `gakt-data import-3line` runs

Per student three lines: a header, the skill ids, the 0/1 responses. The header is the number of responses
(`61`: DKT, DKVMN, SAKT and most of AKT's data sets) or `<row>,<student id>` (AKT's assist2015 files); a count
must match both lines. Blank lines, CRLF line ends and trailing commas (DKVMN writes `1,2,3,`) are accepted;
every error names the file, its true line number and the reason.

Skill ids: if they are exactly 1..num_c (--num_c given: all within 1..num_c; not given: every id 1..max present)
they become 0..num_c-1; otherwise they are remapped 0-based in order of first appearance (train, valid, test
file order), as pyKT's id_mapping does, and num_c is the number of distinct ids. keyid2idx.json records the map.

AKT's `_pid` sets (a prefix ending in `_pid`, e.g. assist2009_pid) have four lines per student: the header, the
problem ids, the skill ids and the responses. A problem with k skills is k consecutive rows with the same problem
and response; they are collapsed into one multi-concept answer, written as pyKT writes a question-level data set
(k steps of one question, is_repeat 0 then 1; question ids 0-based by first appearance; the two question test
files), so every row and response is kept. Students with fewer than min_seq_len answers are dropped, as pyKT's
split drops records.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from gainakt3exp.data.layout import pykt_entry, split_windows, write_keyid2idx, write_pykt_config, write_pykt_folder
from gainakt3exp.data.sequences import first_bad_row, parse_lists
from gainakt3exp.errors import DataError

SPLITS = ("train", "valid", "test")


def _student_lines(path: Path, k: int, layout: str) -> tuple[str, list[str], np.ndarray]:
    """The non-blank lines of a k-line file (CRLF and trailing commas tolerated) with their true line numbers;
    refuses a missing file, non-UTF-8 text, an empty file and an incomplete last student, naming the layout."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{k}-line file {path} does not exist; pass the folder and prefix of "
                        f"<prefix>_train<k>.csv / _valid<k>.csv / _test<k>.csv (or _test.csv)") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{Path(path).name}: not UTF-8 text (byte {e.start}); expected a {k}-line file") from None
    name = Path(path).name
    numbered = [(i + 1, line.strip().rstrip(",").rstrip()) for i, line in enumerate(text.splitlines())]
    numbered = [(n, line) for n, line in numbered if line]  # blank lines carry nothing
    if not numbered:
        raise DataError(f"{name} line 1: the file is empty; expected {k} lines per student")
    lines = [line for _, line in numbered]
    no = np.array([n for n, _ in numbered], dtype=np.int64)
    if len(lines) % k:
        raise DataError(f"{name} line {no[len(lines) - len(lines) % k]}: the last student is incomplete "
                        f"({len(lines)} non-blank lines); each student needs {layout}")
    return name, lines, no


def read_three_line(path: Path) -> dict:
    """One 3-line file -> uid (None for count headers), lengths, skills (raw ids), responses, and the line
    number of each student's header and skill line (for later messages)."""
    name, lines, no = _student_lines(path, 3, "a header (a response count, or <row>,<student id>), a line of skill "
                                              "ids and a line of 0/1 responses")
    return _parse_students(name, lines, no)


def _parse_students(name: str, lines: list[str], no: np.ndarray) -> dict:
    """Header, skill ids and responses of each student (three lines each), checked (read_three_line)."""
    head_no, skill_no, resp_no = no[0::3], no[1::3], no[2::3]
    head, hc = parse_lists(lines[0::3], head_no, name, "header", np.int64)
    form = int(hc[0])
    i = first_bad_row((hc != form) | (hc > 2))
    if form > 2 or i is not None:
        i = 0 if form > 2 else i
        raise DataError(f"{name} line {head_no[i]}: expected a header like the file's first (line {head_no[0]}: "
                        f"{'a response count, e.g. 61' if form == 1 else '<row>,<student id>'}), found "
                        f"{lines[3 * i]!r}; a line is missing or extra above, or the header is malformed")
    skills, sc = parse_lists(lines[1::3], skill_no, name, "skills", np.int64)
    resp, rc = parse_lists(lines[2::3], resp_no, name, "responses", np.int64)
    if form == 1:
        i = first_bad_row((head != sc) | (head != rc))
        if i is not None:
            raise DataError(f"{name} line {head_no[i]}: the header says {head[i]} responses but line "
                            f"{skill_no[i]} has {sc[i]} skill ids and line {resp_no[i]} {rc[i]} responses; "
                            "they must agree")
    i = first_bad_row(sc != rc)
    if i is not None:
        raise DataError(f"{name} line {resp_no[i]}: {rc[i]} responses for {sc[i]} skills (line {skill_no[i]}); "
                        f"each student needs one response per skill")
    bad = (resp != 0) & (resp != 1)
    if bad.any():
        k = int(np.argmax(bad))
        raise DataError(f"{name} line {np.repeat(resp_no, rc)[k]}: response {resp[k]}; allowed 0 or 1")
    return {"uid": head.reshape(-1, 2)[:, 1] if form == 2 else None, "lengths": sc, "skills": skills,
            "responses": resp, "skill_lines": skill_no, "file": name}


def map_skill_ids(read: dict, kept: dict, num_c: int | None) -> tuple[dict, int, str]:
    """Per split the 0-based concept ids of the kept steps, num_c, and how ids were mapped (see module doc)."""
    every = np.concatenate([read[s]["skills"] for s in SPLITS])
    distinct = np.unique(every)
    if num_c is not None:
        dense = bool(distinct.min() >= 1 and distinct.max() <= num_c)
    else:
        dense = bool(distinct.min() == 1 and distinct.max() == len(distinct))
    if dense:
        n = int(num_c if num_c is not None else distinct.max())
        concepts = {s: read[s]["skills"][kept[s]] - 1 for s in SPLITS}
        mapping = {str(int(k)): int(k) - 1 for k in distinct}
        return {"concepts": concepts, "mapping": mapping}, n, f"skill ids 1..{n} -> 0..{n - 1}"
    ids = np.concatenate([read[s]["skills"][kept[s]] for s in SPLITS])
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    new = rank[inverse]
    if num_c is not None and len(uniq) != num_c:
        outside = every[(every < 1) | (every > num_c)][0]
        where = next(s for s in SPLITS if ((read[s]["skills"] < 1) | (read[s]["skills"] > num_c)).any())
        k = int(np.argmax((read[where]["skills"] < 1) | (read[where]["skills"] > num_c)))
        line = np.repeat(read[where]["skill_lines"], read[where]["lengths"])[k]
        raise DataError(f"{read[where]['file']} line {line}: skill id {outside} is outside 1..{num_c} "
                        f"(--num_c {num_c}), so ids are remapped 0-based in order of first appearance, as pyKT "
                        f"does, which gives {len(uniq)} skills; pass --num_c {len(uniq)} or omit --num_c")
    cuts = np.cumsum([int(kept[s].sum()) for s in SPLITS])[:-1]
    concepts = dict(zip(SPLITS, np.split(new, cuts)))
    mapping = {str(int(uniq[j])): int(rank[j]) for j in np.argsort(rank)}
    return {"concepts": concepts, "mapping": mapping}, len(uniq), \
        f"{len(uniq)} distinct skill ids remapped 0-based in order of first appearance (keyid2idx.json)"


def _files(src_dir: Path, prefix: str, fold: int) -> dict[str, Path]:
    files = {s: src_dir / f"{prefix}_{s}{fold}.csv" for s in SPLITS}
    if not files["test"].is_file() and (src_dir / f"{prefix}_test.csv").is_file():
        files["test"] = src_dir / f"{prefix}_test.csv"  # DKVMN: five train/valid folds, one test file
    return files


def import_three_line(src_dir: Path, prefix: str, fold: int, out_dir: Path, *, maxlen: int, min_seq_len: int,
                      name: str, num_c: int | None = None, on_entry: Callable[[dict], None] | None = None) -> dict:
    """Convert the 3-line files of fold k into pyKT layout in out_dir.

    Reads <prefix>_train<k>.csv, _valid<k>.csv, _test<k>.csv (or _test.csv) from src_dir (k = `fold`, 1-based
    as in the AKT files). train_valid_sequences.csv: valid<k> students get fold 0, train<k> students folds 1..4
    round-robin in file order, so a run with fold 0 trains on train<k> and validates on valid<k>. test files
    (fold -1, plus pyKT's cidxs) hold the test students. Students with fewer than min_seq_len steps are dropped;
    histories are windowed as pyKT does. Count headers carry no student id: students are numbered 0, 1, ... over
    the files in train, valid, test order (after the largest id of files that have ids). Also writes train_valid.csv,
    test.csv, keyid2idx.json and data_config.json ({name: pyKT entry}, dpath = out_dir absolute).
    `on_entry(entry)` is called before anything is written (the CLI refuses a taken name there).

    Returns "source" per file read (students, interactions); "dropped" per file read (students shorter than
    min_seq_len; interactions = theirs + window remainders shorter than min_seq_len, the latter kept in the window
    file); "written" per output file (rows, students, interactions = positions with selectmask 1); num_c, ids.
    Invariants: read = written + dropped for train_valid (train + valid) and for test_sequences.csv.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    files = _files(src_dir, prefix, fold)
    four = is_four_line(prefix)
    read = {s: (read_four_line if four else read_three_line)(files[s]) for s in SPLITS}
    with_ids = [read[s]["uid"] for s in SPLITS if read[s]["uid"] is not None]
    next_uid = int(max(u.max() for u in with_ids)) + 1 if with_ids else 0
    for s in SPLITS:
        if read[s]["uid"] is None:
            read[s]["uid"] = next_uid + np.arange(len(read[s]["lengths"]))
            next_uid += len(read[s]["lengths"])
    if four:  # pyKT counts a student's answers, not the rows of multi-skill answers
        answers = {s: np.add.reduceat(answer_starts(read[s]["problems"], read[s]["skills"], read[s]["responses"],
                                                    read[s]["lengths"]), np.cumsum(read[s]["lengths"])
                                      - read[s]["lengths"]) for s in SPLITS}
        keep = {s: answers[s] >= min_seq_len for s in SPLITS}
    else:
        keep = {s: read[s]["lengths"] >= min_seq_len for s in SPLITS}
    step_keep = {s: np.repeat(keep[s], read[s]["lengths"]) for s in SPLITS}
    ids, num_c, how = map_skill_ids(read, step_keep, num_c)
    questions, question_ids, num_q, max_concepts = ({s: {} for s in SPLITS}, {}, 0, 1)
    if four:
        questions, question_ids, num_q, max_concepts = _question_columns(read, step_keep)
    entry = pykt_entry(str(out_dir.resolve()), num_c, maxlen, min_seq_len, [0, 1, 2, 3, 4], num_q=num_q,
                       max_concepts=max_concepts)
    if on_entry is not None:
        on_entry(entry)
    kept = {s: {"uid": read[s]["uid"][keep[s]], "lengths": read[s]["lengths"][keep[s]],
                **({"questions": questions[s]["questions"]} if four else {}),
                "concepts": ids["concepts"][s], "responses": read[s]["responses"][step_keep[s]],
                **({"is_repeat": questions[s]["is_repeat"]} if four else {})} for s in SPLITS}
    summary = {"source": {}, "dropped": {}, "num_c": num_c, "ids": how,
               **({"num_q": num_q, "max_concepts": max_concepts} if four else {})}
    for s, d in read.items():
        total, kept_steps = int(d["lengths"].sum()), int(kept[s]["lengths"].sum())
        summary["source"][s] = {"file": d["file"], "students": int(len(d["lengths"])), "interactions": total,
                                **({"answers": int(answers[s].sum())} if four else {})}
        remainder = kept_steps - int(split_windows(kept[s]["lengths"], maxlen, min_seq_len)[2].sum())
        summary["dropped"][s] = {"students": int((~keep[s]).sum()), "interactions": total - kept_steps + remainder,
                                 "short_student_interactions": total - kept_steps,
                                 "remainder_interactions": remainder}
    train_valid = {k: np.concatenate([kept["valid"][k], kept["train"][k]]) for k in kept["train"]}
    folds = np.concatenate([np.zeros(len(kept["valid"]["uid"]), dtype=np.int64),
                            1 + np.arange(len(kept["train"]["uid"])) % 4])
    summary["written"] = write_pykt_folder(out_dir, train_valid, folds, kept["test"], maxlen, min_seq_len)
    write_keyid2idx(out_dir, {**({"questions": question_ids} if four else {}), "concepts": ids["mapping"],
                              "max_concepts": max_concepts})
    write_pykt_config(out_dir, name, entry)
    return summary


# ----------------------------------------------------------------------------------------------- AKT's 4-line `_pid`

def is_four_line(prefix: str) -> bool:
    """AKT's question-level sets (`<name>_pid_train1.csv`, ...) have four lines per student: the `_pid` prefix."""
    return prefix.endswith("_pid")


def read_four_line(path: Path) -> dict:
    """One 4-line file of AKT's `_pid` sets -> what read_three_line gives, plus each row's problem id."""
    name, lines, no = _student_lines(path, 4, "AKT's `_pid` files have a header (<row>,<student id> or a count), "
                                              "problem ids, skill ids and 0/1 responses")
    others = np.flatnonzero(np.arange(len(lines)) % 4 != 1)
    out = _parse_students(name, [lines[i] for i in others], no[others])
    prob_no = no[1::4]
    problems, pc = parse_lists(lines[1::4], prob_no, name, "problem ids", np.int64)
    i = first_bad_row(pc != out["lengths"])
    if i is not None:
        raise DataError(f"{name} line {prob_no[i]}: {pc[i]} problem ids for {out['lengths'][i]} skill ids (line "
                        f"{out['skill_lines'][i]}); each row needs one problem id")
    return {**out, "problems": problems}


def answer_starts(problems: np.ndarray, skills: np.ndarray, responses: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per row: True where an answer starts. AKT writes a question with k skills as k consecutive rows with the same
    problem and response; a row starts a new answer at a student's first row, when the problem or the response
    changes, or when its skill is already in the current answer (the same question answered again at once)."""
    first = np.zeros(len(problems), dtype=bool)
    first[np.cumsum(lengths) - lengths] = True
    starts = np.ones(len(problems), dtype=bool)
    start = 0
    for i in range(len(problems)):  # one pass over the rows; an answer spans a few rows at most
        continues = (not first[i] and problems[i] == problems[i - 1] and responses[i] == responses[i - 1]
                     and skills[i] not in skills[start:i])
        if continues:
            starts[i] = False
        else:
            start = i
    return starts


def _question_columns(read: dict, step_keep: dict) -> tuple[dict, dict, int, int]:
    """Per split the kept rows' is_repeat and 0-based question ids (first appearance over train, valid, test, as
    pyKT's id_mapping), the problem id map and max_concepts (the most skills one answer has)."""
    repeat = {s: ~answer_starts(read[s]["problems"], read[s]["skills"], read[s]["responses"], read[s]["lengths"])
              for s in SPLITS}
    problems = np.concatenate([read[s]["problems"][step_keep[s]] for s in SPLITS])
    uniq, first, inverse = np.unique(problems, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    cuts = np.cumsum([int(step_keep[s].sum()) for s in SPLITS])[:-1]
    questions = dict(zip(SPLITS, np.split(rank[inverse], cuts)))
    starts = np.flatnonzero(~np.concatenate([repeat[s][step_keep[s]] for s in SPLITS]))
    max_concepts = int(np.diff(np.append(starts, len(problems))).max())
    columns = {s: {"questions": questions[s], "is_repeat": repeat[s][step_keep[s]].astype(np.int64)}
               for s in SPLITS}
    mapping = {str(int(uniq[j])): int(rank[j]) for j in np.argsort(rank)}
    return columns, mapping, len(uniq), max_concepts
