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

    Transient failures are retried while retries last. Permanent ones never; nor anything that is
    not a MigratioError: an internal error (a bug runs the same way again), RQ's job timeout (the
    job would time out again), an interrupt. Waiting uses no attempt.
    """
    left = (retries_left or 0) > 0
    if isinstance(exc, MustWait):
        return Decision(left, False, "waiting" if left else "failed", WAITING if left else FAILED)
    retried = isinstance(exc, MigratioError) and exc.retryable and left
    return Decision(retried, True, "retrying" if retried else "failed", WILL_RETRY if retried else FAILED)
