"""Atomic file writes, shared by the artifact store, the data writers, the registry and the data cache.

    write_bytes_atomic(Path("mlruns/1/abc/artifacts/model_best.pth"), payload)

A reader sees the old file or the new one whole, never a part: the bytes go to a temp file beside the target
(`.<name>.<8 random characters>.gakt-partial`), are synced, and renamed over it. A failed or interrupted write
leaves the old file and removes its temp file; only a kill -9 mid-write can leave one, which
`gakt-runs --stale --mark` removes from a dead run's artifacts (tracking.partial_artifacts).
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

PARTIAL_SUFFIX = ".gakt-partial"
#: The temp-file names write_bytes_atomic uses: "." + target name + "." + mkstemp's 8 characters + PARTIAL_SUFFIX.
PARTIAL_NAME = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(PARTIAL_SUFFIX))


def write_bytes_atomic(target: Path, data: bytes) -> None:
    """Replace `target` with `data` atomically (parent folders created; the file is 0644: read by the UI/server,
    maybe as another user, where mkstemp would make it 0600)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
