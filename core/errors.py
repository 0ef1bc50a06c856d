"""Project exceptions. Every message says what is wrong and what to do about it."""

from __future__ import annotations


class AeronError(Exception):
    """Base class for errors a user can act on; the CLI prints them as one red line."""


class ConfigError(AeronError, ValueError):
    """A configuration value (TOML key, CLI flag, dataclass field) is invalid."""


class DataError(AeronError, ValueError):
    """Input data is malformed; the message names the file and line."""


class CheckpointError(AeronError):
    """A checkpoint is missing, incomplete, corrupted or incompatible."""


class EventSchemaError(AeronError, ValueError):
    """An event does not match the schema; the message names the field."""


class ResourceError(AeronError):
    """The machine ran out of something the run needs (device memory); says what to change."""


class RunDirError(AeronError):
    """A run directory cannot be used: another trainer owns it, or it already holds a run."""
