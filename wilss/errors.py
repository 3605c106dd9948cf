"""User-facing errors.

A ``WilssError`` is bad input the user can fix: its message names the problem and the fix, and the
command line prints it as one line (no traceback) and exits non-zero. Anything else is a bug.
"""


class WilssError(Exception):
    """Bad input or environment: the message says what is wrong and how to fix it."""


class ConfigError(WilssError):
    """An unknown config key, a value of the wrong type, or a value out of range."""


class DataError(WilssError):
    """A missing data root, an image without mask, a mask with values outside the class range, ..."""
