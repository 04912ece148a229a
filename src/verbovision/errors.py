"""Errors a user can act on: each names the file, record or key at fault and says why."""


class VerboError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class ConfigError(VerboError):
    """A recipe, override or build option is invalid."""


class DataError(VerboError):
    """A data file or record cannot be used."""
