"""Errors that reach the user. The CLI turns them into one line on stderr and an exit status.

UsageError-like problems (bad parameters, bad files, unknown run ids) exit 2; failures of a run exit 1.
Every message names the offending key/file/run, what is wrong, and the fix.
"""


class GaktError(Exception):
    """Base of every error meant for the user; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(GaktError):
    """Invalid parameters, profiles or configuration files (exit 2)."""

    exit_code = 2


class DataError(GaktError):
    """A missing or malformed data file (exit 2). The message names the file, line and reason."""

    exit_code = 2


class RunNotFoundError(GaktError):
    """A run id / experiment id that the tracking store does not know (exit 2)."""

    exit_code = 2


class TrackingError(GaktError):
    """The tracking store or server cannot be reached or refused the request (exit 1)."""

    exit_code = 1


class ReproError(GaktError):
    """A run cannot be reproduced as recorded (tampered config, mismatched params) (exit 2)."""

    exit_code = 2
