"""Inference on students' histories (loops/predict.py): the numbers of the evaluation's own forward pass (pyKT's
window evaluation; late fusion "mean" for a multi-concept question), refusals that name the row, pyKT sequence rows
as input, the output table. Untrained tiny models: what matters is the correspondence, not the quality."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from gainakt3exp.config.params import resolve_params
from gainakt3exp.data import sequences as data
from gainakt3exp.data.registry import resolve_data_root
from gainakt3exp.data.synthetic import generate_synthetic_questions
from gainakt3exp.errors import DataError
from gainakt3exp.loops.collect import collect_outputs
from gainakt3exp.loops.predict import history_rows, predict_histories
from gainakt3exp.metrics.stats import late_fusion
from gainakt3exp.model.network import GainAKT3Exp
from gainakt3exp.paths import CONFIG_DIR

DEFAULTS = json.loads((CONFIG_DIR / "parameter_default.json").read_text())["defaults"]
TOL = 1e-6
C, Q = 6, 12  # concepts and questions of the small question-level models and data


def _frame(students: dict, questions: bool = False) -> pd.DataFrame:
    """{student: (history [(concept, response[, question]), ...], query (concept[, question]) or None)} -> rows."""
    rows = []
    for student, (history, query) in students.items():
        for step in history:
            rows.append((student, str(step[0]), step[1], *step[2:]))
        if query is not None:
            rows.append((student, str(query[0]), np.nan, *query[1:]))
    columns = ["student", "concept", "response"] + (["question"] if questions else [])
    return pd.DataFrame(rows, columns=columns)


def _small_model(seq_len: int = 9, num_q: int = 0, **overrides) -> GainAKT3Exp:
    params = dict(DEFAULTS, seq_len=seq_len, d_model=16, n_heads=2, num_encoder_blocks=1, d_ff=24, **overrides)
    torch.manual_seed(0)
    model = GainAKT3Exp.from_params(params, num_c=C, num_q=num_q)
    if model.question_difficulty is not None:  # difficulties start at 0: make question ids matter
        with torch.no_grad():
            model.question_difficulty.weight.normal_()
    return model


def _p_scored(out: dict) -> np.ndarray:
    return torch.sigmoid(out["logits"].double()).numpy()


# ------------------------------------------------------------------------- the evaluation's numbers (concepts)

@pytest.fixture
def window_split(tiny_params) -> data.Sequences:
    spec = data.dataset_spec(tiny_params["dataset"], resolve_data_root(tiny_params["data_root"]))
    return data.load_split(spec, "test_window", tiny_params["fold"], tiny_params["seq_len"])


@pytest.fixture
def concept_model(tiny_params) -> GainAKT3Exp:
    torch.manual_seed(0)
    return GainAKT3Exp.from_params(tiny_params, 20)


def _last_step_query(seqs: data.Sequences, row: int) -> tuple:
    """A window row as a history (its steps before the last) and a query (the last step's concept)."""
    n = int(seqs.lengths[row])
    history = list(zip(seqs.concepts[row, :n - 1].tolist(), seqs.responses[row, :n - 1].tolist()))
    return history, (int(seqs.concepts[row, n - 1]),)


def _forward_last(model, seqs: data.Sequences, row: int):
    """The model's own forward on one row: (P(correct) of the last step, mastery and gains at the input before it)."""
    model.eval()
    b = data.make_batch(seqs, [row], "cpu")
    with torch.no_grad():
        out = model(b.c, b.r, b.q, **data.question_inputs(b))
    return (torch.sigmoid(out.logits[0, -1].double()).item(), out.mastery[0, -1].double().numpy(),
            out.gains[0, -1].double().numpy())


def test_p_correct_mastery_and_gains_equal_the_window_evaluation_at_the_scored_step(concept_model, window_split):
    w = window_split
    first_rows = np.unique(w.uids, return_index=True)[1]  # every test student's first window, 5..200 steps
    longest = np.flatnonzero(w.uids == np.bincount(w.uids).argmax())[-3:]  # later windows: only the last step scores
    rows = np.r_[first_rows, longest]
    n = w.lengths[rows]
    assert w.selectmasks[rows, n - 1].all() and (n == 200).sum() >= 4 and n.min() < 20
    frame = _frame({f"row {r}": _last_step_query(w, r) for r in rows})

    got = predict_histories(concept_model, frame, batch_size=8, device="cpu")

    out = collect_outputs(concept_model, w, rows, 16, "cpu")
    p_eval = _p_scored(out)[np.arange(len(rows)), n - 2]  # target step n-1 is input position n-2
    assert got["student"].tolist() == [f"row {r}" for r in rows]
    np.testing.assert_allclose(got["p_correct"].to_numpy(), p_eval, rtol=0, atol=TOL)
    assert got["steps"].tolist() == (n - 1).tolist() and got["answers"].tolist() == (n - 1).tolist()
    for i, r in enumerate(rows):
        _, mastery, gains = _forward_last(concept_model, w, r)
        np.testing.assert_allclose(got.loc[i, [f"mastery_{k}" for k in range(20)]].to_numpy(float), mastery,
                                   rtol=0, atol=TOL)
        np.testing.assert_allclose(got.loc[i, [f"gain_{k}" for k in range(20)]].to_numpy(float), gains,
                                   rtol=0, atol=TOL)


def test_a_history_longer_than_the_window_is_read_from_its_last_seq_len_minus_1_steps(concept_model, window_split):
    w = window_split
    mine = np.flatnonzero(w.uids == np.bincount(w.uids).argmax())  # a student with > 100 sliding windows
    assert len(mine) > 100 and w.lengths[mine].min() == 200
    # the student's whole history: the first window, then the step each later window adds
    concepts = np.r_[w.concepts[mine[0]], w.concepts[mine[1:], 199]]
    responses = np.r_[w.responses[mine[0]], w.responses[mine[1:], 199]]
    assert (w.concepts[mine[-1]] == concepts[-200:]).all()
    history = list(zip(concepts[:-1].tolist(), responses[:-1].tolist()))  # 2 x seq_len - 1 and more
    frame = _frame({"long": (history, (int(concepts[-1]),))})

    got = predict_histories(concept_model, frame, batch_size=4, device="cpu")

    p_window, mastery, gains = _forward_last(concept_model, w, mine[-1])
    p_eval = _p_scored(collect_outputs(concept_model, w, mine[-1:], 4, "cpu"))[0, 198]
    assert got.loc[0, "answers"] == len(history) > 300 and got.loc[0, "steps"] == 199
    assert got.loc[0, "p_correct"] == pytest.approx(p_eval, abs=TOL)
    assert got.loc[0, "p_correct"] == pytest.approx(p_window, abs=TOL)
    np.testing.assert_allclose(got.loc[0, [f"mastery_{k}" for k in range(20)]].to_numpy(float), mastery, atol=TOL)
    np.testing.assert_allclose(got.loc[0, [f"gain_{k}" for k in range(20)]].to_numpy(float), gains, atol=TOL)
    head = data.Sequences(  # the history's first seq_len - 1 steps, then the query
        concepts=np.r_[concepts[:199], concepts[-1]][None], responses=np.r_[responses[:199], 0][None],
        selectmasks=np.ones((1, 200), dtype=bool), uids=np.array([0]), lengths=np.array([200]), truth=None,
        source="head", file_hash="")
    p_head, _, _ = _forward_last(concept_model, head, 0)
    assert abs(got.loc[0, "p_correct"] - p_head) > 1e-3


# ------------------------------------------------------------------------- the evaluation's numbers (questions)

@pytest.fixture(scope="module")
def question_set(tmp_path_factory) -> data.DatasetSpec:
    """A small question-level synthetic set (20 students, 4 in test; questions of 1..3 concepts), maxlen 30."""
    root = tmp_path_factory.mktemp("questions") / "synthetic_questions"
    generate_synthetic_questions(root, students=20, skills=C, seed=3, maxlen=30, questions=Q, max_concepts=3)
    return data.DatasetSpec(name="synthetic_questions", root=root, num_c=C, maxlen=30, folds=(0, 1, 2, 3, 4),
                            train_valid_file="train_valid_sequences.csv", test_file="test_sequences.csv",
                            test_window_file="test_window_sequences.csv", truth_file=None, num_q=Q,
                            entry={"test_original_file": "test.csv", "min_seq_len": 3})


def test_a_multi_concept_query_is_the_late_fusion_mean_of_the_question_window_evaluation(question_set):
    model = _small_model(seq_len=30, num_q=Q, question_embedding="rasch")
    qw = data.load_question_split(question_set, "question_window")
    answers = history_rows(pd.read_csv(question_set.root / "test.csv"))  # row a = answer a (pyKT's qidx)
    assert len(answers) == int(qw.qidxs.max()) + 1
    scored_answer = np.where(qw.selectmasks, qw.qidxs, -1)
    concepts = answers["concept"].str.count("_").to_numpy() + 1
    same_student = np.r_[False, answers["student"].to_numpy()[1:] == answers["student"].to_numpy()[:-1]]
    repeated = same_student & np.r_[False, answers["question"].to_numpy()[1:] == answers["question"].to_numpy()[:-1]]
    position = answers.groupby("student").cumcount().to_numpy()  # answers before this one
    # Answers to the question answered just before are included on purpose: their later concepts must see the
    # previous answer's response in the evaluation's rows (load_question_split marks only steps of one answer as
    # repeats), as predict_histories does.
    eligible = np.flatnonzero(np.isin(np.arange(len(answers)), scored_answer))
    assert repeated[eligible].any()
    multi = eligible[concepts[eligible] > 1]
    chosen = np.r_[multi[:: max(1, len(multi) // 30)], eligible[concepts[eligible] == 1][:5]]
    assert len(chosen) >= 30 and (concepts[chosen] == 3).any() and (concepts[chosen] == 2).any()
    assert (position[chosen] < 10).any() and (position[chosen] > 30).any()  # windows shorter and cut to seq_len
    rows = np.flatnonzero(np.isin(scored_answer, chosen).any(axis=1))

    out = collect_outputs(model, qw, rows, 64, "cpu", per_skill=False, interpretation=False)
    score = out["score"].numpy()
    answer = qw.qidxs[rows][:, 1:1 + score.shape[1]][score]  # targets are steps 1..
    p, y = _p_scored(out)[score], out["y"].numpy()[score]
    keep = np.isin(answer, chosen)
    fused = late_fusion(p[keep], y[keep], answer[keep])  # answers in ascending qidx order
    order = np.sort(chosen)
    p_mean = np.array([p[answer == a].mean() for a in order])
    assert [int((answer == a).sum()) for a in order] == concepts[order].tolist()  # each concept scored once
    queries = []
    for a in order:
        mine = answers.iloc[:a + 1]
        mine = mine[mine["student"] == answers.loc[a, "student"]].copy()  # the answers before a, then a
        mine["student"] = f"answer {a}"
        mine.loc[a, "response"] = np.nan
        queries.append(mine)

    got = predict_histories(model, pd.concat(queries), batch_size=16, device="cpu")

    assert got["next"].tolist() == answers["concept"][order].tolist()
    np.testing.assert_allclose(got["p_correct"].to_numpy(), p_mean, rtol=0, atol=TOL)
    np.testing.assert_allclose(got["p_correct"].to_numpy(), fused["late_mean"], rtol=0, atol=5.1e-5)  # 4 decimals


def test_a_multi_concept_query_is_the_mean_of_its_concepts_and_reads_the_question_id():
    model = _small_model(num_q=Q, question_embedding="rasch")
    history = [("1_4", 1, 3), (2, 0, 5), ("0_5_2", 1, 7), (3, 1, 8)]
    frame = _frame({"multi": (history, ("1_2_5", 9)), "c1": (history, (1, 9)), "c2": (history, (2, 9)),
                    "c5": (history, (5, 9)), "other question": (history, ("1_2_5", 10))}, questions=True)

    got = predict_histories(model, frame, batch_size=2, device="cpu").set_index("student")

    assert got.loc["multi", "p_correct"] == pytest.approx(got.loc[["c1", "c2", "c5"], "p_correct"].mean(), abs=TOL)
    assert len(set(got.loc[["c1", "c2", "c5"], "p_correct"].round(6))) == 3
    assert abs(got.loc["multi", "p_correct"] - got.loc["other question", "p_correct"]) > 1e-4
    assert got.loc["multi", "answers"] == 4 and got.loc["multi", "steps"] == 7  # 2 + 1 + 3 + 1 concepts


def test_a_query_of_the_question_just_answered_reads_that_answers_response():
    """The query is a new answer even when its question is the last row's: the last response is not hidden."""
    model = _small_model(num_q=Q, question_embedding="rasch")
    history = [("1_4", 1, 3), (2, 0, 5)]
    frame = _frame({"right": (history + [("0_5", 1, 7)], ("0_5", 7)),
                    "wrong": (history + [("0_5", 0, 7)], ("0_5", 7))}, questions=True)

    got = predict_histories(model, frame, batch_size=2, device="cpu")

    assert abs(got.loc[0, "p_correct"] - got.loc[1, "p_correct"]) > 1e-4


# ------------------------------------------------------------------------- refusals

GOOD = [("s", "1", 1), ("s", "2", 0)]


@pytest.mark.parametrize("rows, row, fragment", [
    (GOOD + [("s", "6", 1)], 3, "concept '6' is not a concept id of this model (integers 0..5"),  # num_c 6
    (GOOD + [("s", "-1", 1)], 3, "concept '-1'"),
    (GOOD + [("s", "abc", 1)], 3, "concept 'abc'"),
    ([("s", "1", 2)] + GOOD, 1, "response 2"),
    (GOOD + [("t", "1", "x")], 3, "response 'x'"),
    ([("s", "1", 1), ("s", "2", np.nan), ("t", "0", 1), ("s", "3", 1)], 2, "not the student's last row"),
    (GOOD + [("t", "3", np.nan)], 3, "the student has no answered interaction"),
    (GOOD + [("t", "0", 1), ("t", "1_2", 1)], 4, "concept '1_2' joins several concepts"),
    (GOOD + [("t", "0", 1), ("s", "1_2", np.nan)], 4, "concept '1_2' joins several concepts"),
    ([("s", "1", 1), (np.nan, "2", 0)], 2, "the student is empty"),
], ids=["concept-too-large", "concept-negative", "concept-text", "response-2", "response-x", "query-not-last",
        "query-only", "multi-concept-history", "multi-concept-query", "no-student"])
def test_a_wrong_row_is_refused_by_number(rows, row, fragment):
    model = _small_model()
    frame = pd.DataFrame(rows, columns=["student", "concept", "response"])
    with pytest.raises(DataError, match=rf"row {row}\b.*{re.escape(fragment)}"):
        predict_histories(model, frame, batch_size=4, device="cpu")


@pytest.mark.parametrize("question, row, fragment", [
    (Q, 2, f"question {Q} is not a question id of this model (integers 0..{Q - 1})"),
    (-1, 2, "question -1 is not a question id"),
    (np.nan, 2, "question nan is not a question id"),
])
def test_a_question_id_the_model_does_not_know_is_refused_by_row(question, row, fragment):
    model = _small_model(num_q=Q, question_embedding="rasch")
    frame = pd.DataFrame([("s", "1", 1, 3), ("s", "2", 0, question)], columns=["student", "concept", "response",
                                                                                  "question"])
    with pytest.raises(DataError, match=rf"row {row}\b.*{re.escape(fragment)}"):
        predict_histories(model, frame, batch_size=4, device="cpu")


def test_a_table_without_its_columns_or_rows_is_refused():
    with pytest.raises(DataError, match=r"lacks column\(s\) response, question; .*question \(this model reads "
                                        r"question ids\)"):
        predict_histories(_small_model(num_q=Q, question_embedding="rasch"),
                          pd.DataFrame({"student": ["s"], "concept": ["1"]}), batch_size=4, device="cpu")
    with pytest.raises(DataError, match=r"lacks column\(s\) concept; .*got columns student, response"):
        predict_histories(_small_model(), pd.DataFrame({"student": ["s"], "response": [1]}), batch_size=4,
                          device="cpu")
    with pytest.raises(DataError, match="the history is empty"):
        predict_histories(_small_model(), pd.DataFrame(columns=["student", "concept", "response"]), batch_size=4,
                          device="cpu")


# ------------------------------------------------------------------------- pyKT sequence rows

def test_pykt_sequence_rows_become_interaction_rows_with_the_same_prediction():
    sequences = pd.DataFrame({
        "uid": [7, 7, 8],
        "questions": ["3,3,5,7,7", "7,2,-1,-1,-1", "1,4,4,-1,-1"],
        "concepts": ["1,4,2,0,5", "2,3,-1,-1,-1", "0,1,2,-1,-1"],
        "responses": ["1,1,0,1,1", "1,0,-1,-1,-1", "0,1,1,-1,-1"],
        "is_repeat": ["0,1,0,0,1", "1,0,-1,-1,-1", "0,0,1,-1,-1"],  # question 7's answer spans two rows
        "selectmasks": ["1,1,1,1,1", "1,1,-1,-1,-1", "1,1,1,-1,-1"],
    })
    by_hand = _frame({"7": ([("1_4", 1, 3), (2, 0, 5), ("0_5_2", 1, 7), (3, 0, 2)], None),
                      "8": ([(0, 0, 1), ("1_2", 1, 4)], None)}, questions=True)

    rows = history_rows(sequences)

    assert rows.to_dict("records") == by_hand.to_dict("records")
    model = _small_model(num_q=Q, question_embedding="rasch")
    query = pd.DataFrame([("7", "2_3", np.nan, 9), ("8", "5", np.nan, 1)], columns=by_hand.columns)
    got = predict_histories(model, pd.concat([rows, query]), batch_size=4, device="cpu")
    expected = predict_histories(model, pd.concat([by_hand, query]), batch_size=4, device="cpu")
    pd.testing.assert_frame_equal(got, expected)
    assert got["answers"].tolist() == [4, 2] and np.isfinite(got["p_correct"]).all()


def test_concept_level_sequence_rows_drop_their_padding():
    sequences = pd.DataFrame({"uid": [3, 3], "concepts": ["4,1,-1", "0,-1,-1"], "responses": ["1,0,-1", "1,-1,-1"],
                              "selectmasks": ["1,1,-1", "1,-1,-1"]})
    assert history_rows(sequences).values.tolist() == [["3", "4", 1], ["3", "1", 0], ["3", "0", 1]]
    with pytest.raises(DataError, match="sequence row 2: the lists of concepts, responses"):
        history_rows(pd.DataFrame({"uid": [3, 3], "concepts": ["4,1", "0"], "responses": ["1,0", "1,1"]}))


# ------------------------------------------------------------------------- the output table

def test_one_row_per_student_in_order_of_first_appearance():
    model = _small_model()
    students = {"b": ([(1, 1), (2, 0), (3, 1)] * 4, (4,)),  # 12 steps: more than seq_len - 1 = 8
                "a": ([(0, 1)], None),
                "c": ([(5, 0), (5, 1)], (0,))}
    frame = _frame(students)
    frame = frame.iloc[[0, 13, 14, 1, 15, 16] + list(range(2, 13))].reset_index(drop=True)  # interleaved

    got = predict_histories(model, frame, batch_size=2, device="cpu")

    assert list(got.columns) == (["student", "next", "p_correct", "answers", "steps"]
                                 + [f"mastery_{k}" for k in range(C)] + [f"gain_{k}" for k in range(C)])
    assert got["student"].tolist() == ["b", "a", "c"] and got["next"].tolist() == ["4", "", "0"]
    assert got["answers"].tolist() == [12, 1, 2] and got["steps"].tolist() == [8, 1, 2]
    assert np.isnan(got.loc[1, "p_correct"]) and np.isfinite(got.loc[[0, 2], "p_correct"]).all()
    assert np.isfinite(got.filter(like="mastery_").to_numpy()).all()
    for i, name in enumerate(["b", "a", "c"]):  # a student's numbers do not depend on the others in the table
        alone = predict_histories(model, _frame({name: students[name]}), batch_size=2, device="cpu")
        pd.testing.assert_frame_equal(got.iloc[[i]].reset_index(drop=True), alone, check_exact=False, rtol=0,
                                      atol=TOL)


def test_a_model_without_mastery_and_gain_heads_has_no_such_columns(synthetic_root):
    params = resolve_params({"data_root": str(synthetic_root)}, ["tiny", "pure-bce"]).params
    torch.manual_seed(0)
    model = GainAKT3Exp.from_params(params, 20)
    assert model.mastery_head is None and model.gain_head is None

    got = predict_histories(model, _frame({"s": ([(1, 1), (2, 0)], (3,))}), batch_size=2, device="cpu")

    assert list(got.columns) == ["student", "next", "p_correct", "answers", "steps"]
    assert 0 < got.loc[0, "p_correct"] < 1


# ------------------------------------------------------------------------- the model's mode

@pytest.mark.parametrize("training", [True, False])
def test_the_models_mode_is_restored_and_prediction_runs_without_dropout(training):
    model = _small_model(dropout=0.5)
    frame = _frame({"s": ([(1, 1), (2, 0), (3, 1), (1, 0)], (2,)), "t": ([(0, 1)], (5,))})
    model.eval()
    expected = predict_histories(model, frame, batch_size=2, device="cpu")
    model.train(training)

    first = predict_histories(model, frame, batch_size=2, device="cpu")
    second = predict_histories(model, frame, batch_size=2, device="cpu")

    assert model.training is training and all(m.training is training for m in model.modules())
    pd.testing.assert_frame_equal(first, expected)
    pd.testing.assert_frame_equal(second, expected)
