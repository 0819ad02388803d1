"""The errors users see: raised where a problem is detected, printed once by the CLI with their exit code."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_USER_ERROR = 2  # bad input or environment: one message, nothing written
EXIT_NONFINITE = 3  # training stopped at a non-finite loss; the last good checkpoint is kept
EXIT_PREEMPTED = 75  # SIGTERM/SIGUSR1/SIGHUP or the launcher's death: checkpoint saved, run again to resume


class UserError(Exception):
    """A problem with the user's input or environment (recipe, data, run dir, disk): shown as one
    message, no traceback."""

    exit_code = EXIT_USER_ERROR


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite: the run stops without saving the broken state."""

    exit_code = EXIT_NONFINITE


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)'-style hint for a misspelt word, or '' when nothing is close."""
    matches = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f"; did you mean '{matches[0]}'?" if matches else ""
