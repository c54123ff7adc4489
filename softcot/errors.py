"""Errors a user can act on. The CLI prints them without a traceback and exits with status 2."""


class SoftCoTError(Exception):
    """Base class: the message alone must tell the user what to fix (file, line, key)."""


class ConfigError(SoftCoTError):
    """params.yaml (or a --config override) is invalid."""


class DataError(SoftCoTError):
    """A raw or prepared data file is missing, corrupt or malformed."""


class ChecksumError(DataError):
    """A file's sha256 does not match the pinned value."""


class ModelError(SoftCoTError):
    """A model spec, a materialized model or a checkpoint is missing or inconsistent."""
