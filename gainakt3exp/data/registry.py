"""Where data sets are registered: built-in sets in configs/data_config.json, the user's own in a registry file
outside the repository (so registering one never edits a tracked file of the project).

    known = lookup("assist2015")                 # Known(name, entry, origin, kind)
    register("mine", entry)                       # into the user registry
    pykt_entries(Path("~/pykt-toolkit/configs/data_config.json"), "assist2009")

The user registry is the file $GAKT_DATA_REGISTRY, else ~/.config/gainakt3exp/data_config.json; a missing file
holds no data sets. Both files have pyKT's data_config.json format (name -> entry with dpath, num_c, maxlen, folds,
train_valid_file, test_file, test_window_file, ...). A relative dpath is relative to the run's data_root; an
absolute one (what `gakt-data register` and the importers write) ignores data_root.

A name means one data set: a user entry under a built-in name is refused when it is registered, and a registry
that holds one anyway (edited by hand) is refused when read, naming both files.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from gainakt3exp.errors import ConfigError
from gainakt3exp.files import write_bytes_atomic
from gainakt3exp.paths import CONFIG_DIR, PROJECT_ROOT

BUILTIN = CONFIG_DIR / "data_config.json"
REGISTRY_ENV = "GAKT_DATA_REGISTRY"
REQUIRED_KEYS = ("dpath", "num_c", "maxlen", "folds", "train_valid_file", "test_file", "test_window_file")
#: pyKT's question-level evaluation files (generate_question_sequences); optional: gakt-eval rebuilds their rows
#: from test_original_file when they are absent.
QUESTION_FILE_KEYS = ("test_question_file", "test_question_window_file")
#: Keys that say where the files are, not what they hold: a reproduction checks the files' hashes instead.
LOCATION_KEYS = ("dpath", "registered_from")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Known:
    """A data set as registered: its entry, the file that defines it and whether that is the built-in one."""

    name: str
    entry: dict
    origin: Path
    kind: str  # "built-in" | "user"


def user_registry_path() -> Path:
    """$GAKT_DATA_REGISTRY, else ~/.config/gainakt3exp/data_config.json."""
    env = os.environ.get(REGISTRY_ENV)
    return Path(env).expanduser() if env else Path.home() / ".config" / "gainakt3exp" / "data_config.json"


def read_data_config(path: Path, *, missing_ok: bool = False) -> dict:
    """A registry file (name -> entry), its shape checked; a missing file is {} when missing_ok."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise ConfigError(f"data config {path} does not exist"
                          + ("; restore it (git checkout -- configs/data_config.json)" if path == BUILTIN else
                             "; check the path")) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"data config {path} is not valid JSON (line {e.lineno}: {e.msg}); fix the file") from None
    if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
        raise ConfigError(f"data config {path} must be a JSON object of data set name -> entry; fix the file")
    return config


def check_entry(name: str, entry: dict, origin: Path) -> None:
    """Refuse an entry this code cannot load, naming the data set, the file and the key."""
    missing = [k for k in REQUIRED_KEYS if k not in entry]
    if missing:
        raise ConfigError(f"data set {name!r} in {origin} lacks {', '.join(missing)}; a pyKT data_config entry "
                          f"needs {', '.join(REQUIRED_KEYS)}")
    problems = [k for k, ok in (
        ("num_c", isinstance(entry["num_c"], int) and entry["num_c"] >= 1),
        ("maxlen", isinstance(entry["maxlen"], int) and entry["maxlen"] >= 2),
        ("folds", isinstance(entry["folds"], list) and bool(entry["folds"])
         and all(isinstance(f, int) for f in entry["folds"])),
        ("dpath", isinstance(entry["dpath"], str) and bool(entry["dpath"])),
    ) if not ok]
    problems += [k for k in REQUIRED_KEYS[4:] if not isinstance(entry[k], str) or not entry[k]]
    if is_question_level(entry):
        num_q = entry.get("num_q")
        problems += [k for k, ok in (
            ("num_q", isinstance(num_q, int) and not isinstance(num_q, bool) and num_q >= 1),
            ("max_concepts", isinstance(entry.get("max_concepts", 1), int) and entry.get("max_concepts", 1) >= 1),
        ) if not ok]
        problems += [k for k in QUESTION_FILE_KEYS if k in entry and (not isinstance(entry[k], str) or not entry[k])]
    if problems:
        raise ConfigError(f"data set {name!r} in {origin}: {', '.join(f'{k}={entry.get(k)!r}' for k in problems)} "
                          "not allowed (num_c an integer >= 1, maxlen >= 2, folds a list of integers, dpath and "
                          "file names non-empty strings; with input_type questions, num_q an integer >= 1 and "
                          "max_concepts >= 1)")


