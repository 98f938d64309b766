"""Mistakes in what a user gave, as opposed to bugs.

The tools print a ``UserInputError`` as one paragraph and exit with status 2
(``resnet_det.engine.defaults.exit_on_user_error``, also for errors raised in ``--num-gpus`` workers);
every other exception is a bug and keeps its traceback. Raise the narrowest class below where the
fault is known to be the user's (a config value, a data set file, a weights file, a path), with a
message that names the file / key / value and the fix. Each class is also the built-in type older
callers catch (ValueError, FileNotFoundError, KeyError).
"""
from __future__ import annotations


class UserInputError(Exception):
    """A problem in what the user gave (config, data, weights, paths); printed without a traceback."""


class ConfigError(UserInputError, ValueError):
    """A config key's value that cannot work; the message names the key, the value and the choices."""


class DataError(UserInputError, ValueError):
    """A data set's files are malformed; the message names the file, the record and the field."""


class WeightsError(UserInputError, ValueError):
    """A weights file that is not readable as weights, or does not fit the model it is given to."""


class MissingFileError(UserInputError, FileNotFoundError):
    """A file or folder the user named (or a data set layout expects) is not there."""

    def __str__(self) -> str:  # the message as written, also when raised with (errno, text) arguments
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UnknownNameError(UserInputError, KeyError):
    """A name (data set, registry entry) that is not registered; prints unquoted, unlike KeyError."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def user_message(error: BaseException) -> str:
    """The paragraph to print for a user error. A DataLoader worker re-raises it as the same class
    with "Caught X in DataLoader worker ... Original Traceback ..." around it: keep only the original."""
    text = str(error)
    if "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]  # "<module>.<Class>: <message>"
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())  # one paragraph, however the message was wrapped
