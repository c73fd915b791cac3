"""Errors that are the user's to fix: the CLI prints their message, without a traceback."""

import difflib


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


def did_you_mean(unknown, known) -> str:
    """'; did you mean steps?' when the unknown names are each one slip from a known one (else ''): appended to
    the messages that list what is allowed, so a typo is named as one."""

    known = [str(k) for k in known]
    close = [(str(u), m[0]) for u in unknown if (m := difflib.get_close_matches(str(u), known, n=1, cutoff=0.75))]
    if not close:
        return ""
    if len(close) == 1:
        return f"; did you mean {close[0][1]}?"
    return "; did you mean " + ", ".join(f"{right} for {wrong}" for wrong, right in close) + "?"