def is_question_level(entry: dict) -> bool:
    """Whether the data set has question ids (pyKT's input_type holds "questions"): its sequence files carry a
    `questions` and an `is_repeat` column, and a question may be tagged with several concepts."""
    return "questions" in entry.get("input_type", [])


def known_sets() -> dict[str, Known]:
    """Every registered data set, built-in first; raises on a user entry under a built-in name."""
    builtin, user_path = read_data_config(BUILTIN), user_registry_path()
    user = read_data_config(user_path, missing_ok=True)
    clash = sorted(set(builtin) & set(user))
    if clash:
        raise ConfigError(f"data set {clash[0]!r} is defined in both {BUILTIN} (built-in) and the user registry "
                          f"{user_path}; a built-in name cannot be redefined: remove it with "
                          f"`gakt-data unregister {clash[0]}` (or rename it in that file)")
    known = {n: Known(n, e, BUILTIN, "built-in") for n, e in builtin.items()}
    known.update({n: Known(n, e, user_path, "user") for n, e in user.items()})
    return known


def known_summary(known: dict[str, Known]) -> str:
    """'a, b (built-in, <file>); c (user registry <file>)' for messages about unknown names."""
    builtin = [n for n, k in known.items() if k.kind == "built-in"]
    user = [n for n, k in known.items() if k.kind == "user"]
    return (f"{', '.join(builtin)} (built-in, {BUILTIN.parent.name}/{BUILTIN.name}); "
            + (f"{', '.join(user)} (user registry {user_registry_path()})" if user else
               f"none in the user registry {user_registry_path()}"))


def lookup(name: str) -> Known:
    """The registered data set `name` (entry checked); unknown -> ConfigError listing the known ones."""
    known = known_sets()
    if name not in known:
        raise ConfigError(f"data set {name!r} is unknown; known data sets: {known_summary(known)}; "
                          "see gakt-data list, add one with gakt-data register or an importer")
    found = known[name]
    check_entry(name, found.entry, found.origin)
    return found


def dataset_root(entry: dict, data_root: str | Path) -> Path:
    """The folder of a registry entry: data_root / dpath (data_root cwd-relative; an absolute dpath wins)."""
    root = Path(data_root).expanduser()
    return (root if root.is_absolute() else Path.cwd() / root) / Path(entry["dpath"]).expanduser()


def dataset_files(entry: dict) -> list[str]:
    """The files a run of the data set reads: the three sequence files and the truth file if it names one."""
    return [entry["train_valid_file"], entry["test_file"], entry["test_window_file"]] + \
        ([entry["truth_file"]] if entry.get("truth_file") else [])


