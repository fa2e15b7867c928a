"""What a worker counts for monitoring, as an interface: the pipeline, the job, the ingest and the
feedback sink report to a `Recorder`; the worker's Prometheus metrics (migratio.queue.metrics)
implement it, `NullRecorder` (the default everywhere) drops everything.

Labels are bounded: a destination site id that has a conf (else "unknown"), its type, a step
name, an outcome. Never an image name, a job input that was not validated, or a secret.
"""

from typing import Literal, Protocol

Outcome = Literal["finished", "already_present", "failed", "retried", "waiting", "rejected"]
IngestOutcome = Literal["enqueued", "duplicate", "dead_lettered"]
FeedbackOutcome = Literal["sent", "buffered", "dropped"]
UNKNOWN = "unknown"  # the destination label of a job whose site id or conf is not valid


class Recorder(Protocol):
    def migration_ended(self, dest: str, dest_type: str, outcome: Outcome, seconds: float | None) -> None:
        """One attempt of a migration ended; `seconds` is its duration when it succeeded."""

    def step_ended(self, dest: str, dest_type: str, step: str, seconds: float) -> None:
        """A pipeline step ran (successfully or not) for `seconds`."""

    def bytes_sent(self, dest: str, dest_type: str, count: int) -> None:
        """`count` more payload bytes went to the destination."""

    def transfer_rate(self, dest: str, bytes_per_second: float) -> None:
        """The running job's current transfer rate (0 when it stops sending)."""

    def ingested(self, outcome: IngestOutcome) -> None:
        """One of Atmosphere's Sidekiq jobs was handled by the ingest."""

    def feedback_lines(self, outcome: FeedbackOutcome, count: int = 1) -> None:
        """Status lines for Atmosphere: pushed, made to wait, or given up."""


class NullRecorder:
    """Counts nothing (no `metrics_port`, tests, one-off runs)."""

    def migration_ended(self, dest: str, dest_type: str, outcome: Outcome, seconds: float | None) -> None:
        pass

    def step_ended(self, dest: str, dest_type: str, step: str, seconds: float) -> None:
        pass

    def bytes_sent(self, dest: str, dest_type: str, count: int) -> None:
        pass

    def transfer_rate(self, dest: str, bytes_per_second: float) -> None:
        pass

    def ingested(self, outcome: IngestOutcome) -> None:
        pass

    def feedback_lines(self, outcome: FeedbackOutcome, count: int = 1) -> None:
        pass
