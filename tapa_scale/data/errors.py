"""The one error type the data package raises for bad input data."""


class DataError(ValueError):
    """Bad or missing data: the message names the file and what was expected."""
