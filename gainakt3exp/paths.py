"""Where the project's own files are: the project folder (the default store and data root resolve against it) and
its configs/ folder (defaults, profiles, the built-in data registry). Defined once; every layer reads it here."""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
