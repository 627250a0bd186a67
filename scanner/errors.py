"""Errors that mean "the input is wrong", reported as one clear line and exit code 2."""


class InputError(ValueError):
    """Bad input or options: the message names the file, row or option and the problem."""
