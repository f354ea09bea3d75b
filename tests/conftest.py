"""Shared fixtures: tiny synthetic data sets, a parsed-array cache, data set registries and tracking stores in tmp
folders.

Nothing here reads outside the repo except ../shared/data (real-data tests), which skip with a reason if missing.
"""
from pathlib import Path

import pytest

from gainakt3exp import tracking
from gainakt3exp.config.params import resolve_params

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Parsed-array cache in a per-session tmp folder, never the user's ~/.cache."""
    monkeypatch.setenv("GAKT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gakt-cache"))


@pytest.fixture(scope="session", autouse=True)
def _session_registry(tmp_path_factory):
    """Session- and module-scoped fixtures (trained runs) read a user data set registry of their own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GAKT_DATA_REGISTRY", str(tmp_path_factory.mktemp("registry") / "data_config.json"))
        yield


@pytest.fixture(autouse=True)
def user_registry(tmp_path, monkeypatch) -> Path:
    """A fresh, empty user data set registry for each test ($GAKT_DATA_REGISTRY), never ~/.config/gainakt3exp."""
    path = tmp_path / "user-registry" / "data_config.json"
    monkeypatch.setenv("GAKT_DATA_REGISTRY", str(path))
    return path


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data_root holding a small `synthetic` data set (120 students, 20 skills, seed 3)."""
    from gainakt3exp.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("data")
    generate_synthetic(root / "synthetic", students=120, skills=20, seed=3, maxlen=200)
    return root


@pytest.fixture
def tiny_params(synthetic_root) -> dict:
    """The `tiny` profile on the small synthetic data set."""
    return resolve_params({"data_root": str(synthetic_root)}, ["tiny"]).params


@pytest.fixture
def local_store(tmp_path, monkeypatch) -> str:
    """A fresh embedded-style SQLite tracking store in tmp_path (artifacts in tmp_path/mlruns)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def shared_assist2015() -> Path:
    path = SHARED_DATA / "assist2015"
    if not (path / "train_valid_sequences.csv").is_file():
        pytest.skip(f"real data not found at {path} (the project expects ../shared/data/assist2015)")
    return path


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory):
    """One real Ray cluster (2 CPUs, 127.0.0.1) for the whole test session, started on first use, always stopped."""
    from ray_utils import start_ray

    cluster = start_ray(tmp_path_factory.mktemp("ray"), num_cpus=2)
    yield cluster.address
    cluster.stop()


@pytest.fixture
def reset_mlflow_uri():
    """tracking.connect() sets MLflow's process-wide URI; a test that connects must not leak it into other tests."""
    yield
    import mlflow

    mlflow.set_tracking_uri(None)


@pytest.fixture
def store_dir(tmp_path, monkeypatch) -> Path:
    """Where the tracking store would go; tests that refuse early assert it was never created."""
    folder = tmp_path / "store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    return folder


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """One real SQLite store for the module (creating MLflow's tables takes seconds); tests use own experiments."""
    path = tmp_path_factory.mktemp("runs_store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}/mlflow.db")
        yield tracking.connect()
