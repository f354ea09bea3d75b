"""Launch and reproduce: config.json, the explicit commands, experiment ids and run names.

    gakt-launch --short_title baseline --profile cpu-small --epochs 3 --data_root ../shared/data
    gakt-repro 423891

config.json (one per run, an MLflow artifact) is the run's complete record: the pristine defaults, what was
overridden, the resolved parameters, the groups, the defaults' md5, the fixed constants of the objective and the
model, the code version, the data set (its registry entry, where it is defined, its folder and files' hashes) and
the explicit commands (train_explicit = `mlflow run` with every -P).
It is a pure function of (parameters, experiment, run name, code, data), so the launcher and a hand-run of
train_explicit write the same bytes, and a reproduction keeps the original's bytes.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import secrets
import shlex
import subprocess

from gainakt3exp import tracking
from gainakt3exp.config.params import (
    Defaults,
    Resolved,
    defaults_md5,
    format_value,
    kind_of,
    load_defaults,
    parse_value,
)
from gainakt3exp.errors import ConfigError, ReproError
from gainakt3exp.paths import PROJECT_ROOT

CONFIG_NAME = "config.json"
_NAME_RE = re.compile(r"^(?P<ts>\d{8}_\d{6})_gainakt3exp_(?P<title>.+)_(?P<id>\d{6})$")
_TITLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_short_title(title: str) -> str:
    if not _TITLE_RE.match(title or ""):
        raise ConfigError(f"short_title {title!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a "
                          "letter or digit (it becomes part of the run name), e.g. --short_title baseline")
    return title


def _random_exp_id() -> str:
    return f"{secrets.randbelow(900000) + 100000}"


def new_experiment_id(client) -> str:
    """A fresh 6-digit id no run of the store carries yet."""
    for _ in range(50):
        candidate = _random_exp_id()
        if not tracking.search_runs(client, f"tags.`{tracking.TAG_EXP_ID}` = '{candidate}'", max_results=1):
            return candidate
    raise ConfigError("could not find an unused 6-digit experiment id after 50 tries")


def make_run_name(short_title: str, exp_id: str, now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now()
    return f"{now:%Y%m%d_%H%M%S}_gainakt3exp_{short_title}_{exp_id}"


def parse_run_name(name: str) -> tuple[str, str] | None:
    """(short_title, experiment id) of a launcher-made run name, else None."""
    match = _NAME_RE.match(name or "")
    return (match["title"], match["id"]) if match else None


def code_version() -> dict:
    """The git commit of the project and whether tracked files differ from it (MLflow records no dirty flag)."""
    from gainakt3exp import __version__

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True,
                              timeout=20).stdout.strip()

    try:
        commit = git("rev-parse", "--verify", "-q", "HEAD") or "unknown"
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", False
    return {"git_commit": commit, "git_dirty": dirty, "package_version": __version__}


def param_args(params: dict) -> list[str]:
    """`-P key=value` for every parameter, in the defaults file's order."""
    args = []
    for key, value in params.items():
        args += ["-P", f"{key}={format_value(value)}"]
    return args


def train_command(params: dict, experiment_name: str, run_name: str) -> list[str]:
    return ["mlflow", "run", str(PROJECT_ROOT), "--env-manager", "local", "--experiment-name", experiment_name,
            "--run-name", run_name, *param_args(params)]


def eval_command(exp_id: str) -> list[str]:
    return ["gakt-eval", exp_id]


def repro_command(exp_id: str) -> list[str]:
    return ["gakt-repro", exp_id]


def _env_prefix() -> str:
    return f"MLFLOW_TRACKING_URI={shlex.quote(tracking.redact(tracking.tracking_uri()))} "


def data_record(params: dict) -> dict:
    """The run's data set as it is registered now (data.dataset_record: entry, origin, folder, file hashes)."""
    from gainakt3exp.data.registry import resolve_data_root
    from gainakt3exp.data.sequences import dataset_record, dataset_spec

    return dataset_record(dataset_spec(params["dataset"], resolve_data_root(params["data_root"])))


def check_inputs(params: dict) -> None:
    """Parse every file of the run's data set (train_valid, test, test_window), so a malformed file is refused,
    naming file, line and problem, before any run exists. The parsed arrays land in the cache training reads.
    The run's device is checked too: a CUDA device this machine lacks is refused here, not in a FAILED run."""
    from gainakt3exp.data.registry import resolve_data_root
    from gainakt3exp.data.sequences import SPLITS, dataset_spec, load_split
    from gainakt3exp.loops.runtime import resolve_device

    resolve_device(params["device"])
    spec = dataset_spec(params["dataset"], resolve_data_root(params["data_root"]))
    for split in SPLITS:
        load_split(spec, split, params["fold"], params["seq_len"])


