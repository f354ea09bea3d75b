"""Run parameters: the defaults file, profiles, overrides, parsing, validation, md5.

    from gainakt3exp.config.params import resolve_params
    resolved = resolve_params({"epochs": "3"}, profiles=["cpu-small"])
    resolved.params["d_model"]  # 64

`configs/parameter_default.json` is the single source of defaults:
`{"defaults": {...}, "types": {group: [keys]}, "md5": md5(json.dumps(defaults, sort_keys=True))}`.
A parameter's value type is the JSON type of its default (bool, int, float, str). No other module holds a
default: everything reads the resolved dict this module returns, and every problem with it is reported at once.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from gainakt3exp.config.choices import LAG_WEIGHT_KEYS, format_value, rule_problems
from gainakt3exp.data.registry import is_question_level, known_sets, known_summary, lookup
from gainakt3exp.errors import ConfigError
from gainakt3exp.paths import CONFIG_DIR

DEFAULTS_FILE = CONFIG_DIR / "parameter_default.json"
PROFILES_DIR = CONFIG_DIR / "profiles"

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_TRUE, _FALSE = {"true"}, {"false"}


@dataclass(frozen=True)
class Defaults:
    """The parsed defaults file: values, groups (the file's `types`), the recorded md5 and the raw text."""

    values: dict
    groups: dict
    md5: str

    def kind(self, key: str) -> str:
        """Value type of a parameter: bool, int, float or str (the JSON type of its default)."""
        return kind_of(self.values[key])


@dataclass
class Resolved:
    """Parameters ready for a run: every key typed, plus what differs from the defaults and why."""

    params: dict
    overrides: dict  # key -> value for every key whose value differs from the default
    profiles: list = field(default_factory=list)
    defaults: Defaults | None = None


def kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "str"


def defaults_md5(values: Mapping[str, Any]) -> str:
    """md5 of json.dumps(defaults, sort_keys=True): the tamper check of the defaults and of config.json."""
    return hashlib.md5(json.dumps(dict(values), sort_keys=True).encode()).hexdigest()


def load_defaults(path: Path = DEFAULTS_FILE) -> Defaults:
    """Read the defaults file and check its md5; an edited file without a new md5 is refused."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: defaults file is missing; restore it from git (git checkout -- {path})")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); restore it from git or fix the syntax")
    missing = [k for k in ("defaults", "types", "md5") if k not in raw]
    if missing:
        raise ConfigError(f"{path}: missing top-level keys {missing}; expected defaults, types, md5")
    values, groups = raw["defaults"], raw["types"]
    actual = defaults_md5(values)
    if actual != raw["md5"]:
        raise ConfigError(
            f"{path}: md5 of the defaults is {actual} but the file records {raw['md5']}: the defaults were edited "
            f"without updating md5. If the edit is deliberate, set \"md5\" to \"{actual}\"; otherwise restore the file."
        )
    grouped = [k for keys in groups.values() for k in keys]
    if sorted(grouped) != sorted(values):
        raise ConfigError(f"{path}: 'types' groups must list every default exactly once")
    return Defaults(values=values, groups=groups, md5=raw["md5"])


def parse_value(key: str, raw: Any, kind: str) -> Any:
    """Parse a string (or an already typed value) into `kind`; raises ValueError with what is allowed."""
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("expected a boolean: true or false")
    if kind == "int":
        if isinstance(raw, bool):
            raise ValueError("expected an integer")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ValueError("expected an integer, e.g. 12") from None
    if kind == "float":
        if isinstance(raw, bool):
            raise ValueError("expected a number")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError("expected a number, e.g. 0.001 or 1e-3") from None
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        return value
    return str(raw)


def parameter_meanings() -> dict[str, str]:
    """Each parameter's one-line help, `meaning [type, default D]`, from configs/parameters.csv."""
    import csv

    with open(CONFIG_DIR / "parameters.csv", newline="") as handle:
        return {row["name"]: f"{row['meaning']} [{row['type']}, default {row['default']}]"
                for row in csv.DictReader(handle)}


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.json"))


def load_profile(name: str) -> dict:
    """A named override set from configs/profiles/<name>.json (`{"description": ..., "overrides": {...}}`)."""
    path = PROFILES_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"unknown profile '{name}'; known profiles: {', '.join(list_profiles())}")
    data = json.loads(path.read_text())
    if "overrides" not in data:
        raise ConfigError(f"{path}: a profile needs an 'overrides' object")
    return data["overrides"]


