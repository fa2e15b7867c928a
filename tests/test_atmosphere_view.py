"""What Atmosphere shows for a migration, against Atmosphere's own way of storing it.

Atmosphere's `UpdateMigrationJobStatusWorker` appends each status line to the migration's row
with a read-append-write (no lock, 10+ threads, a unique index on the row's key) and its admin
page shows `status.lines.last`. The `atmosphere` fixture runs exactly that in a real Sidekiq
(support/sidekiq/atmosphere_status_worker.rb); a real `migratio worker` migrates real lab images
pushed by support/sidekiq/push.rb as Atmosphere's VmtMigrator pushes them. For each kind of
outcome every line migratio pushed must be stored, in push order, none raising on the unique
index, and the line Atmosphere shows must be the outcome.
"""

import time
import uuid
from pathlib import Path

import pytest
from rq.job import Job

from migratio.queue import keys, sidekiq
from support.lab.config import write_migratio_config
from support.lab.services import free_port
from tests.faults_helpers import Worker, wait_for
from tests.fixtures.sidekiq import ruby_lines

pytestmark = pytest.mark.sidekiq

SOURCE, DEST = "site-a", "site-b"
FEEDBACK_INTERVAL = 0.3  # seconds; well above the double's 30 ms store latency
OUTCOMES = ("Migration finished", "Image already present", "Migration failed")


class Site:
    """This site (site-a) of the lab: a real `migratio worker` fed by Atmosphere's Sidekiq client."""

    def __init__(self, lab, redis_server, redis_client, atmosphere, push, tmp_path: Path):
        self.lab, self.redis_url, self.redis, self.atmosphere, self.push = (
            lab, redis_server.url, redis_client, atmosphere, push)
        self.dir = tmp_path / "site"
        self.workers: list[Worker] = []
        self.images: set[str] = set()
        self.config_file: Path | None = None

    def configure(self, site_b: dict | None = None, **config) -> None:
        values = dict(redis_url=self.redis_url, namespace="atmosphere", feedback_interval=FEEDBACK_INTERVAL,
                      retries=0, log_level="INFO")
        values.update(config)
        self.config_file = write_migratio_config(self.lab, self.dir, site_b=site_b, **values)

    def worker(self) -> Worker:
        if self.config_file is None:
            self.configure()
        worker = Worker(self.config_file, self.dir / f"worker{len(self.workers)}.err")
        self.workers.append(worker)
        return worker

    def migrate(self, image_id: str) -> str:
        """Push the migration as Atmosphere does; returns the RQ job id the ingest gives it."""
        self.images.add(image_id)
        (jid,) = self.push(SOURCE, image_id, DEST)
        return f"sidekiq-{jid}"

    def status(self, job_id: str) -> str | None:
        if not Job.exists(job_id, self.redis):
            return None
        status = Job.fetch(job_id, connection=self.redis).get_status()
        return str(getattr(status, "value", status))

    def wait_ended(self, job_id: str, timeout: float = 240) -> str:
        worker = self.workers[-1] if self.workers else None
        return wait_for(lambda: self.status(job_id) in ("finished", "failed") and self.status(job_id),
                        f"job {job_id} to end", timeout=timeout, proc=worker)

    def wait_shown(self, image_id: str, prefix: str, count: int = 1) -> None:
        """Until Atmosphere performed `count` lines of the image starting with `prefix`, and nothing
        else is queued or running."""
        wait_for(lambda: len([l for l in self.lines(image_id) if l.startswith(prefix)]) >= count,
                 f"Atmosphere to perform {count} line(s) '{prefix}...' for {image_id}")
        self.atmosphere.wait_idle()

    def lines(self, image_id: str) -> list[str]:
        """The lines Atmosphere was sent for the image, in push order."""
        return [r["args"][3] for r in self.atmosphere.performed(image_id, SOURCE, DEST)]

    def copies(self, image_id: str) -> list[dict]:
        return self.lab.site_b.api().list_images(source_uuid=image_id)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for path in Path(self.lab.head_node.staging_dir).iterdir():
            if path.is_file() and any(image in path.name for image in self.images):
                path.unlink()


