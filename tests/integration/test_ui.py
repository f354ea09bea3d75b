"""What the MLflow UI shows: the experiment opens as model training, and the README's path to the trajectory charts
(checked in a real headless Chromium against a real `mlflow server`, slow)."""
from __future__ import annotations

from pathlib import Path

import pytest

KIND = {"mlflow.experimentKind": "custom_model_development"}


# ------------------------------------------------------------------ the real UI in a headless Chromium (slow)

def _ui_run(tmp_path):
    """A real `mlflow server` holding one launched and evaluated tiny run: (server, experiment id, run)."""
    import os
    import subprocess
    import sys

    from server_utils import client_env, start_server

    from gainakt3exp.data.synthetic import generate_synthetic

    bin_dir = Path(sys.executable).parent
    generate_synthetic(tmp_path / "data" / "synthetic", students=120, skills=20, seed=3, maxlen=200)
    server = start_server(tmp_path / "srv")
    env = {**client_env(server, cache_dir=tmp_path / "cache"), "GAKT_DATA_REGISTRY": os.environ["GAKT_DATA_REGISTRY"]}
    for args in (["gakt-launch", "--short_title", "ui", "--profile", "tiny", "--data_root", str(tmp_path / "data")],
                 ["gakt-eval", "--device", "cpu", None]):
        if args[-1] is None:
            args[-1] = subprocess.run([str(bin_dir / "gakt-runs"), "--latest_id"], env=env, capture_output=True,
                                      text=True, check=True).stdout.strip()
        proc = subprocess.run([str(bin_dir / args[0]), *args[1:]], env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.url)
    (experiment,) = [e for e in client.search_experiments() if e.name == "gainakt3exp"]
    (run,) = client.search_runs([experiment.experiment_id])
    return server, experiment, run


SECTIONS = ("[...document.querySelectorAll('[data-testid=experiment-view-compare-runs-section-header]')]"
            ".map(e => e.innerText.replace(/\\s+/g, ' ').replace(' Add chart', '').trim())")
TITLES = ("[...document.querySelectorAll('h4')].filter(e => e.getBoundingClientRect().top < innerHeight)"
          ".map(e => e.innerText)")


@pytest.mark.slow
def test_the_readme_path_shows_the_trajectory_charts_first(tmp_path):
    import os
    import shutil

    from ui_utils import CHROMIUM, Browser

    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)")
    server, experiment, run = _ui_run(tmp_path)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    run_id, name = run.info.run_id, run.info.run_name
    n_eval = len([k for k in run.data.metrics if k.startswith("eval/")])
    n_traj = len([k for k in run.data.metrics if k.startswith("trajectory/")])
    base = f"{server.url}/#/experiments/{experiment.experiment_id}"
    shots = {}
    try:
        with Browser(tmp_path / "profile") as page:
            # 1. the experiment as model training: its runs table, not the GenAI overview
            page.goto(f"{base}/runs?workflowType=machine_learning")
            page.wait_for(f"document.body.innerText.includes({name!r})", settle=1)
            text = page.evaluate("document.body.innerText")
            assert "Model training" in text and "Runs" in text and "Evaluation runs" not in text
            shots["runs"] = page.screenshot(tmp_path / "ui-runs.png")
            # 2. the run's Model metrics tab as it opens: sections in name order, eval/* before trajectory/*
            page.goto(f"{base}/runs/{run_id}/model-metrics?workflowType=machine_learning")
            sections = page.wait_for(f"(() => {{ const s = {SECTIONS}; return s.length > 3 ? s : null }})()",
                                     settle=1)
            assert f"eval ({n_eval})" in sections and f"trajectory ({n_traj})" in sections
            assert sections.index(f"eval ({n_eval})") < sections.index(f"trajectory ({n_traj})")
            shots["unfiltered"] = page.screenshot(tmp_path / "ui-metrics-unfiltered.png")
            # 3. the README's step: type trajectory/ in "Search metric charts"
            page.type_into("input[placeholder='Search metric charts']", "trajectory/")
            page.wait_for(f"{SECTIONS}.length === 1", timeout=30)
            assert page.evaluate(SECTIONS) == [f"trajectory ({n_traj})"]
            page.wait_for("document.querySelectorAll('svg.main-svg').length >= 3", settle=1.5)
            visible = page.evaluate(TITLES)
            assert {"mastery_correlation", "gain_correlation"} & set(visible) and len(visible) >= 6, visible
            assert all(t in {k.split("/", 1)[1] for k in run.data.metrics if k.startswith("trajectory/")}
                       for t in visible)
            shots["trajectory"] = page.screenshot(tmp_path / "ui-trajectory.png")
            # 4. the evaluation numbers as one table in the Artifacts tab
            page.goto(f"{base}/runs/{run_id}/artifacts/eval_table.json?workflowType=machine_learning")
            page.wait_for("document.body.innerText.includes('test_window')", timeout=30, settle=1)
            text = page.evaluate("document.body.innerText")
            assert "View as table" in text and "mastery_correlation" in text
            shots["table"] = page.screenshot(tmp_path / "ui-eval-table.png")
    finally:
        server.stop()
    if os.environ.get("GAKT_UI_SCREENSHOTS"):  # how the README's picture is refreshed
        for path in shots.values():
            shutil.copy(path, Path(os.environ["GAKT_UI_SCREENSHOTS"]) / path.name)
