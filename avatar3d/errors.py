"""User-facing errors.

Anything a user can cause (a bad path, a corrupt video, a stale dataset, ...) raises
:class:`UserError` with a one-line message naming the problem. The CLI prints it as
``avatar3d <command>: error: <message>`` and exits with status 2; no traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line."""

    def __init__(self, message: str):
        message = " ".join(str(message).split())  # always one line
        super().__init__(message)