@pytest.fixture
def site(lab, redis_server, redis_client, atmosphere, sidekiq_push, tmp_path, clean_lab_images):
    s = Site(lab, redis_server, redis_client, atmosphere, sidekiq_push, tmp_path)
    yield s
    s.stop()


def assert_atmosphere_shows(atmosphere, image_id: str, outcome: str) -> list[str]:
    """Every line pushed for the migration is in its stored status, in push order, none lost or
    raising; the line the admin page shows is the last one pushed, and it is the outcome."""
    performed = atmosphere.performed(image_id)
    assert performed, "Atmosphere was sent no line"
    assert {tuple(r["args"][:3]) for r in performed} == {(image_id, SOURCE, DEST)}
    assert all(r["job"]["class"] == "Atmosphere::UpdateMigrationJobStatusWorker" and r["job"]["retry"] is False
               for r in performed)
    assert [(r["args"][3], r["error"]) for r in performed if r["error"]] == []  # no unique-index error
    lines = [r["args"][3] for r in performed]
    for line in lines:
        assert line.endswith("\n") and "\n" not in line[:-1], repr(line)
    status = atmosphere.status(image_id, SOURCE, DEST)
    assert status == "".join(f" {line}" for line in lines)  # "#{status} #{line}": none lost, push order
    assert ruby_lines(status) == [f" {line}" for line in lines]
    assert atmosphere.last_line(image_id, SOURCE, DEST) == f" {lines[-1]}"
    assert lines[-1].startswith(outcome), lines
    return lines


def outcomes(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(OUTCOMES)]


# -- against the lab


@pytest.mark.lab
def test_fresh_migration_shows_finished(site, atmosphere, glance_image):
    img = glance_image(data_mib=4)
    site.worker()
    job_id = site.migrate(img.id)
    assert site.wait_ended(job_id) == "finished", site.workers[0].stderr[-4000:]
    (copy,) = site.copies(img.id)
    site.wait_shown(img.id, "Migration finished")

    lines = assert_atmosphere_shows(atmosphere, img.id, "Migration finished")
    assert lines[-1] == f"Migration finished: image {copy['id']} on {DEST} verified\n"
    assert outcomes(lines) == [lines[-1]]
    assert lines[0] == "Migration started\n"


@pytest.mark.lab
def test_already_present_shows_already_present_after_the_first_run(site, atmosphere, glance_image):
    """The second migration of the image appends to the same row (same template, source and
    destination): the row holds both runs, and shows the second one's outcome. It is pushed as
    soon as the first job ended, when the first one's last lines may not have been sent yet."""
    img = glance_image(data_mib=2)
    site.worker()
    assert site.wait_ended(site.migrate(img.id)) == "finished"
    assert site.wait_ended(site.migrate(img.id)) == "finished"
    (copy,) = site.copies(img.id)
    site.wait_shown(img.id, "Image already present")

    lines = assert_atmosphere_shows(atmosphere, img.id, "Image already present")
    assert lines[-1] == f"Image already present on {DEST} as {copy['id']}\n"
    assert outcomes(lines) == [f"Migration finished: image {copy['id']} on {DEST} verified\n", lines[-1]]


@pytest.mark.lab
@pytest.mark.parametrize("cause", ["unknown image", "unreachable head node"])
def test_failure_shows_failed(site, atmosphere, glance_image, cause):
    if cause == "unknown image":
        image_id = str(uuid.uuid4())
        site.configure()
    else:
        image_id = glance_image(data_mib=1).id
        site.configure(site_b={"port": free_port(), "connect_timeout": 5})  # nothing listens there
    site.worker()
    assert site.wait_ended(site.migrate(image_id)) == "failed"
    site.wait_shown(image_id, "Migration failed")

    lines = assert_atmosphere_shows(atmosphere, image_id, "Migration failed: ")
    assert outcomes(lines) == [lines[-1]]
    assert site.copies(image_id) == []


