"""Inference on students' histories: P(correct) of a next question, the mastery of every concept after the last
step and the gains of that step. The logged MLflow model (service/pyfunc.py), `gakt-predict` and a served model all
call `predict_histories`, so they give the same numbers.

Input (a pandas DataFrame, one row per interaction, a student's rows in order):
  student   any id (read as text);
  concept   the concept id, or a multi-concept question's ids joined with "_" (pyKT's data.txt: "12_45");
  question  the question id (question-level models; required with question_embedding rasch, else optional);
  response  0 or 1; empty (NaN) on a student's last row makes that row the query whose P(correct) is returned.
`history_rows` turns pyKT sequence files (uid, concepts, responses[, questions, is_repeat, selectmasks]) into
these rows.

What the model reads (docs/serving.md): a question with k concepts is k steps (pyKT's expansion); each step's input
response is hidden while its answer continues (sequences.make_batch), as in training. The window is the last
seq_len - 1 steps of the history followed by the query step, which is pyKT's window evaluation; a multi-concept
query is predicted concept by concept from that same history and its P(correct) is the mean (pyKT's late fusion
"mean", the headline windowauclate_mean). Mastery and gains are m_t and g_t at the history's last step: what
the model uses to predict the query, identical for each of its concepts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import torch

from gainakt3exp.data import sequences as data
from gainakt3exp.errors import DataError

HISTORY_COLUMNS = ("student", "concept", "response")
QUESTION_COLUMN = "question"


@dataclass
class History:
    """One student's expanded steps (every concept of an answer a step) and the query's concepts."""

    label: str
    concepts: np.ndarray  # (n,) int64
    responses: np.ndarray  # (n,) int64
    questions: np.ndarray  # (n,) int64: the question id, or the answer's index where the input has none
    is_repeat: np.ndarray  # (n,) int64: 1 = another concept of the previous step's answer
    answers: int  # answered rows of the input
    query: tuple = ()  # the query's concept ids (empty: no query)
    query_question: int = 0


def _problem(row: int, student: str, text: str) -> DataError:
    return DataError(f"history row {row} (student {student!r}): {text}")


def _integer(value: Any) -> int | None:
    """An integer id from an int, an integral float or a numeric string; None otherwise."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if math.isfinite(value) and float(value).is_integer() else None
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return None
        return int(number) if math.isfinite(number) and number.is_integer() else None


