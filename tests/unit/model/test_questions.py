"""Question-level data in the model: no prediction sees its own answer's response (a question with k concepts is k
steps with one response), and question_embedding rasch (AKT's difficulty times a concept variation)."""
import json

import numpy as np
import pytest
import torch

from gainakt3exp.data.sequences import HIDDEN, Sequences, make_batch, question_inputs
from gainakt3exp.errors import ConfigError
from gainakt3exp.model.network import GainAKT3Exp
from gainakt3exp.objective.controller import Objective
from gainakt3exp.paths import CONFIG_DIR

DEFAULTS = json.loads((CONFIG_DIR / "parameter_default.json").read_text())["defaults"]
C, Q = 6, 9


def _seqs(responses):
    """One student: answers to questions 3 (concepts 1, 4), 5 (concept 2), 3 (concepts 1, 4), 7 (concepts 0, 5, 2)."""
    questions = [3, 3, 5, 3, 3, 7, 7, 7, -1]
    concepts = [1, 4, 2, 1, 4, 0, 5, 2, -1]
    is_repeat = [0, 1, 0, 0, 1, 0, 1, 1, 0]
    arr = lambda x: np.array([x], dtype=np.int64)  # noqa: E731
    return Sequences(concepts=arr(concepts), responses=arr(responses + [-1]), selectmasks=arr(concepts) != -1,
                     uids=np.array([0]), lengths=np.array([8]), truth=None, source="toy", file_hash="",
                     questions=arr(questions), is_repeat=arr(is_repeat) == 1)


RESPONSES = [1, 1, 0, 1, 1, 0, 0, 0]


def _model(**overrides):
    params = dict(DEFAULTS, seq_len=9, d_model=16, n_heads=2, num_encoder_blocks=1, d_ff=24, dropout=0.0,
                  **overrides)
    torch.manual_seed(0)
    return GainAKT3Exp.from_params(params, num_c=C, num_q=Q).eval()


def test_a_steps_response_is_hidden_while_its_answer_continues():
    batch = make_batch(_seqs(RESPONSES), [0], "cpu")
    # steps 0, 3, 5, 6 are followed by another concept of the same answer
    assert batch.r[0].tolist() == [HIDDEN, 1, 0, HIDDEN, 1, HIDDEN, HIDDEN, 0][:7]
    assert batch.y[0].tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # the labels stay the real responses
    assert batch.question[0].tolist() == [3, 3, 5, 3, 3, 7, 7] and batch.next_question[0].tolist() == [3, 5, 3, 3, 7,
                                                                                                        7, 7]


@pytest.mark.parametrize("overrides", [{}, {"question_embedding": "rasch"}, {"emb_type": "concept_plus_response"}])
def test_flipping_the_response_of_a_questions_first_concept_leaves_its_other_concepts_predictions(overrides):
    """The prediction of concept 4 of question 3 (target step 1) and of concepts 5 and 2 of question 7 (targets 6, 7)
    cannot depend on the response their own answer got; the next answer's prediction does."""
    model = _model(**overrides)
    outs = []
    for flip in (None, 0, 5):
        responses = list(RESPONSES)
        if flip is not None:  # every step of that answer: an answer has one response
            k = 2 if flip == 0 else 3
            responses[flip:flip + k] = [1 - responses[flip]] * k
        batch = make_batch(_seqs(responses), [0], "cpu")
        with torch.no_grad():
            outs.append(model(batch.c, batch.r, batch.q, **question_inputs(batch)))
    base, first, last = (o.logits[0] for o in outs)
    assert torch.equal(base[0], first[0])  # target step 1 (same answer as step 0)
    assert not torch.allclose(base[1:], first[1:])  # later answers see question 3's response
    assert torch.equal(base[:6], last[:6]) and torch.equal(base[5:7], last[5:7])  # targets 6, 7: question 7's own
    for o in outs:  # mastery and gains of those steps do not see it either
        assert torch.equal(o.mastery[0, :1], outs[0].mastery[0, :1])


def test_rasch_starts_as_the_model_without_it_and_learns_difficulties():
    plain, rasch = _model(), _model(question_embedding="rasch")
    batch = make_batch(_seqs(RESPONSES), [0], "cpu")
    shared = {k: v for k, v in rasch.state_dict().items() if k in plain.state_dict()}
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in shared.items())  # made last: same other weights
    assert set(rasch.state_dict()) - set(plain.state_dict()) == {
        "question_difficulty.weight", "concept_variation.weight", "response_variation.weight"}
    z0 = plain(batch.c, batch.r, batch.q).logits
    out = rasch(batch.c, batch.r, batch.q, **question_inputs(batch))
    assert torch.equal(out.logits, z0)  # difficulties start at 0
    assert out.difficulty.shape == batch.c.shape
    objective = Objective(dict(DEFAULTS, question_difficulty_l2=0.5, enhanced_constraints=False,
                               enable_alignment_loss=False, enable_lag_gain_loss=False, enable_retention_loss=False))
    rasch.train()
    total, parts = objective(rasch(batch.c, batch.r, batch.q, **question_inputs(batch), reduced=True), batch)
    total.backward()
    assert float(parts["question_difficulty"]) == 0.0
    assert rasch.question_difficulty.weight.grad[[3, 5, 7]].abs().sum() > 0  # the batch's questions learn
    assert rasch.question_difficulty.weight.grad[[0, 1, 2, 4, 6, 8]].abs().sum() == 0
    with torch.no_grad():
        rasch.question_difficulty.weight[3] = 2.0
    out = rasch(batch.c, batch.r, batch.q, **question_inputs(batch), reduced=True)
    _, parts = objective(out, batch)
    # 0.5 x sum of mu^2 over the scored steps: question 3 at steps 0, 1, 3, 4
    assert float(parts["question_difficulty"]) == pytest.approx(0.5 * 4 * 2.0 ** 2)


def test_rasch_needs_question_ids():
    with pytest.raises(ConfigError, match="question_embedding=rasch needs question ids, but the data set has none"):
        GainAKT3Exp.from_params(dict(DEFAULTS, question_embedding="rasch"), num_c=C)
    model = _model(question_embedding="rasch")
    batch = make_batch(_seqs(RESPONSES), [0], "cpu")
    with pytest.raises(ConfigError, match="needs each step's question id"):
        model(batch.c, batch.r, batch.q)


def test_question_embedding_auto_is_rasch_with_question_ids_and_none_without():
    from gainakt3exp.config.choices import resolve_question_embedding

    assert resolve_question_embedding("auto", Q) == "rasch" and resolve_question_embedding("auto", 0) == "none"
    assert resolve_question_embedding("none", Q) == "none" and resolve_question_embedding("rasch", Q) == "rasch"
    with_ids = _model(question_embedding="auto")
    assert with_ids.question_difficulty is not None
    assert with_ids.state_dict().keys() == _model(question_embedding="rasch").state_dict().keys()
    params = dict(DEFAULTS, seq_len=9, d_model=16, n_heads=2, num_encoder_blocks=1, d_ff=24, dropout=0.0)
    torch.manual_seed(0)
    without = GainAKT3Exp.from_params(dict(params, question_embedding="auto"), num_c=C)
    torch.manual_seed(0)
    plain = GainAKT3Exp.from_params(dict(params, question_embedding="none"), num_c=C)
    assert without.question_difficulty is None
    assert all(torch.equal(a, b) for a, b in zip(without.state_dict().values(), plain.state_dict().values()))
