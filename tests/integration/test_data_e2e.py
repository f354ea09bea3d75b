"""A user's own data set end to end: import pyKT's data.txt, register it outside the project, train through the real
`mlflow run`, then edit the registry entry and watch gakt-repro refuse. Slow (one tiny training)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gainakt3exp.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow

ROOT = PROJECT_ROOT
BIN = Path(sys.executable).parent


def _git_status() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True,
                          check=True).stdout


def _data_txt(path: Path) -> None:
    """pyKT's 6-line data.txt of 200 simulated students (20 skills)."""
    import numpy as np

    from gainakt3exp.data.synthetic import simulate_students

    sim = simulate_students(200, 20, seed=5)
    ends = np.cumsum(sim["lengths"])
    records = [f"{7000 + s},{b - a}\nNA\n{','.join(map(str, sim['skill'][a:b] + 100))}\n"
               f"{','.join(map(str, sim['response'][a:b]))}\nNA\nNA\n"
               for s, (a, b) in enumerate(zip(ends - sim["lengths"], ends))]
    path.write_text("".join(records))


def test_training_on_a_registered_import_keeps_the_project_clean_and_repro_checks_the_entry(tmp_path):
    registry_path = tmp_path / "home" / "registry.json"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "GAKT_CACHE_DIR": str(tmp_path / "cache"), "GAKT_DATA_REGISTRY": str(registry_path),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def gakt(*args):
        return subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=900)

    before = _git_status()
    _data_txt(tmp_path / "data.txt")
    imported = gakt("gakt-data", "import-pykt", "--src", str(tmp_path / "data.txt"), "--out",
                    str(tmp_path / "mine"), "--name", "mine")
    assert imported.returncode == 0, imported.stdout + imported.stderr
    launched = gakt("gakt-launch", "--short_title", "mine", "--profile", "tiny", "--dataset", "mine", "--epochs", "1")
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert _git_status() == before  # nothing of the project was edited or added

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (experiment,) = [e for e in client.search_experiments() if e.name == "gainakt3exp"]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([experiment.experiment_id])
    tags = run.data.tags
    assert tags["gakt.git_dirty"] == ("true" if any(not line.startswith("??") for line in before.splitlines())
                                      else "false")
    assert tags["gakt.data_registry"] == tags["gakt.data_source"] == str(registry_path)
    config = json.loads(Path(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))).read_text())
    entry = json.loads(registry_path.read_text())["mine"]
    assert config["dataset"]["entry"] == entry and entry["dpath"] == str(tmp_path / "mine")
    assert config["dataset"]["origin"] == str(registry_path) and config["dataset"]["root"] == str(tmp_path / "mine")
    assert set(config["dataset"]["file_hashes"]) == {"train_valid_sequences.csv", "test_sequences.csv",
                                                     "test_window_sequences.csv"}

    edited = json.loads(registry_path.read_text())
    edited["mine"]["num_c"] += 1
    registry_path.write_text(json.dumps(edited))
    refused = gakt("gakt-repro", tags["gakt.experiment_id"])
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"entry key 'num_c': {entry['num_c']} at the run, {entry['num_c'] + 1} now" in refused.stderr
    assert len(client.search_runs([experiment.experiment_id])) == 1  # no reproduction run was created


def _question_data_txt(path: Path) -> None:
    """A question-level data.txt: 160 students answering 40 questions, each tagged with 1-3 of 12 concepts."""
    import numpy as np

    rng = np.random.default_rng(11)
    tags = ["_".join(map(str, rng.choice(12, size=k, replace=False) + 50)) for k in rng.integers(1, 4, size=40)]
    skill = rng.normal(size=160)
    difficulty = rng.normal(size=40)
    records = []
    for s in range(160):
        n = int(rng.integers(8, 60))
        q = rng.integers(0, 40, size=n)
        r = (rng.random(n) < 1 / (1 + np.exp(-(skill[s] - difficulty[q])))).astype(int)
        records.append(f"{900 + s},{n}\n{','.join(f'Q{x}' for x in q)}\n{','.join(tags[x] for x in q)}\n"
                       f"{','.join(map(str, r))}\nNA\nNA\n")
    path.write_text("".join(records))


def test_a_question_level_import_trains_with_rasch_and_evaluates_with_pykts_question_protocol(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "GAKT_CACHE_DIR": str(tmp_path / "cache"), "GAKT_DATA_REGISTRY": str(tmp_path / "registry.json"),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def gakt(*args):
        return subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=900)

    _question_data_txt(tmp_path / "data.txt")
    imported = gakt("gakt-data", "import-pykt", "--src", str(tmp_path / "data.txt"), "--out", str(tmp_path / "q"),
                    "--name", "qs", "--maxlen", "50")
    assert imported.returncode == 0, imported.stdout + imported.stderr
    launched = gakt("gakt-launch", "--short_title", "qs", "--profile", "tiny", "--dataset", "qs", "--seq_len", "50",
                    "--epochs", "2", "--question_embedding", "rasch")
    assert launched.returncode == 0, launched.stdout + launched.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    evaluated = gakt("gakt-eval", run.info.run_id)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert "windowauclate_mean" in evaluated.stdout and "headline_auc" in evaluated.stdout
    run = client.get_run(run.info.run_id)
    m = run.data.metrics
    assert run.data.tags["gakt.eval_protocol"] == "pykt-question"
    assert m["eval/headline_auc"] == m["eval/windowauclate_mean"]
    for prefix in ("ori", "window"):
        for key in ("aucconcepts", "auclate_mean", "auclate_vote", "auclate_all", "acclate_mean"):
            assert 0 < m[f"eval/{prefix}{key}"] < 1
        assert m[f"eval/{prefix}answers"] > 100
    assert m["eval/testauc"] == m["eval/test_auc"] and m["eval/window_testauc"] == m["eval/test_window_auc"]
