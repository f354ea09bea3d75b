"""The data set's files as a run's dataset inputs: a race with a concurrent run that creates the same dataset is
retried, any other failure is not swallowed."""
import pytest

from gainakt3exp.service.training import _log_inputs_racing


class _Client:
    def __init__(self, failures: list[Exception]):
        self.failures, self.logged = list(failures), []

    def log_inputs(self, run_id, datasets):
        if self.failures:
            raise self.failures.pop(0)
        self.logged.append((run_id, datasets))


def test_a_unique_constraint_race_with_a_concurrent_run_is_tried_again():
    race = RuntimeError("BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                        "datasets.name, datasets.digest")
    client = _Client([race, race])
    _log_inputs_racing(client, "r1", ["d"])
    assert client.logged == [("r1", ["d"])]


def test_other_failures_and_a_race_that_never_ends_are_raised():
    with pytest.raises(RuntimeError, match="store is down"):
        _log_inputs_racing(_Client([RuntimeError("store is down")]), "r1", ["d"])
    race = RuntimeError("UNIQUE constraint failed: datasets.name")
    with pytest.raises(RuntimeError, match="UNIQUE constraint"):
        _log_inputs_racing(_Client([race] * 4), "r1", ["d"], attempts=4)
