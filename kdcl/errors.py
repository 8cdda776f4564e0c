"""The one user-facing error type: a mistake the user can fix, printed as one line, exit status 2."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable

EXIT_USER_ERROR = 2


class KdclError(Exception):
    """A bad config key or value, a missing file, a corrupt checkpoint, an unknown model.

    The message names the key, the bad value and a fix; it is printed without a traceback.
    """


def show(value) -> str:
    """A value as the user typed it: OmegaConf keeps `0` in a float field as 0.0; print it as 0."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def did_you_mean(word: str, options: Iterable[str], n: int = 3) -> str:
    """' (did you mean a, b?)' for the closest options, or '' when none is close."""
    close = difflib.get_close_matches(str(word), list(options), n=n, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def exit_with(err: KdclError) -> None:
    """Print `error: <message>` as a single line on stderr and exit with status 2."""
    message = " ".join(str(err).split())  # one line, whatever the message was built from
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)