def resolve_params(
    overrides: Mapping[str, Any] | None = None,
    profiles: Sequence[str] = (),
    *,
    defaults: Defaults | None = None,
    check: bool = True,
) -> Resolved:
    """Defaults, then each profile in order, then `overrides` (strings or typed values); parsed and validated.

    Every problem (unknown key, wrong type, invalid value, inconsistent combination) is collected and raised
    as one ConfigError, before any work starts.
    """
    defaults = defaults or load_defaults()
    merged: dict[str, Any] = {}
    for name in profiles:
        merged.update(load_profile(name))
    merged.update(overrides or {})
    problems: list[str] = []
    params = dict(defaults.values)
    for key, raw in merged.items():
        if key not in defaults.values:
            close = difflib.get_close_matches(key, list(defaults.values), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else "; see configs/parameters.csv for the list"
            problems.append(f"unknown parameter '{key}'{hint}")
            continue
        try:
            params[key] = parse_value(key, raw, defaults.kind(key))
        except ValueError as exc:
            problems.append(f"{key}={raw!r}: {exc}")
    if check:
        problems.extend(check_params(params))
    if problems:
        raise ConfigError(_problem_text(problems))
    changed = {k: v for k, v in params.items() if v != defaults.values[k] or type(v) is not type(defaults.values[k])}
    return Resolved(params=params, overrides=changed, profiles=list(profiles), defaults=defaults)


def recorded_params(strings: Mapping[str, str], defaults: Defaults | None = None) -> tuple[dict, list[str]]:
    """The typed parameters a run recorded (its logged `key -> string`), with every parameter added after the run
    filled in with today's default, which by rule keeps the behaviour the code had before the parameter existed.
    Returns (params, the keys filled in). Unknown keys are still errors (a run of newer code)."""
    defaults = defaults or load_defaults()
    added = sorted(set(defaults.values) - set(strings))
    filled = {**{k: format_value(defaults.values[k]) for k in added}, **strings}
    return resolve_params(filled, defaults=defaults).params, added


def with_added_defaults(params: Mapping[str, Any], defaults: Defaults | None = None) -> dict:
    """A typed parameter dict (a checkpoint's) with the parameters added after it was written at their defaults."""
    defaults = defaults or load_defaults()
    return {**{k: v for k, v in defaults.values.items() if k not in params}, **params}


def parse_param_strings(strings: Mapping[str, str], defaults: Defaults | None = None) -> dict:
    """Parse a complete set of `key -> string` (as logged by MLflow or passed by the MLproject) into typed values.

    Missing or unknown keys are errors: a run must name every parameter.
    """
    defaults = defaults or load_defaults()
    missing = sorted(set(defaults.values) - set(strings))
    problems = [f"missing parameter '{k}'" for k in missing]
    if problems:
        raise ConfigError(_problem_text(problems))
    return resolve_params(strings, defaults=defaults).params


def _problem_text(problems: Iterable[str]) -> str:
    problems = list(problems)
    head = f"{len(problems)} parameter problem{'s' if len(problems) > 1 else ''}:"
    return "\n".join([head] + [f"  - {p}" for p in problems])


# --- validation --------------------------------------------------------------------------------------------------

_NON_NEGATIVE = [
    "seed", "weight_decay", "gradient_clip", "lr_plateau_patience", "monitor_freq", "non_negative_loss_weight",
    "monotonicity_loss_weight", "mastery_performance_loss_weight", "gain_performance_loss_weight",
    "sparsity_loss_weight", "consistency_loss_weight", "gain_performance_margin", "warmup_constraint_epochs",
    "alignment_weight", "alignment_warmup_epochs", "alignment_share_cap", "retention_delta", "retention_weight",
    "lag_gain_weight", *LAG_WEIGHT_KEYS, "consistency_rebalance_new_weight",
    "variance_floor", "question_difficulty_l2",
]
_POSITIVE = [
    "epochs", "batch_size", "learning_rate", "patience", "d_model", "n_heads", "num_encoder_blocks", "d_ff",
    "mastery_gain_scale", "max_semantic_students", "alignment_residual_window", "alignment_global_students",
    "consistency_rebalance_epoch", "variance_floor_patience", "max_correlation_students", "gain_head_init_scale",
    "mastery_head_init_scale",
]


def check_params(p: Mapping[str, Any]) -> list[str]:
    """Every problem with a typed parameter set (empty list = valid). Data-set checks read the data set registry
    (registry.py: configs/data_config.json and the user registry)."""
    problems: list[str] = []
    for k in _NON_NEGATIVE:
        if p[k] < 0:
            problems.append(f"{k}={format_value(p[k])}: must be >= 0")
    for k in _POSITIVE:
        if p[k] <= 0:
            problems.append(f"{k}={format_value(p[k])}: must be > 0")
    for k in ("lr_plateau_factor", "alignment_share_decay_factor", "variance_floor_reduce_factor"):
        if not 0 < p[k] <= 1:
            problems.append(f"{k}={format_value(p[k])}: must be in (0, 1]")
    if p["lr_plateau_factor"] == 1:
        problems.append("lr_plateau_factor=1.0: must be < 1 (1 would never lower the learning rate)")
    if not 0 <= p["dropout"] < 1:
        problems.append(f"dropout={format_value(p['dropout'])}: must be in [0, 1)")
    for k in ("alignment_min_correlation", "consistency_rebalance_threshold"):
        if not -1 <= p[k] <= 1:
            problems.append(f"{k}={format_value(p[k])}: a correlation, must be in [-1, 1]")
    if not _DEVICE_RE.match(p["device"]):
        problems.append(f"device={p['device']!r}: must be auto, cpu, cuda or cuda:N")
    if p["n_heads"] > 0 and p["d_model"] % p["n_heads"]:
        problems.append(
            f"d_model={p['d_model']} n_heads={p['n_heads']}: n_heads must divide d_model "
            f"(e.g. n_heads {_divisor_hint(p['d_model'], p['n_heads'])})"
        )
    if p["seq_len"] < 2:
        problems.append(f"seq_len={p['seq_len']}: must be >= 2")
    problems.extend(rule_problems(p))
    problems.extend(_check_dataset(p))
    return problems


def _divisor_hint(d_model: int, n_heads: int) -> str:
    divisors = [h for h in range(1, min(d_model, 64) + 1) if d_model % h == 0]
    best = min(divisors, key=lambda h: (abs(h - n_heads), h)) if divisors else 1
    return f"{best}, or d_model {((d_model // max(n_heads, 1)) + 1) * n_heads}"


def _check_dataset(p: Mapping[str, Any]) -> list[str]:
    known = known_sets()
    if p["dataset"] not in known:
        return [f"dataset={p['dataset']!r}: unknown; known datasets: {known_summary(known)}; see gakt-data list"]
    entry = lookup(p["dataset"]).entry
    problems = []
    if p["question_embedding"] == "rasch" and not is_question_level(entry):
        problems.append(f"question_embedding=rasch needs question ids, but data set {p['dataset']!r} is "
                        f"concept-level (input_type {entry.get('input_type', ['concepts'])}): set "
                        "question_embedding none or use a question-level data set")
    if p["fold"] not in entry["folds"]:
        problems.append(f"fold={p['fold']}: {p['dataset']} has folds {entry['folds']}")
    if p["seq_len"] != entry["maxlen"]:
        problems.append(
            f"seq_len={p['seq_len']}: the {p['dataset']} files hold windows of {entry['maxlen']} steps; "
            f"set seq_len {entry['maxlen']}"
        )
    return problems
