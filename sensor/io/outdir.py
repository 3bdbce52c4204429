"""The output folder (``--out``), checked before any packet is read.

An existing file, a path under a file, a folder the sensor may not write:
one ``ConfigError`` naming the path and the reason (exit 2), instead of an
``OSError`` from the file sink once the replay or the daemon has started.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sensor.core.config import ConfigError
from sensor.records.encode import KINDS


def check_outdir(path: str | Path, option: str = "--out", kinds: Sequence[str] = KINDS) -> Path:
    """Creates the folder if needed and opens (creating, never truncating)
    each record file the file sink will write, so that what fails here is
    what would fail there. Returns the folder."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(option, "out", f"{p} exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(option, "out", f"cannot create the folder {p}: {e.strerror or e}") from None
    for kind in kinds:
        f = p / f"{kind}.jsonl"
        if f.exists() and not f.is_file():
            raise ConfigError(option, "out", f"{f} exists and is not a file")
        try:
            os.close(os.open(f, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640))
        except OSError as e:
            raise ConfigError(option, "out", f"cannot write {f}: {e.strerror or e}") from None
    return p
