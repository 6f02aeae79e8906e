"""User-facing errors: the CLI prints these as one line, without a traceback."""


class LatpruneError(Exception):
    """An error caused by user input or environment, with a message that says what to do."""
