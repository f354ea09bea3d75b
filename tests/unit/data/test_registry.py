"""The data set registry: built-in sets, the user registry outside the project, pyKT's own data_config.json."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gainakt3exp.cli import main
from gainakt3exp.config.params import resolve_params
from gainakt3exp.data import registry
from gainakt3exp.data import sequences as data
from gainakt3exp.data.layout import pykt_entry
from gainakt3exp.data.synthetic import generate_synthetic
from gainakt3exp.errors import ConfigError


def invoke(*args):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def pykt_home(tmp_path):
    """A pyKT checkout: configs/data_config.json with relative dpaths (../data/<name>) and one data set on disk."""
    home = tmp_path / "pykt-toolkit"
    (home / "configs").mkdir(parents=True)
    generate_synthetic(home / "data" / "toy", students=30, skills=20, seed=2, maxlen=200)
    config = {"toy": pykt_entry("../data/toy", 20, 200, 3, [0, 1, 2, 3, 4]),
              "gone": pykt_entry("../data/gone", 7, 200, 3, [0, 1, 2, 3, 4]),
              "algebra2005": {**pykt_entry("../data/algebra2005", 112, 200, 3, [0, 1, 2, 3, 4]), "num_q": 173113,
                              "input_type": ["questions", "concepts"], "max_concepts": 7}}
    (home / "configs" / "data_config.json").write_text(json.dumps(config, indent=4))
    return home


def test_the_default_user_registry_is_outside_the_project(monkeypatch, tmp_path):
    monkeypatch.delenv("GAKT_DATA_REGISTRY")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert registry.user_registry_path() == tmp_path / ".config" / "gainakt3exp" / "data_config.json"


def test_a_missing_user_registry_holds_no_sets(user_registry):
    assert not user_registry.exists()
    assert {k.kind for k in registry.known_sets().values()} == {"built-in"}


def test_register_from_a_pykt_config_resolves_dpath_against_its_folder(pykt_home, user_registry):
    result = invoke("data", "register", "--pykt-config", str(pykt_home / "configs" / "data_config.json"),
                    "--name", "toy", "--as", "pykt_toy")
    assert result.exit_code == 0, result.output
    entry = json.loads(user_registry.read_text())["pykt_toy"]
    assert entry["dpath"] == str(pykt_home / "data" / "toy")
    assert entry["registered_from"] == str(pykt_home / "configs" / "data_config.json")
    spec = data.dataset_spec("pykt_toy", "ignored")
    assert spec.root == pykt_home / "data" / "toy" and spec.num_c == 20
    assert resolve_params({"dataset": "pykt_toy", "fold": 4}).params["dataset"] == "pykt_toy"


def test_register_takes_concept_level_and_question_level_sets(pykt_home, user_registry):
    result = invoke("data", "register", "--pykt-config", str(pykt_home / "configs" / "data_config.json"))
    assert result.exit_code == 0, result.output
    entries = json.loads(user_registry.read_text())
    assert set(entries) == {"toy", "gone", "algebra2005"}
    assert entries["algebra2005"]["num_q"] == 173113 and registry.is_question_level(entries["algebra2005"])
    assert not registry.is_question_level(entries["toy"])


@pytest.mark.parametrize("num_q", [0, "17", None])
def test_a_question_level_entry_without_a_question_count_is_refused(pykt_home, user_registry, num_q):
    config = json.loads((pykt_home / "configs" / "data_config.json").read_text())
    config["algebra2005"]["num_q"] = num_q
    (pykt_home / "configs" / "data_config.json").write_text(json.dumps(config))
    result = invoke("data", "register", "--pykt-config", str(pykt_home / "configs" / "data_config.json"))
    assert result.exit_code == 2 and f"num_q={num_q!r}" in result.output and "num_q an integer >= 1" in result.output
    assert not user_registry.exists()  # nothing registered when one entry is refused


def test_registering_a_set_whose_files_are_missing_says_so(pykt_home, user_registry):
    result = invoke("data", "register", "--pykt-config", str(pykt_home / "configs" / "data_config.json"),
                    "--name", "gone")
    assert result.exit_code == 0 and "files missing in" in result.output
    listed = invoke("data", "list")
    assert listed.exit_code == 0
    gone = next(line for line in listed.output.splitlines() if line.startswith("gone "))
    assert "user" in gone and "folder missing" in gone


def test_a_built_in_name_cannot_be_registered(pykt_home, user_registry):
    config = pykt_home / "configs" / "data_config.json"
    config.write_text(json.dumps({"synthetic": json.loads(config.read_text())["toy"]}))
    result = invoke("data", "register", "--pykt-config", str(config), "--name", "synthetic")
    assert result.exit_code == 2 and "'synthetic' is a built-in data set" in result.output
    assert invoke("data", "register", "--pykt-config", str(config), "--name", "synthetic", "--as",
                  "my_synthetic").exit_code == 0


def test_a_user_registry_redefining_a_built_in_name_is_refused_naming_both_files(user_registry):
    user_registry.parent.mkdir(parents=True)
    user_registry.write_text(json.dumps({"assist2015": pykt_entry("/x", 100, 200, 3, [0])}))
    with pytest.raises(ConfigError, match=r"'assist2015' is defined in both .*configs/data_config.json \(built-in\) "
                                          r"and the user registry .*gakt-data unregister assist2015"):
        data.dataset_spec("synthetic", "data")
    assert invoke("data", "unregister", "assist2015").exit_code == 0
    assert json.loads(user_registry.read_text()) == {}


@pytest.mark.parametrize("entry, reason", [
    ({"dpath": "/x", "num_c": 3}, "lacks maxlen, folds, train_valid_file, test_file, test_window_file"),
    ({**pykt_entry("/x", 3, 200, 3, [0]), "num_c": "3"}, "num_c='3'"),
])
def test_a_malformed_user_entry_is_refused_naming_the_set_and_file(user_registry, entry, reason):
    user_registry.parent.mkdir(parents=True)
    user_registry.write_text(json.dumps({"mine": entry}))
    with pytest.raises(ConfigError) as e:
        registry.lookup("mine")
    assert f"data set 'mine' in {user_registry}" in str(e.value) and reason in str(e.value)


def test_validation_checks_fold_and_seq_len_of_a_user_set(user_registry):
    registry.register({"mine": pykt_entry("/x", 3, 50, 3, [0, 1])})
    with pytest.raises(ConfigError) as e:
        resolve_params({"dataset": "mine", "fold": 3})
    assert "fold=3: mine has folds [0, 1]" in str(e.value) and "set seq_len 50" in str(e.value)


def test_list_shows_every_set_its_source_and_files(synthetic_root, pykt_home, user_registry):
    invoke("data", "register", "--pykt-config", str(pykt_home / "configs" / "data_config.json"), "--name", "toy")
    result = invoke("data", "list", "--data_root", str(synthetic_root))
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:-1]}
    assert set(rows) == {"assist2015", "synthetic", "synthetic_many", "synthetic_questions", "toy"}
    assert rows["synthetic"][1:5] == ["built-in", "20", "200", "ok"]
    assert rows["toy"][1:5] == ["user", "20", "200", "ok"] and rows["toy"][5] == str(pykt_home / "data" / "toy")
    assert rows["assist2015"][4:6] == ["folder", "missing"]
    assert f"user registry: {user_registry} ($GAKT_DATA_REGISTRY)" in result.output
    one = invoke("data", "list", "toy")
    assert one.exit_code == 0 and f"toy (user, {user_registry}): files ok" in one.output
    assert json.loads(one.output.split("\n", 1)[1])["num_c"] == 20


def test_unregister_refuses_a_built_in_or_unknown_set(user_registry):
    result = invoke("data", "unregister", "synthetic")
    assert result.exit_code == 2 and "(it is a built-in data set" in result.output
    assert invoke("data", "unregister", "nope").exit_code == 2


# ------------------------------------------------------------------ what a reproduction checks (service/reproduce.py)

@pytest.fixture
def recorded(tmp_path, user_registry):
    """A user data set on disk and the config.json fields a run on it records."""
    from gainakt3exp.service.record import data_record

    generate_synthetic(tmp_path / "mine", students=30, skills=20, seed=2, maxlen=200)
    registry.register({"mine": pykt_entry(str(tmp_path / "mine"), 20, 200, 3, [0, 1, 2, 3, 4])})
    params = resolve_params({"dataset": "mine"}).params
    record = data_record(params)
    return {"params": params, "dataset": record, "data_hashes": record["file_hashes"]}


def _check(config):
    from gainakt3exp.service.reproduce import check_data_unchanged

    said = []
    check_data_unchanged(config, config["params"], "r1", echo=said.append)
    return said


def test_an_unchanged_data_set_passes_silently(recorded):
    assert _check(recorded) == []


def test_an_edited_registry_entry_refuses_naming_the_key(recorded, user_registry):
    from gainakt3exp.errors import ReproError

    config = json.loads(user_registry.read_text())
    config["mine"]["num_c"] = 21
    user_registry.write_text(json.dumps(config))
    with pytest.raises(ReproError, match=r"data set 'mine' changed since the run .*\n  - entry key 'num_c': 20 at the "
                                         r"run, 21 now"):
        _check(recorded)


def test_a_changed_data_file_refuses_naming_the_file(recorded, tmp_path):
    from gainakt3exp.errors import ReproError

    path = tmp_path / "mine" / "test_sequences.csv"
    path.write_text(path.read_text().replace('"1,', '"0,', 1))
    with pytest.raises(ReproError, match=r"  - file test_sequences.csv: sha256 [0-9a-f]{12} at the run, [0-9a-f]{12} "
                                         r"now"):
        _check(recorded)


def test_a_moved_folder_with_the_same_files_is_only_noted(recorded, tmp_path, user_registry):
    (tmp_path / "mine").rename(tmp_path / "moved")
    registry.unregister("mine")
    registry.register({"mine": pykt_entry(str(tmp_path / "moved"), 20, 200, 3, [0, 1, 2, 3, 4])})
    said = _check(recorded)
    assert any("entry key 'dpath'" in s and "its files hash as at the run" in s for s in said), said


def test_a_run_from_before_recorded_entries_is_still_reproducible_with_a_warning(recorded):
    old = {k: v for k, v in recorded.items() if k != "dataset"}
    assert _check(old) == ["warning: run r1 was made before runs recorded their data set entry (config.json has no "
                           "'dataset'); only its data files are checked against the hashes it recorded"]
