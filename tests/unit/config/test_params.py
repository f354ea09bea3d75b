"""Parameters: the defaults file, parsing, validation (all problems at once), profiles, md5."""
import csv
import json

import pytest

from gainakt3exp.config.params import (
    CONFIG_DIR,
    defaults_md5,
    format_value,
    list_profiles,
    load_defaults,
    load_profile,
    parse_value,
    resolve_params,
)
from gainakt3exp.errors import ConfigError


def test_defaults_file_md5_matches_its_defaults():
    raw = json.loads((CONFIG_DIR / "parameter_default.json").read_text())
    assert raw["md5"] == defaults_md5(raw["defaults"])
    assert len(raw["defaults"]) == 79


def test_defaults_match_the_spec_values_that_the_original_docs_got_wrong():
    values = load_defaults().values
    assert values["weight_decay"] == 1.7571e-05
    assert values["learning_rate"] == 0.000174
    assert values["mastery_gain_scale"] == 0.1 and values["gain_performance_margin"] == 0.1


def test_parameters_csv_documents_every_default_with_its_type_and_group():
    defaults = load_defaults()
    with open(CONFIG_DIR / "parameters.csv", newline="") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(defaults.values)
    group_of = {k: g for g, keys in defaults.groups.items() for k in keys}
    for key, value in defaults.values.items():
        assert rows[key]["type"] == defaults.kind(key)
        assert rows[key]["group"] == group_of[key]
        assert parse_value(key, rows[key]["default"], defaults.kind(key)) == value
        assert rows[key]["meaning"]


def test_edited_defaults_file_without_new_md5_is_refused(tmp_path):
    raw = json.loads((CONFIG_DIR / "parameter_default.json").read_text())
    raw["defaults"]["epochs"] = 13
    path = tmp_path / "parameter_default.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="edited without updating md5"):
        load_defaults(path)


@pytest.mark.parametrize("kind,raw,expected", [
    ("bool", "true", True), ("bool", "False", False), ("int", "12", 12), ("float", "1e-3", 0.001),
    ("float", "2", 2.0), ("str", "AdamW", "AdamW"),
])
def test_values_parse_from_strings(kind, raw, expected):
    value = parse_value("k", raw, kind)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("kind,raw", [("bool", "yes"), ("bool", "1"), ("int", "abc"), ("int", "1.5"),
                                      ("float", "nan"), ("float", "x")])
def test_ill_typed_values_are_rejected(kind, raw):
    with pytest.raises(ValueError):
        parse_value("k", raw, kind)


def test_format_value_round_trips_every_default():
    defaults = load_defaults()
    for key, value in defaults.values.items():
        assert parse_value(key, format_value(value), defaults.kind(key)) == value
    assert format_value(True) == "true" and format_value(1.7571e-05) == "1.7571e-05"


def test_every_problem_is_reported_in_one_error():
    with pytest.raises(ConfigError) as info:
        resolve_params({"epochs": "abc", "foo": "1", "d_model": "100", "dropout": "1.5"})
    text = str(info.value)
    assert "4 parameter problems" in text
    assert "epochs='abc': expected an integer" in text
    assert "unknown parameter 'foo'" in text
    assert "n_heads must divide d_model" in text
    assert "dropout=1.5" in text


def test_unknown_parameter_suggests_the_close_name():
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        resolve_params({"learning_rat": "0.1"})


def test_a_weight_whose_head_is_off_names_what_to_change():
    with pytest.raises(ConfigError) as info:
        resolve_params({"use_mastery_head": "false"})
    text = str(info.value)
    assert "mastery_performance_loss_weight=0.8 needs use_mastery_head true" in text
    assert "set mastery_performance_loss_weight 0 or use_mastery_head true" in text


def test_fold_and_seq_len_are_checked_against_the_dataset():
    with pytest.raises(ConfigError) as info:
        resolve_params({"fold": "7", "seq_len": "100"})
    assert "fold=7: assist2015 has folds [0, 1, 2, 3, 4]" in str(info.value)
    assert "set seq_len 200" in str(info.value)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known datasets: assist2015, synthetic, synthetic_many"):
        resolve_params({"dataset": "nope"})


def test_profiles_apply_in_order_and_are_recorded_as_overrides():
    resolved = resolve_params({"epochs": "3"}, ["cpu-small"])
    assert resolved.params["d_model"] == 64 and resolved.params["epochs"] == 3
    assert resolved.overrides["d_model"] == 64 and "dropout" not in resolved.overrides
    assert resolved.profiles == ["cpu-small"]