def _label(value: Any) -> str:
    """A student id as text; an integral float (an id column read with gaps) prints as its integer."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)) or \
        (isinstance(value, str) and value.strip() == "")


def parse_histories(frame: pd.DataFrame, *, num_c: int, num_q: int, needs_questions: bool) -> list[History]:
    """Check every row and group them by student (in order of first appearance). Every problem names its row
    (1 = the first data row) and the fix; nothing is predicted when any row is wrong."""
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"a history must be a table (pandas DataFrame) with columns {', '.join(HISTORY_COLUMNS)}; "
                        f"got {type(frame).__name__}")
    missing = [c for c in HISTORY_COLUMNS if c not in frame.columns]
    if needs_questions and QUESTION_COLUMN not in frame.columns:
        missing.append(QUESTION_COLUMN)
    if missing:
        raise DataError(f"the history lacks column(s) {', '.join(missing)}; it needs one row per interaction with "
                        f"columns {', '.join(HISTORY_COLUMNS)}"
                        + (", question (this model reads question ids)" if needs_questions else "")
                        + f"; got columns {', '.join(map(str, frame.columns)) or 'none'}")
    if len(frame) == 0:
        raise DataError("the history is empty: give at least one answered interaction per student")
    with_questions = num_q > 0 and QUESTION_COLUMN in frame.columns
    students: dict[str, dict] = {}
    columns = {c: frame[c].tolist() for c in frame.columns if c in (*HISTORY_COLUMNS, QUESTION_COLUMN)}
    for i in range(len(frame)):
        row = i + 1
        raw_student = columns["student"][i]
        if _missing(raw_student):
            raise DataError(f"history row {row}: the student is empty; every row names its student")
        student = _label(raw_student)
        entry = students.setdefault(student, {"rows": [], "query": None})
        if entry["query"] is not None:
            raise _problem(entry["query"][0], student, "has no response but is not the student's last row; only "
                           "a student's last row may be the query (empty response)")
        raw_concept = columns["concept"][i]
        parts = [] if _missing(raw_concept) else str(raw_concept).strip().split("_")
        ids = [_integer(p) for p in parts]
        if not ids or any(c is None or not 0 <= c < num_c for c in ids):
            raise _problem(row, student, f"concept {raw_concept!r} is not a concept id of this model (integers "
                           f"0..{num_c - 1}, several joined with '_' for a multi-concept question)")
        if len(ids) > 1 and num_q == 0:
            raise _problem(row, student, f"concept {raw_concept!r} joins several concepts, but this model was "
                           "trained on concept-level data (one concept per interaction)")
        question = None
        if with_questions:
            question = _integer(columns[QUESTION_COLUMN][i])
            if question is None or not 0 <= question < num_q:
                raise _problem(row, student, f"question {columns[QUESTION_COLUMN][i]!r} is not a question id of "
                               f"this model (integers 0..{num_q - 1})")
        raw_response = columns["response"][i]
        if _missing(raw_response):
            entry["query"] = (row, ids, question)
            continue
        response = _integer(raw_response)
        if response not in (0, 1):
            raise _problem(row, student, f"response {raw_response!r} must be 0 or 1 (or empty on the student's "
                           "last row, to ask for P(correct) of that question)")
        entry["rows"].append((ids, response, question))
    histories = []
    for student, entry in students.items():
        if not entry["rows"]:
            row = entry["query"][0]
            raise _problem(row, student, "the history is empty: the student has no answered interaction before "
                           "the query; give at least one answered row")
        concepts, responses, questions, repeat = [], [], [], []
        for k, (ids, response, question) in enumerate(entry["rows"]):
            qid = question if question is not None else k
            for j, c in enumerate(ids):
                concepts.append(c), responses.append(response), questions.append(qid), repeat.append(int(j > 0))
        query = entry["query"]
        histories.append(History(
            label=student, concepts=np.array(concepts, dtype=np.int64), responses=np.array(responses, np.int64),
            questions=np.array(questions, dtype=np.int64), is_repeat=np.array(repeat, dtype=np.int64),
            answers=len(entry["rows"]), query=tuple(query[1]) if query else (),
            query_question=(query[2] if query[2] is not None else len(entry["rows"])) if query else 0))
    return histories


def history_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """pyKT sequence rows (uid, concepts, responses as comma lists, -1 padded; optional questions and is_repeat;
    selectmasks ignored) -> one row per interaction; rows of one uid are joined in file order, and consecutive
    steps with is_repeat 1 are joined into one multi-concept interaction ("12_45")."""
    needed = [c for c in ("uid", "concepts", "responses") if c not in frame.columns]
    if needed:
        raise DataError(f"a pyKT sequence table needs columns uid, concepts, responses; {', '.join(needed)} missing")
    out: dict[str, list] = {"student": [], "concept": [], "response": []}
    has_q = "questions" in frame.columns
    if has_q:
        out["question"] = []
    for i, rec in enumerate(frame.to_dict("records")):
        lists = {}
        for col in ("concepts", "responses", "questions", "is_repeat"):
            if col in rec:
                try:
                    lists[col] = [int(v) for v in str(rec[col]).split(",")]
                except ValueError:
                    raise DataError(f"sequence row {i + 1}: column {col} must be comma-separated integers, got "
                                    f"{str(rec[col])[:60]!r}") from None
        n = len(lists["concepts"])
        if any(len(v) != n for v in lists.values()):
            raise DataError(f"sequence row {i + 1}: the lists of concepts, responses (and questions, is_repeat) "
                            "must have one value per step")
        for t in range(n):
            if lists["concepts"][t] == -1:
                continue
            if lists.get("is_repeat", [0] * n)[t] == 1 and out["student"] and out["student"][-1] == str(rec["uid"]):
                out["concept"][-1] = f"{out['concept'][-1]}_{lists['concepts'][t]}"
                continue
            out["student"].append(str(rec["uid"]))
            out["concept"].append(str(lists["concepts"][t]))
            out["response"].append(lists["responses"][t])
            if has_q:
                out["question"].append(lists["questions"][t])
    return pd.DataFrame(out)


def _windows(histories: list[History], seq_len: int, with_questions: bool) -> tuple[data.Sequences, np.ndarray]:
    """One row per (student, query concept): the last seq_len - 1 history steps, then the query step (a dummy
    concept-0 step without a query: its prediction is dropped). Returns the rows and each row's student index."""
    keep = seq_len - 1
    rows, owner = [], []
    for s, h in enumerate(histories):
        lo = max(0, len(h.concepts) - keep)
        for concept in h.query or (0,):
            rows.append((np.append(h.concepts[lo:], concept), np.append(h.responses[lo:], 0),
                         np.append(h.questions[lo:], h.query_question), np.append(h.is_repeat[lo:], 0)))
            owner.append(s)
    n, width = len(rows), seq_len
    arrays = {k: np.full((n, width), -1, dtype=np.int64) for k in ("c", "r", "q", "rep")}
    lengths = np.empty(n, dtype=np.int64)
    for i, (c, r, q, rep) in enumerate(rows):
        m = len(c)
        arrays["c"][i, :m], arrays["r"][i, :m], arrays["q"][i, :m], arrays["rep"][i, :m] = c, r, q, rep
        lengths[i] = m
    select = np.zeros((n, width), dtype=bool)
    select[np.arange(n), lengths - 1] = True
    seqs = data.Sequences(concepts=arrays["c"], responses=arrays["r"], selectmasks=select,
                          uids=np.asarray(owner, dtype=np.int64), lengths=lengths, truth=None, source="history",
                          file_hash="", questions=arrays["q"] if with_questions else None,
                          is_repeat=(arrays["rep"] == 1) if with_questions else None)
    return seqs, np.asarray(owner, dtype=np.int64)


