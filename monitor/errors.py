"""Errors a user can act on. The CLI prints their message (no traceback) and exits with 2."""


class MonitorError(Exception):
    """Base of every user-facing error: the message says what is wrong and what to do."""


class ConfigError(MonitorError):
    """A configuration value is missing or invalid; the message names the key."""


class InputError(MonitorError):
    """An input (image, tensor, file) cannot be used; the message says why."""


class ModelError(MonitorError):
    """The monitored model cannot be loaded or probed."""
