"""Enqueueing migrations: exactly what workers consume, from the CLI and from Atmosphere's jobs."""

from rq import Queue, Retry
from rq.job import Job

from . import ids
from .config import Config
from .job import migrate


def migration_queue(config: Config, redis) -> Queue:
    return Queue(config.queue_name, connection=redis)


def enqueue_migration(queue: Queue, config: Config, image_id: str, dest: str,
                      job_id: str | None = None, meta: dict | None = None) -> Job:
    """Enqueue migrate(image_id, dest); ids are validated first, so nothing bad is ever queued."""
    image_id, dest = ids.image_id(image_id), ids.site_id(dest)
    retry = Retry(max=config.retries, interval=config.retry_intervals) if config.retries else None
    return queue.enqueue(
        migrate, image_id, dest,
        job_id=job_id,
        retry=retry,
        job_timeout=config.job_timeout,
        result_ttl=config.result_ttl,
        failure_ttl=config.failure_ttl,
        description=f"migrate {image_id} to {dest}",
        meta={"state": "queued", "image_id": image_id, "dest": dest, **(meta or {})},
    )
