"""Ingest: Atmosphere's Sidekiq jobs on `<namespace>:queue:migration_<name>` become RQ migrations.

Nothing lost, nothing run twice, several workers per site:

1. Each ingest consumer (one per `migratio worker` process) registers in the set
   `<ns>:migratio:ingest:<name>:consumers` and keeps a heartbeat key `...:alive:<consumer>`
   (SET EX, refreshed every `heartbeat_ttl / 3` s) before it takes anything.
2. It takes a payload with BLMOVE from the queue's right end (Sidekiq clients LPUSH, servers
   BRPOP) into its own list `...:processing:<consumer>`. The move is atomic: each payload is in
   exactly one list at any time, so two consumers never take the same payload.
3. A valid payload becomes the RQ job `sidekiq-<jid>`; it is enqueued only if no RQ job with that
   id exists, then removed from the processing list. A process dying before the enqueue leaves
   the payload in its list (recovered below); dying after it makes the recovered copy a no-op.
4. Recovery (at start, then every `recover_every` s) moves the processing list of every consumer
   whose heartbeat has expired back to the queue's right end, in one Lua script that checks the
   heartbeat first, so a live consumer's in-flight payload is never taken. A consumer frozen for
   longer than the heartbeat TTL can have its payload recovered while it still holds it; a
   per-jid claim (SET NX, `claim_ttl`) then serialises the two so the job is enqueued once.
   (Not covered: a freeze longer than `claim_ttl` inside one check-then-enqueue. RQ's atomic
   enqueue options, a pipeline or `unique=True`, refuse the rate-limited jobs of sites with
   `max_concurrent`, hence the claim.)
5. A payload that cannot be a migration is moved (atomically, from the processing list) to the
   dead-letter list `<ns>:migratio:dead` as JSON {payload, reason, at, queue, consumer}, logged,
   and answered with a feedback line when it names a valid image UUID and a destination.
6. Whatever a payload holds, it never holds up the jobs behind it: one whose handling raises an
   error nobody foresaw goes back to the end of the queue, and after `max_attempts` attempts
   (counted per payload in Redis, see migratio.queue.attempts) it is a dead letter with the
   last error as its reason.
"""

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from typing import Callable

import redis
from rq import Queue

from migratio.conf.config import Config
from migratio.conf.sites import Site, load_site, site_path
from migratio.errors import ConfigError, MigratioError, describe
from migratio.pipeline.recorder import IngestOutcome, NullRecorder, Recorder
from migratio.pipeline.status import REJECTED, JobInfo, StatusSink
from migratio.queue import scripts
from migratio.queue.attempts import Attempts, gave_up
from migratio.queue.enqueue import enqueue_validated
from migratio.queue.keys import IngestKeys
from migratio.queue.sidekiq import BadPayload, MigrationRequest, parse_migration

log = logging.getLogger("migratio.ingest")

