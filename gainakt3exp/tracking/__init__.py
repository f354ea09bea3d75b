"""Everything that talks to MLflow: the store (connect, runs, artifacts, a server check), the MLflow metric sink and
the tag names. Only service/ and study/ import this package; the loops and the math never do.

The package re-exports the public names of its modules, so callers write `tracking.connect()`, `tracking.TAG_KIND`.
"""
from gainakt3exp.tracking.sink import MlflowSink
from gainakt3exp.tracking.store import (
    EXPERIMENT_ENV,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    EXPERIMENT_NAME,
    WholeCallClient,
    artifact_root,
    check_server,
    check_uri,
    configure,
    connect,
    download_text,
    ensure_experiment,
    experiment_name,
    has_artifact,
    interruptions,
    is_remote,
    json_bytes,
    partial_artifacts,
    publish_bytes,
    read_params,
    redact,
    resolve_run,
    search_runs,
    tracking_uri,
    whole_call,
)
from gainakt3exp.tracking.tags import *  # noqa: F403 - every TAG_ name
