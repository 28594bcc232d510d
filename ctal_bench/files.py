"""Atomic file writes: a reader sees the old file, the whole new one, or nothing; never a part."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: Path, write: Callable[[BinaryIO], object], durable: bool = False) -> None:
    """Write through a temporary file in the same directory, then rename it over ``path``.

    ``durable`` also fsyncs before the rename, so the content survives a power cut (result
    records); caches skip that cost (a lost entry is recomputed). On any error, or an
    interrupt, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, durable: bool = False) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), durable)
