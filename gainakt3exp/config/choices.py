"""The allowed values of every choice parameter and the rules between parameters, each defined once.

config/params.py validates a run's parameters with these rules; the model and the objective apply the same rules to
the subset of parameters they are built from (a rule whose parameters are not all given is skipped), so a direct
`GainAKT3Exp(...)` or `Objective(...)` refuses exactly what `gakt-launch` refuses, with the same message.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

EMB_TYPES = ("qid", "concept_plus_response")
ATTENTION_BIASES = ("none", "alibi")
#: query_embedding: the prediction head's vector of the next concept is its own (the seed), or the context / value
#: stream's concept embedding (tied weights; needs emb_type concept_plus_response, whose tables have one row per concept)
QUERY_EMBEDDINGS = ("own", "context", "value")
ALIGNMENT_POPULATIONS = ("pooled", "within_student")
LR_SCHEDULES = ("plateau", "cosine")
OPTIMIZERS = ("Adam", "AdamW")
MASTERY_IN_PREDICTION = ("none", "logit", "logit_skill_free", "mastery_only")
GAIN_SCOPES = ("all_skills", "practised_skill")
MASTERY_LINKS = ("clamp", "logistic")
QUESTION_EMBEDDINGS = ("none", "rasch", "auto")
def resolve_question_embedding(question_embedding: str, num_q: int) -> str:
    """question_embedding auto -> rasch for a data set with question ids (num_q > 0), none without; others as given.
    The one rule deriving a model setting from the data (recorded in a run as tag gakt.derived.question_embedding)."""
    if question_embedding == "auto":
        return "rasch" if num_q > 0 else "none"
    return question_embedding


#: mastery_performance_target: what the mastery-performance constraint ties mastery to
MASTERY_PERFORMANCE_TARGETS = ("answered", "next")

#: The lag-gain reward's per-lag weights: lags 1..len(LAG_WEIGHT_KEYS); lag_max_lag may not exceed it.
LAG_WEIGHT_KEYS = ("lag_l1_weight", "lag_l2_weight", "lag_l3_weight")
MAX_LAG = len(LAG_WEIGHT_KEYS)

#: Each choice parameter: its allowed values, with what each means where the name alone does not say it.
CHOICES: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "optimizer": (OPTIMIZERS, {}),
    "lr_schedule": (LR_SCHEDULES, {}),
    "emb_type": (EMB_TYPES, {"qid": "one embedding per concept-response token",
                             "concept_plus_response": "a concept embedding plus a response embedding"}),
    "attention_bias": (ATTENTION_BIASES, {"none": "plain causal attention",
                                          "alibi": "a per-head penalty growing with the distance between steps"}),
    "query_embedding": (QUERY_EMBEDDINGS, {"own": "the head's own concept embedding",
                                           "value": "the stream's concept embedding, shared"}),
    "alignment_population": (ALIGNMENT_POPULATIONS, {"pooled": "one correlation over the batch",
                                                     "within_student": "each student's correlation, averaged"}),
    "mastery_in_prediction": (MASTERY_IN_PREDICTION, {
        "none": "the head alone", "logit": "the head plus logit m_t[q_t]",
        "logit_skill_free": "the head without the next concept, plus logit m_t[q_t]",
        "mastery_only": "P(correct) = m_t[q_t]: the prediction is the mastery of the concept answered next"}),
    "gain_scope": (GAIN_SCOPES, {}),
    "mastery_link": (MASTERY_LINKS, {}),
    "question_embedding": (QUESTION_EMBEDDINGS, {"none": "concepts only",
                                                 "rasch": "AKT's question difficulty times a concept variation",
                                                 "auto": "rasch when the data set has question ids, else none"}),
    "mastery_performance_target": (MASTERY_PERFORMANCE_TARGETS, {
        "answered": "the mastery of the concept just answered against that answer (linear)",
        "next": "the mastery of the concept about to be answered predicts that answer (BCE)"}),
}

#: Which heads each constraint of the objective reads (a weight > 0 without its head is refused).
CONSTRAINT_HEADS = {
    "non_negative": ("gains",),
    "monotonicity": ("mastery",),
    "mastery_performance": ("mastery",),
    "gain_performance": ("gains",),
    "sparsity": ("gains",),
    "consistency": ("mastery", "gains"),
}
#: Which heads each switch of the objective and the evaluation reads.
SWITCH_HEADS = {
    "enable_alignment_loss": ("mastery", "gains"),
    "enable_global_alignment_pass": ("mastery", "gains"),
    "enable_retention_loss": ("mastery",),
    "enable_lag_gain_loss": ("gains",),
}
HEAD_FLAGS = {"mastery": "use_mastery_head", "gains": "use_gain_head"}


def format_value(value: Any) -> str:
    """The one canonical string of a typed value: what goes into `-P key=value` and the MLflow params."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def choice_problem(key: str, value: Any) -> str | None:
    """None when VALUE is allowed for the choice parameter KEY, else the message naming the allowed values."""
    allowed, meanings = CHOICES[key]
    if value in allowed:
        return None
    named = [f"{v} ({meanings[v]})" if v in meanings else v for v in allowed]
    listed = ", ".join(named[:-1]) + f" or {named[-1]}" if len(named) > 1 else named[0]
    return f"{key}={value!r}: must be {listed}"


