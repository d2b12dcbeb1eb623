"""Error hierarchy of seqanom: every user-facing failure is one of these."""

from __future__ import annotations


class SeqanomError(Exception):
    """Base of all seqanom errors; CLIs print ``str(err)`` on one line and exit non-zero."""


class SchemaError(SeqanomError, ValueError):
    """An input does not fit the event schema (missing/unmappable column, wrong type)."""


class DataFileError(SeqanomError, ValueError):
    """An input file cannot be read: missing, unreadable, empty, or of an unknown format."""


class ConfigError(SeqanomError, ValueError):
    """A configuration value or command-line option is invalid."""


class NotFittedError(SeqanomError, RuntimeError):
    """A detector was used before ``fit`` or ``load``."""


class ModelFileError(SeqanomError, ValueError):
    """A saved model directory is missing files or has inconsistent contents."""


class PrivacyBudgetExceeded(SeqanomError, RuntimeError):
    """Training would spend more privacy than the configured budget allows."""
