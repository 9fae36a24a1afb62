"""Errors a user can fix. The CLI prints them as one line and exits non-zero, without a traceback."""


class GenlabError(Exception):
    """A problem with the user's input or environment; the message says what and where."""

    exit_code = 1


class ConfigError(GenlabError):
    """An invalid config: wrong key, wrong type or unknown name (exit status 2, like a usage error)."""

    exit_code = 2
