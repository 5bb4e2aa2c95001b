"""Errors a user can act on. The CLI prints their message (no traceback) and exits with 2."""


class MonitorError(Exception):
    """Base of every user-facing error: the message says what is wrong and what to do."""


class ConfigError(MonitorError):
    """A configuration value is missing or invalid; the message names the key. `problems` lists
    each problem when several were found at once."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


class InputError(MonitorError):
    """An input (image, tensor, file) cannot be used; the message says why."""


class ModelError(MonitorError):
    """The monitored model cannot be loaded or probed."""
