"""User-facing failures, each printed as one line without a traceback, with its own exit status:
2 bad input (nothing started), 3 training diverged, 4 the environment failed (disk, permissions),
5 some jobs of a sweep failed (the others ran to the end), 6 a stage could not start from what the stages before
it made."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_ENVIRONMENT = 4
EXIT_SWEEP_JOBS_FAILED = 5
EXIT_STAGE_FAILED = 6


class KdclError(Exception):
    """A bad config key or value, a missing file, a corrupt checkpoint, an unknown model.

    The message names the key, the bad value and a fix; it is printed without a traceback.
    """

    exit_status = EXIT_USER_ERROR


class Diverged(KdclError):
    """A stage's training loss became non-finite: the stage stopped, later stages did not run."""

    exit_status = EXIT_DIVERGED


class EnvironmentFailure(KdclError):
    """The machine refused a write or a read (no space left, no permission, a file vanished)."""

    exit_status = EXIT_ENVIRONMENT


class StageFailed(KdclError):
    """A stage cannot start from what earlier stages made (no temperature makes the teacher as soft as its anchors):
    only known once they ran, so not bad input; the stage is marked failed, the earlier ones are kept."""

    exit_status = EXIT_STAGE_FAILED


class SweepFailed(KdclError):
    """Some jobs of a sweep failed; each recorded its error in its directory, the others finished."""

    exit_status = EXIT_SWEEP_JOBS_FAILED


def io_failure(exc: OSError, doing: str) -> EnvironmentFailure:
    """One line for an OSError: what was being done, on which path, and the system's reason."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f" {exc.filename}" if exc.filename and str(exc.filename) not in doing else ""
    return EnvironmentFailure(f"could not {doing}{where}: {reason} (errno {exc.errno})")


def show(value) -> str:
    """A value as the user typed it: OmegaConf keeps `0` in a float field as 0.0; print it as 0."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def did_you_mean(word: str, options: Iterable[str], n: int = 3) -> str:
    """' (did you mean a, b?)' for the closest options, or '' when none is close."""
    close = difflib.get_close_matches(str(word), list(options), n=n, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def exit_with(err: KdclError) -> None:
    """Print `error: <message>` as a single line on stderr and exit with the error's status."""
    message = " ".join(str(err).split())  # one line, whatever the message was built from
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(err.exit_status)