def test_every_committed_profile_validates_and_changes_exactly_its_overrides():
    names = list_profiles()
    assert {"cpu-default", "cpu-small", "cpu-assist", "cpu-tuned", "pure-bce", "quickstart", "tiny",
            "faithful-mastery"} <= set(names)
    defaults = load_defaults().values
    for name in names:
        overrides = load_profile(name)
        assert overrides and set(overrides) <= set(defaults), name
        resolved = resolve_params({}, [name])
        assert resolved.profiles == [name]
        changed = {k: v for k, v in overrides.items() if v != defaults[k]}
        assert resolved.overrides == changed, name
        assert {k: resolved.params[k] for k in overrides} == overrides, name


def test_faithful_mastery_applies_after_cpu_default_and_keeps_its_model():
    resolved = resolve_params({}, ["cpu-default", "faithful-mastery"])
    assert resolved.profiles == ["cpu-default", "faithful-mastery"]
    p = resolved.params
    assert (p["gain_scope"], p["mastery_link"], p["mastery_in_prediction"]) == ("practised_skill", "logistic", "logit")
    assert not p["enable_alignment_loss"] and p["consistency_loss_weight"] == 0.0
    assert (p["d_model"], p["patience"], p["question_embedding"]) == (64, 3, "auto")  # cpu-default's


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known profiles: .*cpu-small"):
        resolve_params({}, ["gpu-huge"])


def test_pure_bce_profile_switches_every_extra_off_without_errors():
    params = resolve_params({}, ["pure-bce"]).params
    assert not params["use_mastery_head"] and not params["use_gain_head"]
    assert not params["enable_alignment_loss"] and not params["enable_lag_gain_loss"]


def _recorded_config(**overrides) -> dict:
    """A config.json as a run records it (experiment.build_config), for the tiny profile."""
    from gainakt3exp.service.record import build_config

    resolved = resolve_params(overrides, ["tiny"], check=False)
    return json.loads(json.dumps(build_config(resolved, experiment_name="e", run_name="r", exp_id="123456",
                                              short_title="t", hashes={}, code={})))


def test_a_parameter_added_after_the_run_takes_its_default_and_is_named():
    from gainakt3exp.service.record import added_since, config_params

    config = _recorded_config(epochs="3")
    for part in ("defaults", "params"):  # as written by the code before lr_schedule existed
        del config[part]["lr_schedule"]
    config["md5"] = defaults_md5(config["defaults"])
    assert added_since(config) == ["lr_schedule"]
    params = config_params(config)
    assert params["lr_schedule"] == "plateau" and params["epochs"] == 3  # the default that keeps the old behaviour


def test_a_parameter_this_code_does_not_know_is_still_refused():
    from gainakt3exp.errors import ReproError
    from gainakt3exp.service.record import config_params

    config = _recorded_config()
    config["defaults"]["future_knob"] = config["params"]["future_knob"] = 1  # a run of newer code
    config["md5"] = defaults_md5(config["defaults"])
    with pytest.raises(ReproError, match="it has parameters this code does not know: future_knob"):
        config_params(config)


def test_a_shared_query_embedding_is_refused_without_concept_embeddings_and_unknown_values_with_the_choices():
    with pytest.raises(ConfigError, match="query_embedding=context shares the context stream's concept embedding, "
                                          "which emb_type qid does not have"):
        resolve_params({"query_embedding": "context"})
    with pytest.raises(ConfigError, match="query_embedding='both': must be own .*, context or value"):
        resolve_params({"query_embedding": "both", "emb_type": "concept_plus_response"})
    assert resolve_params({"query_embedding": "value", "emb_type": "concept_plus_response"}).params[
        "query_embedding"] == "value"


def test_an_unknown_attention_bias_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="attention_bias='rope': must be none .* or alibi"):
        resolve_params({"attention_bias": "rope"})


def test_a_shared_gain_needs_the_gain_head_and_the_mastery_init_scale_must_be_positive():
    with pytest.raises(ConfigError, match="shared_gain=true shares the gain head's weights between skills, but "
                                          "use_gain_head is false: set shared_gain false or use_gain_head true"):
        resolve_params({"shared_gain": True, "use_gain_head": False})
    with pytest.raises(ConfigError, match="mastery_head_init_scale=0.0: must be > 0"):
        resolve_params({"mastery_head_init_scale": 0.0})
    p = resolve_params({"shared_gain": True, "mastery_head_init_scale": 0.01}).params
    assert p["shared_gain"] is True and p["mastery_head_init_scale"] == 0.01


def test_rasch_question_embedding_on_a_concept_level_data_set_is_refused():
    with pytest.raises(ConfigError, match=r"question_embedding=rasch needs question ids, but data set 'synthetic' is "
                                          r"concept-level \(input_type \['concepts'\]\): set question_embedding none"):
        resolve_params({"dataset": "synthetic", "question_embedding": "rasch"})
    with pytest.raises(ConfigError, match="question_embedding='akt': must be none"):
        resolve_params({"question_embedding": "akt"})