JOB_PREFIX = "sidekiq-"
COUNTED: dict[str, IngestOutcome] = {"enqueued": "enqueued", "duplicate": "duplicate", "dead": "dead_lettered"}


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Ingest:
    """Moves this site's Sidekiq migration jobs into its RQ queue (see the module docstring)."""

    def __init__(self, client: redis.Redis, config: Config, queue: Queue,
                 feedback: StatusSink | None = None, *, consumer: str | None = None,
                 block: float = 2.0, heartbeat_ttl: int = 30, recover_every: float = 15.0,
                 claim_ttl: int = 60, dead_max: int = 10000, max_attempts: int = 5,
                 clock: Callable[[], float] = time.monotonic, metrics: Recorder | None = None):
        self.redis, self.config, self.queue, self.feedback = client, config, queue, feedback
        self.metrics = metrics or NullRecorder()
        self.keys = IngestKeys(config.namespace, config.name)
        self.consumer = consumer or consumer_name()
        self.processing = self.keys.processing(self.consumer)
        self.block, self.heartbeat_ttl, self.recover_every = block, heartbeat_ttl, recover_every
        self.claim_ttl, self.dead_max, self.clock = claim_ttl, dead_max, clock
        self.attempts, self.max_attempts = Attempts(client, self.keys.attempts, max_attempts), max_attempts
        self._last_beat = self._last_recover = float("-inf")
        self._recover_held = scripts.load(client, "ingest_recover")
        self._dead, self._back = scripts.load(client, "ingest_dead"), scripts.load(client, "ingest_back")
        self._release = scripts.load(client, "delete_if_equal")
        self._recheck = False  # own processing list may hold a payload an error left behind

    # --- lifecycle -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Take and convert jobs until `stop` is set; Redis outages are waited out."""
        log.info("ingest %s: taking Sidekiq jobs from %s", self.consumer, self.keys.source)
        failing, delay = False, 1.0
        while not stop.is_set():
            try:
                if self.step() in ("busy", "failed"):
                    stop.wait(1.0)  # its claim holder finishes or the claim expires; a failure is not hurried
                if failing:
                    log.info("ingest %s: Redis answers again", self.consumer)
                failing, delay = False, 1.0
            except redis.RedisError as exc:
                if not failing:
                    log.warning("ingest %s: Redis error (%s); retrying", self.consumer, exc)
                failing, self._recheck = True, True
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
            except Exception:
                log.exception("ingest %s: unexpected error; retrying", self.consumer)
                self._recheck = True
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
        self.close()

    def step(self) -> str | None:
        """One round: heartbeat and recovery when due, then take and handle one payload."""
        self._housekeeping()
        if self._recheck:
            self._retry_own()
        raw = self.redis.blmove(self.keys.source, self.processing, self.block, "RIGHT", "LEFT")
        return None if raw is None else self.handle(raw)

    def drain(self) -> dict[str, int]:
        """Convert everything queued right now and stop (for `migratio worker --burst`)."""
        try:
            self._housekeeping()
            outcomes, failed = self._retry_own(), set()
            while (raw := self.redis.lmove(self.keys.source, self.processing, "RIGHT", "LEFT")) is not None:
                if raw in failed:  # it went round the queue once: left for the next run
                    self._back(keys=[self.processing, self.keys.source], args=[raw])
                    break
                outcomes.append(outcome := self.handle(raw))
                if outcome == "busy":
                    break  # put back; taking it again now would only spin
                if outcome == "failed":
                    failed.add(raw)
        finally:
            self.close()
        return dict(Counter(outcomes))

    def close(self) -> None:
        """Unregister: drop the heartbeat and hand anything still held back to the queue."""
        try:
            self.redis.delete(self.keys.alive(self.consumer))
            self._recover_one(self.consumer)
        except redis.RedisError as exc:
            log.warning("ingest %s: could not unregister (%s); others recover it after %ss",
                        self.consumer, exc, self.heartbeat_ttl)

    def beat(self) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.keys.alive(self.consumer), str(time.time()), ex=self.heartbeat_ttl)
        pipe.sadd(self.keys.consumers, self.consumer)
        pipe.execute()
        self._last_beat = self.clock()

    def recover(self, scan: bool = False) -> int:
        """Give the payloads held by dead consumers back to the queue; returns how many."""
        consumers = {c.decode() if isinstance(c, bytes) else c for c in self.redis.smembers(self.keys.consumers)}
        if scan:  # also lists whose owner never made it into the set
            prefix = self.keys.processing("")
            for name in self.redis.scan_iter(match=f"{prefix}*", count=1000):
                consumers.add((name.decode() if isinstance(name, bytes) else name)[len(prefix):])
        consumers.discard(self.consumer)
        total = sum(max(0, self._recover_one(c)) for c in sorted(consumers))
        self._last_recover = self.clock()
        return total

    # --- one payload -------------------------------------------------------------------------

    def handle(self, raw: bytes) -> str:
        """Turn one payload held in our processing list into an RQ job or a dead letter.

        Returns "enqueued", "duplicate", "dead", "busy" (another consumer holds its claim:
        put back in the queue), "failed" (an unforeseen error: put back at the end of the queue
        while attempts are left) or "gone" (no longer ours).
        """
        attempt = self.attempts.start(raw)
        try:
            if attempt > self.max_attempts:  # the last ones ended without an answer (their process died)
                outcome = self._reject(raw, gave_up(raw, self.max_attempts, self.attempts.last_error(raw)))
            else:
                outcome = self._handle(raw)
        except (redis.ConnectionError, redis.TimeoutError):
            raise  # Redis is away: the payload stays in our processing list (see run)
        except Exception as exc:
            outcome = self._failed(raw, attempt, exc)
        if outcome != "failed":
            (self.attempts.undo if outcome == "busy" else self.attempts.forget)(raw)
        if outcome in COUNTED:
            self.metrics.ingested(COUNTED[outcome])
        return outcome

    def _handle(self, raw: bytes) -> str:
        try:
            request = parse_migration(raw)
            site = self._site(request)
        except BadPayload as exc:
            return self._reject(raw, exc)
        return self._enqueue(raw, request, site)

    def _enqueue(self, raw: bytes, request: MigrationRequest, site: Site | None) -> str:
        job_id = JOB_PREFIX + request.jid
        claim, token = self.keys.claim(request.jid), uuid.uuid4().hex
        if not self.redis.set(claim, token, nx=True, ex=self.claim_ttl):
            log.info("ingest %s: job %s is being taken by another consumer; put back", self.consumer, job_id)
            self._back(keys=[self.processing, self.keys.source], args=[raw])
            return "busy"
        try:
            if self.queue.job_class.exists(job_id, connection=self.redis):
                log.info("ingest %s: job %s already enqueued; dropping the copy", self.consumer, job_id)
                outcome = "duplicate"
            else:
                try:
                    enqueue_validated(self.queue, self.config, request.image_id, request.dest, site,
                                      job_id=job_id, meta=request.meta)
                except MigratioError as exc:  # e.g. a destination conf with a bad limit
                    return self._reject(raw, BadPayload(str(exc), request.image_id, request.dest, request.jid))
                log.info("ingest %s: enqueued job %s: migrate %s to %s", self.consumer, job_id,
                         request.image_id, request.dest)
                outcome = "enqueued"
            self.redis.lrem(self.processing, 1, raw)
            return outcome
        finally:
            self._release(keys=[claim], args=[token])

    def _site(self, request: MigrationRequest) -> Site | None:
        """The destination's conf; None when it does not load (the worker fails the job with the
        conf error and reports it); BadPayload when there is no such site."""
        try:
            site = load_site(self.config.sites_dir, request.dest)
        except ConfigError:
            path = site_path(self.config.sites_dir, request.dest)
            if path.is_file():
                return None
            raise BadPayload(f"unknown destination site '{request.dest}': no file {path}",
                             request.image_id, request.dest, request.jid,
                             brief=f"unknown destination site '{request.dest}'") from None
        if site.type != request.site_type:
            log.warning("ingest: job %s%s has class %s but site %s is of type %s; the site conf decides",
                        JOB_PREFIX, request.jid, request.klass, request.dest, site.type)
        return site

    def _reject(self, raw: bytes, exc: BadPayload) -> str:
        text = raw.decode("utf-8", errors="replace")
        entry = json.dumps({"payload": text, "reason": str(exc), "queue": self.keys.source, "consumer": self.consumer,
                            "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        if not self._dead(keys=[self.processing, self.keys.dead], args=[raw, entry, self.dead_max]):
            return "gone"
        log.warning("ingest: rejected a job from %s (moved to %s): %s; payload: %s",
                    self.keys.source, self.keys.dead, exc, _short(text))
        if self.feedback and exc.image and exc.dest:
            info = JobInfo(JOB_PREFIX + (exc.jid or "?"), exc.image, self.config.name, exc.dest, feedback=True)
            try:
                self.feedback.emit(info, f"{REJECTED}: {exc.brief}")
            except Exception as err:  # feedback is best effort
                log.warning("ingest: could not send the rejection to Atmosphere: %s", err)
        return "dead"

    def _failed(self, raw: bytes, attempt: int, exc: Exception) -> str:
        """An error nobody foresaw: back to the end of the queue, or a dead letter after the last attempt."""
        error = describe(exc)
        (log.exception if attempt == 1 else log.warning)(
            "ingest %s: could not handle a job from %s (attempt %d of %d): %s; payload: %s", self.consumer,
            self.keys.source, attempt, self.max_attempts, error, _short(raw.decode("utf-8", "replace")))
        if attempt >= self.max_attempts:
            return self._reject(raw, gave_up(raw, attempt, error, type(exc).__name__))
        self.attempts.failed(raw, error)
        return "failed" if self._back(keys=[self.processing, self.keys.source], args=[raw]) else "gone"

    # --- helpers -----------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        now = self.clock()
        if now - self._last_beat >= self.heartbeat_ttl / 3:
            self.beat()
        if now - self._last_recover >= self.recover_every:
            self.recover(scan=self._last_recover == float("-inf"))

    def _retry_own(self) -> list[str]:
        """Handle what an earlier error left in our own processing list (oldest first)."""
        outcomes = []
        while (raw := self.redis.lindex(self.processing, -1)) is not None:
            outcomes.append(self.handle(raw))
            if outcomes[-1] == "gone":
                break
        self._recheck = False
        return outcomes

    def _recover_one(self, consumer: str) -> int:
        moved = self._recover_held(keys=[self.keys.alive(consumer), self.keys.processing(consumer),
                                           self.keys.source, self.keys.consumers], args=[consumer])
        if moved > 0:
            log.warning("ingest %s: gave %d job(s) held by stopped consumer %s back to %s",
                        self.consumer, moved, consumer, self.keys.source)
        return moved


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