def build_config(resolved: Resolved, *, experiment_name: str, run_name: str, exp_id: str, short_title: str,
                 hashes: dict, code: dict, dataset: dict | None = None) -> dict:
    defaults = resolved.defaults or load_defaults()
    params = resolved.params
    return {
        "experiment_id": exp_id,
        "short_title": short_title,
        "run_name": run_name,
        "experiment_name": experiment_name,
        "defaults": defaults.values,
        "types": defaults.groups,
        "md5": defaults.md5,
        "overrides": {k: params[k] for k in params if params[k] != defaults.values[k]},
        "profiles": resolved.profiles,
        "params": params,
        "fixed_constants": _fixed_constants(),
        "objective_report": _objective_report(params),
        "code_version": code,
        "data_hashes": hashes,
        **({"dataset": dataset} if dataset is not None else {}),
        "commands": {
            "train_explicit": _env_prefix() + shlex.join(train_command(params, experiment_name, run_name)),
            "eval_explicit": _env_prefix() + shlex.join(eval_command(exp_id)),
            "reproduce": _env_prefix() + shlex.join(repro_command(exp_id)),
        },
    }


def _objective_report(params: dict) -> dict:
    from gainakt3exp.objective.report import objective_report

    return objective_report(params)


def _fixed_constants() -> dict:
    """Every fixed number of the objective and the model that is not a run parameter."""
    from gainakt3exp.model.network import FIXED_CONSTANTS as MODEL_CONSTANTS
    from gainakt3exp.objective.terms import FIXED_CONSTANTS

    return {**FIXED_CONSTANTS, **MODEL_CONSTANTS}


def added_since(config: dict, defaults: Defaults | None = None) -> list[str]:
    """Parameters of the current code that a config.json lacks: they were added after its run was made."""
    defaults = defaults or load_defaults()
    return sorted(set(defaults.values) - set(config.get("params", {})))


def config_params(config: dict, defaults: Defaults | None = None) -> dict:
    """The typed parameters a config.json records, after checking it is intact. Raises ReproError naming what differs.

    Checks: the md5 of its defaults; defaults + overrides == params; no parameter the current code does not know.
    A parameter added after the run (added_since) takes today's default: every new parameter's default keeps the
    behaviour the code had before it existed, so the run reproduces (gakt-repro says which ones it filled in).
    """
    defaults = defaults or load_defaults()
    problems = []
    for key in ("defaults", "md5", "overrides", "params"):
        if key not in config:
            raise ReproError(f"config.json has no '{key}': not a gainakt3exp config or truncated")
    actual = defaults_md5(config["defaults"])
    if actual != config["md5"]:
        changed = sorted(k for k in defaults.values if config["defaults"].get(k) != defaults.values.get(k))
        hint = f" (differs from today's defaults in: {', '.join(changed)})" if changed else ""
        problems.append(f"its defaults do not match its md5 {config['md5']} (they hash to {actual}): the file was "
                        f"edited after the run{hint}")
    rebuilt = {**config["defaults"], **config["overrides"]}
    for key in sorted(set(rebuilt) | set(config["params"])):
        if rebuilt.get(key) != config["params"].get(key):
            problems.append(f"'{key}': defaults+overrides give {rebuilt.get(key)!r} but params records "
                            f"{config['params'].get(key)!r}")
    unknown = sorted(set(config["params"]) - set(defaults.values))
    if unknown:
        problems.append(f"it has parameters this code does not know: {', '.join(unknown)}")
    if problems:
        raise ReproError("config.json is not consistent:\n" + "\n".join(f"  - {p}" for p in problems))
    typed = {}
    for key, value in {**{k: defaults.values[k] for k in added_since(config, defaults)}, **config["params"]}.items():
        try:
            typed[key] = parse_value(key, value, defaults.kind(key))
        except ValueError as exc:
            raise ReproError(f"config.json: {key}={value!r}: {exc}") from None
    return typed


def compare_logged(logged: dict, params: dict) -> list[str]:
    """Differences between a run's logged param strings and typed parameters (empty = they agree)."""
    diffs = []
    for key in sorted(set(logged) | set(params)):
        want = format_value(params[key]) if key in params else None
        got = logged.get(key)
        if key in params and got is not None:
            try:
                if parse_value(key, got, kind_of(params[key])) == params[key]:
                    continue
            except ValueError:
                pass
        if got != want:
            diffs.append(f"'{key}': logged {got!r}, config.json {want!r}")
    return diffs


def config_bytes(config: dict) -> bytes:
    return tracking.json_bytes(config)


def read_config(client, run_id: str) -> tuple[dict, bytes]:
    raw = tracking.download_text(client, run_id, CONFIG_NAME)
    try:
        return json.loads(raw), raw
    except json.JSONDecodeError as exc:
        raise ReproError(f"config.json of run {run_id} is not valid JSON ({exc}); it was edited or truncated") from None