def predict_histories(model: torch.nn.Module, frame: pd.DataFrame, *, batch_size: int, device: Any,
                      progress: Callable[[Iterable], Iterable] = lambda batches: batches) -> pd.DataFrame:
    """One output row per student (in order of first appearance): student, next (the query's concepts, "" without
    one), p_correct (NaN without a query), answers (answered rows read), steps (expanded steps in the window),
    then mastery_<k> and gain_<k> for every concept k (the heads the model has)."""
    histories = parse_histories(frame, num_c=model.num_c, num_q=model.num_q,
                                needs_questions=model.question_difficulty is not None)
    seqs, owner = _windows(histories, model.seq_len, with_questions=model.num_q > 0)
    order = np.argsort(seqs.lengths, kind="stable")  # similar lengths share a batch
    n, num_c = len(seqs), model.num_c
    p = np.empty(n)
    mastery = np.full((n, num_c), np.nan) if model.mastery_head is not None else None
    gains = np.full((n, num_c), np.nan) if model.gain_head is not None else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
            for rows in progress(chunks):
                b = data.make_batch(seqs, rows, device)
                out = model(b.c, b.r, b.q, **data.question_inputs(b), logits=True, interpretation=True)
                last = torch.as_tensor(seqs.lengths[rows] - 2, device=b.c.device)  # the query's input position
                pick = torch.arange(len(rows), device=b.c.device)
                p[rows] = torch.sigmoid(out.logits[pick, last].double()).cpu().numpy()
                if mastery is not None:
                    mastery[rows] = out.mastery[pick, last].double().cpu().numpy()
                if gains is not None:
                    gains[rows] = out.gains[pick, last].double().cpu().numpy()
    finally:
        model.train(was_training)
    first = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])  # each student's first row
    queried = np.array([bool(h.query) for h in histories])
    p_student = np.where(queried, np.add.reduceat(p, first) / np.diff(np.r_[first, n]), np.nan)
    result = {
        "student": [h.label for h in histories],
        "next": ["_".join(map(str, h.query)) for h in histories],
        "p_correct": p_student,
        "answers": np.array([h.answers for h in histories], dtype=np.int64),
        "steps": seqs.lengths[first] - 1,
    }
    table = pd.DataFrame(result)
    parts = [table]
    if mastery is not None:
        parts.append(pd.DataFrame(mastery[first], columns=[f"mastery_{k}" for k in range(num_c)]))
    if gains is not None:
        parts.append(pd.DataFrame(gains[first], columns=[f"gain_{k}" for k in range(num_c)]))
    return pd.concat(parts, axis=1)


def student_trajectories(model: torch.nn.Module, frame: pd.DataFrame, *, students: int, device: Any) -> list[dict]:
    """For the first `students` students of `frame`: the concept and response of each step of the window the
    model reads and the mastery of every concept after each step (collect.collect_students, what
    plots.mastery_students_png draws); [] for a model without a mastery head."""
    from gainakt3exp.loops.collect import collect_students

    if model.mastery_head is None:
        return []
    histories = parse_histories(frame, num_c=model.num_c, num_q=model.num_q,
                                needs_questions=model.question_difficulty is not None)[:students]
    for h in histories:
        h.query = ()  # the window of the last step: the history itself, then a dummy step
    seqs, _ = _windows(histories, model.seq_len, with_questions=model.num_q > 0)
    drawn = collect_students(model, seqs, np.arange(len(seqs)), device)
    for h, student in zip(histories, drawn):
        student["label"] = f"student {h.label}"
    return drawn
