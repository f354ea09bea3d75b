"""A study's definition: parsing --folds/--seeds/--grid, validating every child before anything is written, the
parent's config.json and the `gakt-study launch` line that makes the study again.

    from gainakt3exp.study.plan import build_plan
    plan = build_plan("paper", ["tiny"], {"data_root": "data"}, folds="0,1", seeds="42,43", grid_items=[],
                      evaluate=False, workers=2, threads_per_run=1)
    [(s.fold, s.seed) for s in plan.slots]        # [(0, 42), (0, 43), (1, 42), (1, 43)]

Children are ordered grid point, fold, seed; slot = position. Every problem (a bad fold, a grid key that is not a
parameter, a value of the wrong type, a malformed data file, --workers 0) is reported at once (ConfigError, exit 2).
"""
from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass, field

from gainakt3exp.config.params import format_value, load_defaults, parse_value, resolve_params
from gainakt3exp.errors import ConfigError, GaktError, ReproError
from gainakt3exp.service import record as run_record
from gainakt3exp.study import engine

_PER_CHILD = ("fold", "seed")  # set by --folds / --seeds, never by --fold / --grid

@dataclass
class Slot:
    """One child of the study: its place (grid point, fold, seed) and its validated parameters."""

    index: int
    point: int
    fold: int
    seed: int
    values: dict  # the grid point's (or search trial's) parameter values
    params: dict = field(default_factory=dict)
    resolved: object = None


@dataclass
class Plan:
    """A validated study definition (what the parent's config.json records) and its children."""

    short_title: str
    profiles: list
    overrides: dict  # typed base overrides, the same for every child
    folds: list
    seeds: list
    grid: dict  # key -> typed values
    evaluate: bool
    workers: int
    threads_per_run: int
    slots: list = field(default_factory=list)
    kind: str = "study"


