"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


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