def check_new_name(name: str, entry: dict) -> bool:
    """Refuse a name that is malformed, built-in, or registered with another entry. True if the same entry is
    already registered under it (registering again changes nothing)."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"data set name {name!r} is not allowed; use letters, digits, '_', '-' and '.' "
                          "(starting with a letter or digit)")
    known = known_sets()
    if name in known and known[name].kind == "built-in":
        raise ConfigError(f"data set {name!r} is a built-in data set ({BUILTIN}); choose another name, "
                          f"e.g. my_{name}")
    if name in known and known[name].entry != entry:
        raise ConfigError(f"data set {name!r} is already in {known[name].origin} with another entry; choose "
                          f"another name or remove that entry first (gakt-data unregister {name})")
    check_entry(name, entry, user_registry_path())
    return name in known


def register(names_entries: dict[str, dict]) -> list[str]:
    """Add data sets to the user registry (locked against concurrent registrations, written atomically, other
    entries kept). All names are checked before anything is written. Returns the names that were new."""
    path = user_registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # read-modify-write: a concurrent registration would be lost
        present = {name: check_new_name(name, entry) for name, entry in names_entries.items()}
        new = [name for name, there in present.items() if not there]
        if new:
            config = read_data_config(path, missing_ok=True)
            config.update({name: names_entries[name] for name in new})
            write_bytes_atomic(path, format_registry(config).encode())
        return new


def unregister(name: str) -> dict:
    """Remove `name` from the user registry (never a built-in set); returns the removed entry."""
    path = user_registry_path()
    builtin = " (it is a built-in data set, in configs/data_config.json)" if name in read_data_config(BUILTIN) else ""
    if not path.is_file():
        raise ConfigError(f"data set {name!r} is not in the user registry {path} (no such file){builtin}")
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        config = read_data_config(path)
        if name not in config:
            raise ConfigError(f"data set {name!r} is not in the user registry {path}{builtin}; see gakt-data list")
        entry = config.pop(name)
        write_bytes_atomic(path, format_registry(config).encode())
        return entry


def pykt_entries(path: Path, name: str | None = None) -> dict[str, dict]:
    """Entries of pyKT's own data_config.json (all, or just `name`), ready to register: each dpath made absolute
    (a relative one is resolved against the folder of that file) and the file recorded as registered_from.
    Concept-level and question-level entries (input_type with "questions", num_q question ids) alike."""
    path = Path(path).expanduser().resolve()
    config = read_data_config(path)
    if name is not None and name not in config:
        raise ConfigError(f"pyKT config {path} has no data set {name!r}; it has: "
                          f"{', '.join(sorted(config)) or 'none'}")
    chosen = {name: config[name]} if name is not None else config
    out = {}
    for key, entry in chosen.items():
        check_entry(key, entry, path)
        dpath = Path(entry["dpath"]).expanduser()
        out[key] = {**entry, "dpath": str((dpath if dpath.is_absolute() else path.parent / dpath).resolve()),
                    "registered_from": str(path)}
    return out


def record_differences(recorded: dict, current: dict) -> tuple[list[str], list[str]]:
    """(changes that alter what a run reads, location-only changes) between two dataset_record dicts.

    The entry's keys are compared except LOCATION_KEYS (dpath, registered_from), which only say where the files
    are: a moved folder whose files hash the same is a note, not a change."""
    changed, moved = [], []
    then, now = recorded.get("entry", {}), current["entry"]
    for key in sorted(set(then) | set(now)):
        if then.get(key) != now.get(key):
            line = f"entry key {key!r}: {then.get(key, '(absent)')!r} at the run, {now.get(key, '(absent)')!r} now"
            (moved if key in LOCATION_KEYS else changed).append(line)
    if recorded.get("root") != current["root"]:
        moved.append(f"folder {recorded.get('root')} at the run, {current['root']} now")
    if recorded.get("origin") != current["origin"]:
        moved.append(f"defined in {recorded.get('origin')} at the run, in {current['origin']} now")
    hashes_then, hashes_now = recorded.get("file_hashes", {}), current["file_hashes"]
    for name in sorted(set(hashes_then) | set(hashes_now)):
        a, b = hashes_then.get(name), hashes_now.get(name)
        if a != b:
            changed.append(f"file {name}: sha256 {(a or '(absent)')[:12]} at the run, {(b or '(absent)')[:12]} now")
    return changed, moved


def format_registry(config: dict) -> str:
    """data_config.json text in the built-in file's style: one key per line, lists on one line."""
    def dump(value) -> str:
        return json.dumps(value, ensure_ascii=False)

    entries = (f"  {dump(name)}: {{\n" + ",\n".join(f"    {dump(k)}: {dump(v)}" for k, v in e.items()) + "\n  }"
               for name, e in config.items())
    return "{\n" + ",\n".join(entries) + "\n}\n" if config else "{}\n"


def resolve_data_root(data_root: str) -> Path:
    """A relative data_root is relative to the project folder (the one holding MLproject), never the cwd."""
    path = Path(data_root).expanduser()
    return path if path.is_absolute() else (PROJECT_ROOT / path)
