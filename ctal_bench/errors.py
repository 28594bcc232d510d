"""User-facing errors: the CLI prints their message on one line and exits with code 2."""
from __future__ import annotations

import errno

# A write that fails for these reasons fails every later write too: the run stops, and what is
# finished stays (every record and checkpoint is written atomically).
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


class UserError(Exception):
    """Bad input from the user (unknown name, bad path, malformed file). Never a bug."""


class DataError(UserError):
    """A dataset file that does not match its documented format.

    The message names the file (and line, where there is one) and what was expected.
    """

    def __init__(self, path, expected: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {expected}")
        self.path, self.expected, self.line = path, expected, line

    def __reduce__(self):  # picklable, so worker processes can raise it
        return (type(self), (self.path, self.expected, self.line))


def storage_error(error: BaseException) -> UserError | None:
    """A UserError for a write that failed for lack of space or permission (``error`` or its
    cause), else None."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            where = f"{seen.filename}: " if seen.filename else ""
            return UserError(f"{where}{seen.strerror}; the run stops here, finished cells are kept "
                             "(free space or fix permissions, then rerun the same command)")
        seen = seen.__cause__ or seen.__context__
    return None
