"""Atomic file writes (a reader sees the old file, the whole new one, or nothing; never a part),
with the permissions the umask gives an ordinary new file, and the checks a command makes before
it writes anything."""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable

from ctal_bench.errors import UserError

_umask_lock = threading.Lock()


def new_file_mode() -> int:
    """0o666 less the process's umask: what ``open(path, "w")`` would give (mkstemp gives 0600)."""
    with _umask_lock:  # the umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


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
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.filename is None:  # a failed write names no file: name the one being written
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, durable: bool = False) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), durable)


def save_atomic(path: Path, state: dict) -> None:
    """Atomic ``torch.save``. The state is serialised in memory first: torch's writer reports a
    full disk as an unnamed "unexpected pos" error, a plain write as the OSError it is."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def not_a_file(path: Path, option: str) -> Path:
    """``path``, unless it exists as something other than a directory (one UserError naming ``option``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is a file, expected a directory")
    return path


def writable_dir(path: Path, option: str) -> Path:
    """Check before any work that ``path`` is, or can be made, a directory this process can write
    to; else one UserError naming ``option`` and the reason. Creates nothing: a missing path is
    checked at its nearest existing parent."""
    existing = path = not_a_file(path, option)
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {path}: {existing} is a file, expected a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"{option} {path}: cannot write there ({error.strerror})") from None
    return path
