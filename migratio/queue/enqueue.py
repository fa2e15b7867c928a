"""Enqueueing migrations: exactly what workers consume, from the CLI and from Atmosphere's jobs."""

from collections.abc import Mapping

from redis import Redis
from rq import Queue, RateLimit, Retry
from rq.job import Job

from migratio import ids
from migratio.conf.config import Config
from migratio.conf.sites import Site, load_site
from migratio.errors import ConfigError, MigratioError
from migratio.queue.keys import rate_limit_key

# The job function by its import path: enqueueing does not load the pipeline's clients (boto3,
# paramiko, glanceclient), so the CLI starts fast; workers have them loaded already.
MIGRATE = "migratio.queue.job.migrate"


def migration_queue(config: Config, redis: Redis) -> Queue:
    return Queue(config.queue_name, connection=redis)


def site_rate_limit(config: Config, site: Site) -> RateLimit | None:
    """RQ's concurrency limit for jobs to `site` (its `max_concurrent`), shared by every worker
    of this site on this Redis; None when the site sets no limit."""
    limit = site.limits.max_concurrent
    if limit is None:
        return None
    if limit < 1:
        raise ConfigError(f"{site.path}: key 'max_concurrent' must be at least 1, got {limit}")
    return RateLimit(rate_limit_key(config, site.id), limit)


def enqueue_migration(queue: Queue, config: Config, image_id: str, dest: str, job_id: str | None = None,
                      meta: Mapping[str, object] | None = None, feedback: bool = False) -> Job:
    """Validate the ids, load the destination's conf if it loads, and enqueue (`enqueue_validated`):
    nothing bad is ever queued."""
    image_id, dest = ids.image_id(image_id), ids.site_id(dest)
    return enqueue_validated(queue, config, image_id, dest, _load_or_none(config, dest), job_id=job_id,
                             meta=meta, feedback=feedback)


def enqueue_validated(queue: Queue, config: Config, image_id: str, dest: str, site: Site | None, *,
                      job_id: str | None = None, meta: Mapping[str, object] | None = None,
                      feedback: bool = False) -> Job:
    """Enqueue migrate(image_id, dest) for ids already validated and `site`, dest's conf as loaded.

    Jobs with `meta` source "atmosphere" (the ingest's) or with `feedback` report their status
    lines to Atmosphere.

    With the destination's `max_concurrent` set, the job waits in RQ's rate-limit registry
    (status `rate_limited`) until fewer than that many jobs to the site are queued or running.
    A `site` of None (its conf does not load) gets no limit here: the worker fails the job with
    the conf error and reports it.
    """
    retry = Retry(max=config.retries, interval=config.retry_intervals) if config.retries else None
    return queue.enqueue(
        MIGRATE, image_id, dest,
        job_id=job_id,
        retry=retry,
        job_timeout=config.job_timeout,
        result_ttl=config.result_ttl,
        failure_ttl=config.failure_ttl,
        rate_limit=site_rate_limit(config, site) if site else None,
        description=f"migrate {image_id} to {dest}",
        meta={"state": "queued", "image_id": image_id, "dest": dest, **({"feedback": True} if feedback else {}),
              **(meta or {})},
    )


def _load_or_none(config: Config, dest: str) -> Site | None:
    try:
        return load_site(config.sites_dir, dest)
    except MigratioError:
        return None
