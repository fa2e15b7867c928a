"""Every Redis key migratio reads or writes (RQ's own `rq:` keys are RQ's).

Atmosphere's keys and migratio's bookkeeping beside them are written as redis-namespace does:
`<namespace>:<name>` (no prefix when the namespace is empty): its Sidekiq queues, the
`<namespace>:migratio:` ingest, dead-letter, feedback and worker heartbeat keys. Two older keys
keep their own form, since running workers and operators know them: the per (image, destination) lock
`migratio:<namespace>:lock:<image>:<dest>` and RQ's rate-limit name `migratio:<name>:<site>`.
"""

from dataclasses import dataclass

from migratio.conf.config import Config

FEEDBACK_QUEUE = "feedback"  # Atmosphere's queue for status lines


def key(namespace: str, name: str) -> str:
    """A Redis key as redis-namespace writes it: `<namespace>:<name>` (no prefix when empty)."""
    return f"{namespace}:{name}" if namespace else name


def queue_key(namespace: str, queue: str) -> str:
    """A Sidekiq queue (a list)."""
    return key(namespace, f"queue:{queue}")


def queues_key(namespace: str) -> str:
    """Sidekiq's set of queue names."""
    return key(namespace, "queues")


def dead_key(namespace: str) -> str:
    """The ingest's dead-letter list."""
    return key(namespace, "migratio:dead")


def lock_key(namespace: str, image_id: str, dest: str) -> str:
    """The lock of one (image, destination)."""
    return f"migratio:{namespace}:lock:{image_id}:{dest}"


def alive_key(namespace: str, token: str) -> str:
    """The heartbeat of one worker process (see migratio.queue.liveness); locks name its token."""
    return key(namespace, f"migratio:alive:{token}")


def rate_limit_key(config: Config, site_id: str) -> str:
    """The name of RQ's rate limit for this site's jobs to `site_id` (its `max_concurrent`)."""
    return f"migratio:{config.name}:{site_id}"


@dataclass(frozen=True)
class IngestKeys:
    """The ingest of site `site`: its source queue and its consumers' bookkeeping."""

    namespace: str
    site: str

    @property
    def source(self) -> str:
        return queue_key(self.namespace, f"migration_{self.site}")

    @property
    def dead(self) -> str:
        return dead_key(self.namespace)

    @property
    def consumers(self) -> str:
        return self._own("consumers")

    def processing(self, consumer: str) -> str:
        return self._own(f"processing:{consumer}")

    def alive(self, consumer: str) -> str:
        return self._own(f"alive:{consumer}")

    def claim(self, jid: str) -> str:
        return self._own(f"claim:{jid}")

    @property
    def attempts(self) -> str:
        """A hash: attempts at handling each payload (field: a digest of the payload), and the
        last attempt's error (field: `<digest>:error`)."""
        return self._own("attempts")

    def _own(self, name: str) -> str:
        return key(self.namespace, f"migratio:ingest:{self.site}:{name}")


@dataclass(frozen=True)
class FeedbackKeys:
    """The pacing of status lines to Atmosphere, per migration (`member`)."""

    namespace: str

    @property
    def due(self) -> str:
        return key(self.namespace, "migratio:feedback:due")

    def for_member(self, member: str) -> list[str]:
        """The keys the feedback scripts take, for one migration."""
        return [key(self.namespace, f"migratio:feedback:next:{member}"),
                key(self.namespace, f"migratio:feedback:pending:{member}"),
                self.due, queues_key(self.namespace), queue_key(self.namespace, FEEDBACK_QUEUE)]
