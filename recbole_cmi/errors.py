"""Errors that the command-line tools report as one line (no traceback)."""


class RecboleCmiError(Exception):
    """Base class: a problem with the user's input (model, dataset, config, files)."""


class UnknownModelError(RecboleCmiError, ValueError):
    pass


class DatasetError(RecboleCmiError, ValueError):
    pass


class ConfigValueError(RecboleCmiError, ValueError):
    pass


class CheckpointError(RecboleCmiError, ValueError):
    pass


class NonFiniteLossError(RecboleCmiError, ArithmeticError):
    """A training loss became NaN or infinite (``recbole_cmi.trainer`` re-exports it)."""
