"""The served-model check shared by the local-store and the team-server tests: a trained run's logged model is
listed by MLflow, registered with an alias by gakt-register, served by a real `mlflow models serve` on 127.0.0.1,
and its /invocations answers equal gakt-predict's and the training code's own forward pass; a malformed request is
answered 400 naming the problem while the server keeps serving.

    from serving_utils import check_served_model      # tests/ is on sys.path under pytest
    check_served_model(env, run_id, data_root, tmp_path, name="gakt-e2e")
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from server_utils import free_port, stop_group

BIN = Path(sys.executable).parent


def _gakt(env, *args, timeout=300):
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def histories(data_root: Path, students: int = 12) -> pd.DataFrame:
    """Interaction rows of the first test students of the synthetic set: every step but the last as history,
    the last as the query (empty response); the first student also gets a history longer than seq_len (200)."""
    test = pd.read_csv(data_root / "synthetic" / "test_sequences.csv").drop_duplicates("uid")
    train = pd.read_csv(data_root / "synthetic" / "train_valid_sequences.csv")
    rows = []
    for i, rec in enumerate(test.head(students).to_dict("records")):
        c = [int(v) for v in rec["concepts"].split(",") if int(v) != -1]
        r = [int(v) for v in rec["responses"].split(",")][:len(c)]
        if i == 0:  # prepend 250 steps of training rows: 250 + len > 199 = seq_len - 1
            tc, tr = [], []
            for trec in train.to_dict("records"):
                more = [int(v) for v in trec["concepts"].split(",") if int(v) != -1]
                tc += more
                tr += [int(v) for v in trec["responses"].split(",")][:len(more)]
                if len(tc) >= 250:
                    break
            c, r = tc[:250] + c, tr[:250] + r
        for t in range(len(c)):
            rows.append({"student": f"s{rec['uid']}", "concept": c[t], "response": r[t] if t < len(c) - 1 else None})
    return pd.DataFrame(rows)


def forward_reference(checkpoint: dict, frame: pd.DataFrame) -> pd.DataFrame:
    """The training code's own forward pass (GainAKT3Exp on make_batch) on the last seq_len - 1 steps of each
    history followed by its query: P(correct), mastery and gains at the last history step."""
    from gainakt3exp.data.sequences import Sequences, make_batch
    from gainakt3exp.model.network import GainAKT3Exp

    model = GainAKT3Exp.from_params(checkpoint["params"], checkpoint["num_c"]).eval()
    model.load_state_dict(checkpoint["state_dict"])
    out = {}
    for student, rows in frame.groupby("student", sort=False):
        c = rows["concept"].to_numpy(np.int64)
        r = np.nan_to_num(rows["response"].to_numpy(float)).astype(np.int64)
        c, r = c[-model.seq_len:], r[-model.seq_len:]
        width = model.seq_len
        seqs = Sequences(concepts=np.pad(c, (0, width - len(c)), constant_values=-1)[None],
                         responses=np.pad(r, (0, width - len(c)), constant_values=-1)[None],
                         selectmasks=np.ones((1, width), bool), uids=np.zeros(1, np.int64),
                         lengths=np.array([len(c)]), truth=None, source="reference", file_hash="")
        b = make_batch(seqs, [0], "cpu")
        with torch.no_grad():
            o = model(b.c, b.r, b.q)
        t = len(c) - 2
        out[student] = {"p_correct": torch.sigmoid(o.logits[0, t].double()).item(),
                        **{f"mastery_{k}": float(o.mastery[0, t, k]) for k in range(model.num_c)},
                        **{f"gain_{k}": float(o.gains[0, t, k]) for k in range(model.num_c)}}
    return pd.DataFrame.from_dict(out, orient="index")


def _post(url: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _records(frame: pd.DataFrame) -> dict:
    data = [[row.student, int(row.concept), None if pd.isna(row.response) else int(row.response)]
            for row in frame.itertuples()]
    return {"dataframe_split": {"columns": ["student", "concept", "response"], "data": data}}


def serve(env: dict, model_uri: str, log_path: Path, timeout: float = 120.0):
    """`mlflow models serve -m MODEL_URI --env-manager local` on 127.0.0.1:<free port>; returns (process, url)."""
    port = free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow models serve exited {proc.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as answer:
                if answer.status == 200:
                    return proc, url
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    stop_group(proc, 15)
    raise AssertionError(f"mlflow models serve not ready after {timeout:.0f} s:\n{log_path.read_text()}")


def check_served_model(env: dict, run_id: str, data_root: Path, tmp_path: Path, *, name: str) -> dict:
    """The whole check; returns the logged model (for store-specific assertions by the caller)."""
    from mlflow.tracking import MlflowClient

    from gainakt3exp.loops.checkpoint import load_checkpoint

    uri = env["MLFLOW_TRACKING_URI"]
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ.update({k: env[k] for k in saved if k in env})
    try:
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        models = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                             filter_string=f"source_run_id = '{run_id}'")
        (model,) = models
        best_epoch = int(run.data.tags["gakt.best_epoch"])
        assert model.tags["gakt.model_epoch"] == str(best_epoch)
        linked = {m.key: m for m in model.metrics or []}
        assert linked["val/auc"].step == best_epoch
        assert abs(linked["val/auc"].value - float(run.data.tags["gakt.best_val_auc"])) < 1e-6
        contexts = {t.value for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
        assert contexts == {"training", "validation", "test", "test_window"}, contexts

        registered = _gakt(env, "gakt-register", run_id, "--name", name, "--alias", "champion").stdout
        assert f"{name} version 1" in registered and f"models:/{name}@champion" in registered
        listed = _gakt(env, "gakt-runs").stdout
        assert f"{name} v1 @champion" in next(line for line in listed.splitlines() if run_id in line)

        frame = histories(data_root)
        frame.to_csv(tmp_path / "history.csv", index=False)
        _gakt(env, "gakt-predict", f"models:/{name}@champion", "--input", str(tmp_path / "history.csv"),
              "--out", str(tmp_path / "mastery.csv"), "--plot", str(tmp_path / "mastery.png"))
        predicted = pd.read_csv(tmp_path / "mastery.csv", dtype={"student": str}).set_index("student")
        assert (tmp_path / "mastery.png").read_bytes().startswith(b"\x89PNG")
        checkpoint = load_checkpoint(Path(client.download_artifacts(run_id, "model_best.pth",
                                                                    str(tmp_path))).read_bytes())
        reference = forward_reference(checkpoint, frame)
        columns = list(reference.columns)
        assert len(predicted) == frame["student"].nunique() == len(reference)
        first = predicted.loc[frame["student"].iloc[0]]
        assert first["steps"] == 199 and first["answers"] > 250, first[:5]  # the long history: its last 199 steps
        np.testing.assert_allclose(predicted.loc[reference.index, columns].to_numpy(), reference.to_numpy(),
                                   atol=1e-6, rtol=0)

        proc, url = serve(env, f"models:/{name}@champion", tmp_path / "serve.log")
        try:
            status, text = _post(url + "/invocations", _records(frame))
            assert status == 200, text
            served = pd.DataFrame(json.loads(text)["predictions"]).set_index("student")
            np.testing.assert_allclose(served.loc[predicted.index, columns].to_numpy(),
                                       predicted[columns].to_numpy(), atol=1e-9, rtol=0)
            bad = frame.head(3).copy()
            bad.loc[1, "response"] = 5
            status, text = _post(url + "/invocations", _records(bad))
            assert status == 400 and "history row 2" in text and "response 5 must be 0 or 1" in text, (status, text)
            status, text = _post(url + "/invocations", _records(frame.head(3)))
            assert status == 200, text  # still serving
        finally:
            stop_group(proc, 15)
        return {"model": model, "client": client}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
