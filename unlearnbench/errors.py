"""Errors that are the user's to fix: the CLI prints their message, without a traceback."""


class UserError(Exception):
    """Bad input (config, missing dataset/weights/checkpoint, absent device).

    The message must say what is wrong and what to do about it.
    """


class MissingResourceError(UserError):
    """A dataset, weights file or checkpoint is missing or unusable."""


class DivergedError(UserError):
    """Training produced NaN or inf weights, or sampling NaN or inf images: nothing downstream may use them."""


class UndeclaredError(UserError, KeyError):
    """A method's stage read a config section, param or prior it did not declare (a KeyError too, for `.get`)."""

    __str__ = Exception.__str__  # KeyError's would quote the whole message
