"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class RecscaleError(Exception):
    """A problem with the user's input, flags or files.

    The message must stand alone on one line and name the file, line or flag at fault.
    """


class RunInterrupted(RecscaleError):
    """Training stopped on SIGINT/SIGTERM after writing `last`; exits with 128 + the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
