"""The errors minires raises for things a user can fix: a bad argument, a
missing, corrupt or foreign file, a run folder that holds another run.

Each message names the file or argument and says what to do. The command
line prints them as `minires: error: ...` (exit code 2) instead of a
traceback, so a traceback always means a bug in minires.
"""


class MiniresError(ValueError):
    """Bad input from the user (arguments, files, folders); the message says what to do."""


class FileFormatError(MiniresError):
    """A model file or checkpoint that is missing, truncated, corrupt or not minires's."""


class RunFolderError(MiniresError):
    """A run folder that cannot be resumed, or that holds a different run."""
