"""Expected failures: stages turn these into one clear message and a non-zero exit, not a traceback."""


class DiffQuantError(Exception):
    """Base class: bad input or state that the user can fix; the message says what and how."""


class ConfigError(DiffQuantError, ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


class DataError(DiffQuantError):
    """A data file breaks its contract (DESIGN section 4); the message names the file and the rows."""
