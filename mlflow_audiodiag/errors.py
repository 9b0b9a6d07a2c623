"""Exceptions raised for bad user input.

Every message names the offending file or value and says what to do about it.
"""


class AudioDiagError(Exception):
    """Base class of the package's user-facing errors."""


class DataError(AudioDiagError, ValueError):
    """The dataset (a file, a label, a manifest row, a split) cannot be used as given."""


class ConfigError(AudioDiagError, ValueError):
    """A configuration value is out of range or inconsistent with another one."""