@pytest.mark.lab
def test_retried_then_finished_shows_the_retry_and_then_finished(site, atmosphere, glance_image, lab):
    """The head node is down for the first attempt (a transient failure, as in test_faults_link),
    back for a later one."""
    img = glance_image(data_mib=1)
    site.configure(retries=5, retry_intervals=[2])
    sshd = lab.sshd
    sshd.stop()
    try:
        worker = site.worker()
        job_id = site.migrate(img.id)
        wait_for(lambda: any(l.startswith("Migration attempt failed, will retry: ") for l in site.lines(img.id)),
                 "Atmosphere to perform a transient failure", proc=worker)
    finally:
        sshd.start()
        lab.save()
    assert site.wait_ended(job_id) == "finished", worker.stderr[-4000:]
    (copy,) = site.copies(img.id)
    site.wait_shown(img.id, "Migration finished")

    lines = assert_atmosphere_shows(atmosphere, img.id, "Migration finished")
    assert lines[-1] == f"Migration finished: image {copy['id']} on {DEST} verified\n"
    retries = [line for line in lines if line.startswith("Migration attempt failed, will retry: ")]
    assert retries and lines.index(retries[0]) < len(lines) - 1
    assert [line for line in lines if line.startswith("Migration failed")] == []


# -- the double itself, without migratio's pacing


def push_line(redis_client, image_id: str, text: str) -> None:
    """One status line as migratio's FeedbackSink pushes it, without any pacing."""
    payload = sidekiq.job_payload(sidekiq.FEEDBACK_CLASS, [image_id, SOURCE, DEST, text], keys.FEEDBACK_QUEUE,
                                  retry=False)
    sidekiq.push(redis_client, "atmosphere", payload)


@pytest.mark.parametrize("atmosphere", [{"store_latency_ms": 200}], indirect=True)
def test_the_double_loses_lines_pushed_back_to_back(atmosphere, redis_client):
    """Atmosphere's worker, as modelled, is as racy as the real one: 5 lines of a new migration at
    once raise on the unique index (the row is new for all of them); 5 more for the row now
    existing are lost updates (the later save overwrites the earlier)."""
    image_id = str(uuid.uuid4())
    first = [f"line {n}\n" for n in range(5)]
    for text in first:
        push_line(redis_client, image_id, text)
    wait_for(lambda: len(atmosphere.performed(image_id)) == 5, "5 lines performed")
    atmosphere.wait_idle()
    errors = [r["error"] for r in atmosphere.performed(image_id) if r["error"]]
    assert errors, "no unique-index error: the double does not race"
    assert all(e.startswith("ActiveRecord::RecordNotUnique: ") and "atmo_mj_ix" in e for e in errors)
    kept = ruby_lines(atmosphere.status(image_id, SOURCE, DEST))
    assert len(kept) == 5 - len(errors)  # what raised is gone; the rest were inserted or updated

    second = [f"more {n}\n" for n in range(5)]
    for text in second:
        push_line(redis_client, image_id, text)
    wait_for(lambda: len(atmosphere.performed(image_id)) == 10, "10 lines performed")
    atmosphere.wait_idle()
    assert [r for r in atmosphere.performed(image_id)[5:] if r["error"]] == []  # an UPDATE never raises
    stored = ruby_lines(atmosphere.status(image_id, SOURCE, DEST))
    assert stored[:len(kept)] == kept
    assert len([line for line in stored if line.startswith(" more ")]) < 5  # lost updates, silently


def test_the_double_keeps_every_line_when_they_are_paced(atmosphere, redis_client):
    """The premise of migratio's pacing: lines of one migration pushed `feedback_interval` apart
    (here 0.3 s, ten times the store latency) are all kept, in order."""
    image_id = str(uuid.uuid4())
    lines = ["Migration started\n", "transfer: 50% (1.0 MiB of 2.0 MiB)\n",
             "Migration finished: image x on site-b verified\n"]
    for n, text in enumerate(lines):
        if n:
            time.sleep(FEEDBACK_INTERVAL)
        push_line(redis_client, image_id, text)
    wait_for(lambda: len(atmosphere.performed(image_id)) == len(lines), "every line performed")
    atmosphere.wait_idle()
    assert assert_atmosphere_shows(atmosphere, image_id, "Migration finished") == lines
    assert atmosphere.table() == {f"{image_id} {SOURCE} {DEST}": "".join(f" {line}" for line in lines)}
    assert atmosphere.last_line(image_id, SOURCE, DEST) == " Migration finished: image x on site-b verified\n"