def parse_ints(text: str, option: str, problems: list) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; a problem line per bad or repeated item."""
    items = [t.strip() for t in str(text or "").split(",") if t.strip()]
    if not items:
        problems.append(f"{option} {text!r}: give one or more integers separated by commas, e.g. {option} 0,1,2")
        return []
    out = []
    for item in items:
        try:
            value = int(item)
        except ValueError:
            problems.append(f"{option} {text}: {item!r} is not an integer")
            continue
        if value in out:
            problems.append(f"{option} {text}: {value} is repeated")
        out.append(value)
    return out


def parse_grid(items: list[str], overrides: dict, problems: list) -> dict:
    """['learning_rate=1e-3,3e-3'] -> {'learning_rate': [0.001, 0.003]}, each value typed like the parameter."""
    defaults = load_defaults()
    grid: dict = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            problems.append(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. --grid learning_rate=0.001,0.003")
            continue
        if key not in defaults.values:
            import difflib

            names = [k for k in defaults.values if k not in _PER_CHILD]
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else "; see configs/parameters.csv for the list"
            problems.append(f"--grid {item}: '{key}' is not a parameter{hint}")
            continue
        if key in _PER_CHILD:
            problems.append(f"--grid {item}: {key} is set per child by --{key}s; use --{key}s {values}")
            continue
        if key in grid or key in overrides:
            where = "by another --grid" if key in grid else f"as --{key}"
            problems.append(f"--grid {item}: {key} is also given {where}; give it once")
            continue
        typed = []
        for raw in (v.strip() for v in values.split(",")):
            try:
                value = parse_value(key, raw, defaults.kind(key))
            except ValueError as exc:
                problems.append(f"--grid {item}: {key}={raw!r}: {exc}")
                continue
            if value in typed:
                problems.append(f"--grid {item}: {key}={raw} is repeated")
            typed.append(value)
        grid[key] = typed
    return grid


def _problem_lines(exc: GaktError) -> list[str]:
    """The '  - ...' items of a multi-problem message (params._problem_text), else the message itself."""
    lines = [ln[4:] for ln in str(exc).splitlines() if ln.startswith("  - ")]
    return lines or [str(exc)]


def child_title(plan: "Plan", slot: Slot) -> str:
    """<title>-f0-s42, with -g<point>- for a grid point or -t<trial>- for a search trial."""
    marker = "t" if plan.kind == "search" else "g" if plan.grid else ""
    return f"{plan.short_title}-{f'{marker}{slot.point}-' if marker else ''}f{slot.fold}-s{slot.seed}"


def build_plan(short_title: str, profiles: list, overrides: dict, folds: str, seeds: str, grid_items: list,
               evaluate: bool, workers: int, threads_per_run: int, points: list[dict] | None = None,
               kind: str = "study") -> Plan:
    """Validate a study before anything is written: every child's parameters, the data of every fold, the engine
    settings. All problems are raised together as one ConfigError. `points` (a search trial's values) replaces
    the grid."""
    problems: list[str] = []
    run_record.check_short_title(short_title)
    for key in _PER_CHILD:
        if key in overrides:
            problems.append(f"--{key} {overrides[key]}: a study sets {key} per child; use --{key}s "
                            f"{overrides[key]} (a list, e.g. --{key}s 0,1,2)")
    overrides = {k: v for k, v in overrides.items() if k not in _PER_CHILD}
    for name, value in (("--workers", workers), ("--threads_per_run", threads_per_run)):
        if not isinstance(value, int) or value < 1:
            problems.append(f"{name} {value}: must be a whole number >= 1 (children at once x torch threads "
                            "each; e.g. --workers 2 --threads_per_run 1 on 2 cores)")
    fold_list = parse_ints(folds, "--folds", problems)
    seed_list = parse_ints(seeds, "--seeds", problems)
    problems += [f"--seeds {seeds}: {s} is negative; seeds are >= 0" for s in seed_list if s < 0]
    grid = parse_grid(grid_items, overrides, problems)
    base = {}
    try:
        typed = resolve_params(overrides, profiles, check=False).params
        base = {k: typed[k] for k in overrides}
    except ConfigError as exc:
        problems += _problem_lines(exc)
    if points is None:
        keys = list(grid)
        points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    plan = Plan(short_title, list(profiles), base, fold_list, seed_list, grid, evaluate, workers, threads_per_run,
                kind=kind)
    if problems:  # the children cannot be resolved from a broken base
        raise ConfigError(_problems_text(problems))
    for point, values in enumerate(points):
        for fold, seed in itertools.product(fold_list, seed_list):
            plan.slots.append(Slot(len(plan.slots), point, fold, seed, values))
    longest = max((child_title(plan, s) for s in plan.slots), key=len)
    try:
        run_record.check_short_title(longest)
    except ConfigError:
        problems.append(f"short_title {short_title!r}: too long for the child names ({longest!r} exceeds 64 "
                        "characters); shorten it")
    checked = set()
    for slot in plan.slots:
        try:
            slot.resolved = resolve_params({**base, **slot.values, "fold": slot.fold, "seed": slot.seed}, profiles)
            slot.params = slot.resolved.params
        except ConfigError as exc:
            lines = [f"--folds {folds}: {p}" if p.startswith(f"fold={slot.fold}:") else p for p in _problem_lines(exc)]
            problems += [p for p in lines if p not in problems]
            continue
        key = (slot.params["dataset"], slot.params["data_root"], slot.fold, slot.params["seq_len"])
        if key not in checked:
            checked.add(key)
            try:
                run_record.check_inputs(slot.params)
            except GaktError as exc:
                problems += [str(exc)] if str(exc) not in problems else []
    if problems:
        raise ConfigError(_problems_text(problems))
    return plan


def _problems_text(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} study problems:\n" + "\n".join(f"  - {p}" for p in problems)


def launch_line(plan: Plan, values: dict | None = None) -> str:
    """The `gakt-study launch` command that makes this study again (or, with `values`, one of its points)."""
    args = ["gakt-study", "launch", "--short_title", plan.short_title]
    for name in plan.profiles:
        args += ["--profile", name]
    for key, value in {**plan.overrides, **(values or {})}.items():
        args += [f"--{key}", format_value(value)]
    args += ["--folds", ",".join(map(str, plan.folds)), "--seeds", ",".join(map(str, plan.seeds))]
    if values is None:
        for key, grid_values in plan.grid.items():
            args += ["--grid", f"{key}={','.join(format_value(v) for v in grid_values)}"]
    args += ["--workers", str(plan.workers), "--threads_per_run", str(plan.threads_per_run)]
    return shlex.join(args + (["--eval"] if plan.evaluate else []))


def definition(plan: Plan, *, study_id: str, run_name: str, experiment_name: str, facts: dict, extra=None) -> dict:
    """The parent's config.json: everything the study depends on besides the children's own records."""
    defaults = load_defaults()
    return {
        "kind": plan.kind, "study_id": study_id, "short_title": plan.short_title, "run_name": run_name,
        "experiment_name": experiment_name, "defaults_md5": defaults.md5,
        "profiles": plan.profiles, "overrides": plan.overrides, "folds": plan.folds, "seeds": plan.seeds,
        "grid": plan.grid, "evaluate": plan.evaluate,
        "slots": [{"slot": s.index, "point": s.point, "fold": s.fold, "seed": s.seed, "values": s.values}
                  for s in plan.slots],
        "engine": {"name": "ray", "address": facts["address"], "ray_version": facts["ray_version"],
                   "workers": plan.workers, "threads_per_run": plan.threads_per_run,
                   "num_cpus_per_child": plan.threads_per_run, "max_retries": engine.MAX_RETRIES,
                   "cluster_cpus": facts["cluster_cpus"]},
        "code_version": run_record.code_version(),
        "commands": {"launch": launch_line(plan), "show": f"gakt-study show {study_id}",
                     "resume": f"gakt-study resume {study_id}", "reproduce": f"gakt-repro {study_id}"},
        **(extra or {}),
    }


def plan_from_definition(config: dict, workers: int | None = None) -> Plan:
    """Rebuild (and re-validate) a recorded study's plan, e.g. to resume it with today's code."""
    if config.get("defaults_md5") != load_defaults().md5:
        raise ReproError(f"study {config.get('study_id')}: configs/parameter_default.json changed since the study "
                         "ran (its md5 differs); check out the commit it records "
                         f"({config.get('code_version', {}).get('git_commit', 'unknown')}) to resume it")
    points = {s["point"]: s["values"] for s in config["slots"]}
    plan = build_plan(config["short_title"], config["profiles"], config["overrides"],
                      ",".join(map(str, config["folds"])), ",".join(map(str, config["seeds"])), [],
                      config["evaluate"], workers or config["engine"]["workers"],
                      config["engine"]["threads_per_run"], points=[points[p] for p in sorted(points)],
                      kind=config["kind"])
    plan.grid = config["grid"]
    return plan