def _mastery_in_prediction(p):
    if p["mastery_in_prediction"] != "none" and not p["use_mastery_head"]:
        return (f"mastery_in_prediction={p['mastery_in_prediction']} needs use_mastery_head true: set "
                "mastery_in_prediction none or use_mastery_head true")


def _shared_gain(p):
    if p["shared_gain"] and not p["use_gain_head"]:
        return ("shared_gain=true shares the gain head's weights between skills, but use_gain_head is false: "
                "set shared_gain false or use_gain_head true")


def _logistic_scope(p):
    if p["mastery_link"] == "logistic" and p["gain_scope"] != "practised_skill":
        return (f"mastery_link=logistic needs gain_scope practised_skill (gain_scope is {p['gain_scope']}): set "
                "gain_scope practised_skill or mastery_link clamp")


def _logistic_consistency(p):
    if p["mastery_link"] == "logistic" and p["enhanced_constraints"] and p["consistency_loss_weight"] > 0:
        return (f"mastery_link=logistic with consistency_loss_weight={format_value(p['consistency_loss_weight'])}: "
                "consistency asks m_t - m_{t-1} = scale * g_t, the clamp link's rule; set consistency_loss_weight 0 "
                "or mastery_link clamp")


def _query_embedding(p):
    if p["query_embedding"] != "own" and p["emb_type"] != "concept_plus_response":
        return (f"query_embedding={p['query_embedding']} shares the {p['query_embedding']} stream's concept "
                f"embedding, which emb_type {p['emb_type']} does not have (one row per concept-response token): set "
                "emb_type concept_plus_response or query_embedding own")


def _lag_max_lag(p):
    if not 0 <= p["lag_max_lag"] <= MAX_LAG:
        return f"lag_max_lag={p['lag_max_lag']}: must be 0..{MAX_LAG} (lag weights exist for lags 1..{MAX_LAG})"


#: The rules between parameters: (the parameters a rule reads, the rule). A rule runs once its choices are valid.
_RULES: tuple[tuple[tuple[str, ...], Callable[[Mapping[str, Any]], str | None]], ...] = (
    (("mastery_in_prediction", "use_mastery_head"), _mastery_in_prediction),
    (("shared_gain", "use_gain_head"), _shared_gain),
    (("mastery_link", "gain_scope"), _logistic_scope),
    (("mastery_link", "enhanced_constraints", "consistency_loss_weight"), _logistic_consistency),
    (("query_embedding", "emb_type"), _query_embedding),
    (("lag_max_lag",), _lag_max_lag),
)


def head_problems(p: Mapping[str, Any]) -> list[str]:
    """Every constraint weight > 0 (with enhanced_constraints) and every switch on whose head is off."""
    problems = []
    if "use_mastery_head" not in p or "use_gain_head" not in p:
        return problems
    for name, heads in CONSTRAINT_HEADS.items():
        key = f"{name}_loss_weight"
        off = [HEAD_FLAGS[h] for h in heads if not p[HEAD_FLAGS[h]]]
        if key in p and p.get("enhanced_constraints") and p[key] > 0 and off:
            flags = " and ".join(HEAD_FLAGS[h] for h in heads)
            problems.append(f"{key}={format_value(p[key])} needs {flags} true but {', '.join(off)} is false: "
                            f"set {key} 0 or {off[0]} true")
    for key, heads in SWITCH_HEADS.items():
        off = [HEAD_FLAGS[h] for h in heads if not p[HEAD_FLAGS[h]]]
        if p.get(key) and off:
            flags = " and ".join(HEAD_FLAGS[h] for h in heads)
            problems.append(f"{key}=true needs {flags} true: set {key} false or {off[0]} true")
    return problems


def rule_problems(p: Mapping[str, Any]) -> list[str]:
    """Every problem with the choice parameters in P and the rules between them, for the parameters P has."""
    problems = [msg for key in CHOICES if key in p and (msg := choice_problem(key, p[key]))]
    bad = {key for key in CHOICES if key in p and choice_problem(key, p[key])}
    for keys, rule in _RULES:
        if all(k in p for k in keys) and not bad.intersection(keys):
            msg = rule(p)
            if msg:
                problems.append(msg)
    return problems + head_problems(p)
