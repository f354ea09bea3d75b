"""The experiment opens as model training in the MLflow UI: ensure_experiment tags a new experiment with its kind,
adds it to an existing one without a kind, and keeps a kind the user chose."""
from __future__ import annotations

import pytest

from gainakt3exp import tracking

KIND = {"mlflow.experimentKind": "custom_model_development"}


@pytest.fixture
def client(local_store):
    return tracking.connect()


def test_a_fresh_experiment_is_a_model_training_experiment(client):
    exp_id = tracking.ensure_experiment(client, "fresh")
    assert client.get_experiment(exp_id).tags.items() >= KIND.items()


def test_an_existing_experiment_without_a_kind_gets_it_and_a_chosen_kind_stays(client):
    old = client.create_experiment("old")
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    assert tracking.ensure_experiment(client, "old") == old
    assert client.get_experiment(old).tags.items() >= KIND.items()
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "finetuning"})
    tracking.ensure_experiment(client, "chosen")
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "finetuning"
