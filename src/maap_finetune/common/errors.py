"""User errors versus system errors.

A `UserError` is something the person running the step can fix (bad data, a bad flag,
a missing file). Entry points print it as one clear message and exit with code 2, with no
traceback. Anything else is a bug or an infrastructure fault and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A problem in the user's input, reported without a traceback."""


class ConfigErrors(UserError):
    """Several configuration problems found at once, each with its fix."""

    def __init__(self, problems: Sequence[str], header: str = "invalid configuration"):
        self.problems = list(problems)
        lines = [f"{header} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


def exit_on_user_error(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run `main(argv)`; turn a UserError into a one-message, non-zero exit."""
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None
