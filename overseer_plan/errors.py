"""Errors the CLI turns into one-line messages.

Library code raises these; only ``cli.py`` prints them and picks the exit code.
"""

from __future__ import annotations


class OverseerError(Exception):
    """Base class for errors a user can act on.

    Attributes:
        exit_code: the process exit code the CLI should use.
    """

    exit_code: int = 2


class UserInputError(OverseerError, ValueError):
    """Bad input from the user: a flag, a file, a model name, a URL.

    The message is one line naming the problem and what to do about it.
    """


class ConfigErrors(UserInputError):
    """Several problems found at once (e.g. in a rule file or a plan file).

    Args:
        problems: one line per problem, each naming the file/key at fault.
        what: short description of what was being read, for the summary line.
    """

    def __init__(self, problems: list[str], what: str = "input"):
        self.problems = list(problems)
        self.what = what
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in {what}"
        super().__init__(head + ": " + "; ".join(self.problems))
