"""The one place that decides what a failed attempt leads to: a retry by RQ, a wait, or the end.

`decide` is asked by the pipeline runner (keep resumable files?), by `run_migration` (which state
and status line?) and by the RQ job function (how to set the job's retries_left).
"""

from dataclasses import dataclass
from typing import Literal

from migratio.errors import MigratioError, TransientError
from migratio.pipeline.status import FAILED, WAITING, WILL_RETRY


class MustWait(TransientError):
    """The job cannot start yet (another job holds what it needs): it is run again later and
    waiting does not use up one of its retries."""


@dataclass(frozen=True)
class Decision:
    retried: bool  # RQ runs the job again
    uses_attempt: bool  # the attempt counts against the job's retries (waiting does not)
    state: Literal["retrying", "waiting", "failed"]  # the job meta's state
    prefix: str  # first words of the attempt's last status line


def decide(exc: BaseException, retries_left: int | None) -> Decision:
    """What follows `exc` for a job that has `retries_left` automatic retries.

    Transient failures and internal errors (a bug may be a one-off) are retried while retries
    last; permanent ones never; an interrupt (not an Exception) never; waiting uses no attempt.
    """
    left = (retries_left or 0) > 0
    if isinstance(exc, MustWait):
        return Decision(left, False, "waiting" if left else "failed", WAITING if left else FAILED)
    retryable = isinstance(exc, Exception) and (exc.retryable if isinstance(exc, MigratioError) else True)
    retried = retryable and left
    return Decision(retried, True, "retrying" if retried else "failed", WILL_RETRY if retried else FAILED)
