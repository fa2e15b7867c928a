"""`migrate --wait` and `status` on a real terminal: tmux runs the real CLI in a pane, against a real
`migratio worker` whose job waits at the gate with its progress recorded (3 of 4 MiB at 1 MiB/s),
and `capture-pane` reads the screen as the operator sees it: rich's bar, bytes, rate and ETA."""

import re
import shutil
import subprocess
import sys

import pytest
from rq.job import Job

from migratio.queue.enqueue import enqueue_migration, migration_queue
from support.lab.services import REPO
from tests.builders import config_factory, write_site
from tests.gatestep import WorkerProcess, entered_key, open_key
from tests.waiting import wait_for

IMAGE_A = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
IMAGE_F = "ffffffff-ffff-4fff-8fff-ffffffffffff"
GATED = "type: openstack\nhost: h\nuser: u\npipeline: [gate]\n"
BAR = "━"  # rich's bar (the plain lines never draw one)
FIGURES = "75% 3.0 MiB/4.0 MiB 1.0 MiB/s ETA 0:00:01 running "
SLOW = 180  # seconds a CLI in a pane may take: importing the clients takes 10 s on a busy machine


class Tmux:
    """A private tmux server (its own socket) whose panes stay after their command exits."""

    def __init__(self, tmp_path):
        self.socket, self.conf = tmp_path / "tmux.sock", tmp_path / "tmux.conf"
        self.conf.write_text("set -g remain-on-exit on\nset -g history-limit 1000\n")

    def __call__(self, *args: str) -> str:
        proc = subprocess.run(["tmux", "-u", "-S", str(self.socket), "-f", str(self.conf), *args],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"tmux {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def start(self, name: str, config_file, *cli: str) -> None:
        """`migratio --config FILE <cli>` (with the gate step registered) in a 150x30 terminal.

        Started from a process without a terminal, tmux exports COLUMNS=80 and LINES=24 to the pane,
        which rich would take over the terminal's size: unset, as in an operator's shell."""
        self("new-session", "-d", "-s", name, "-x", "150", "-y", "30", "-c", str(REPO), "-e", f"PYTHONPATH={REPO}",
             "--", "env", "-u", "COLUMNS", "-u", "LINES",
             sys.executable, "-m", "tests.gatestep", "--config", str(config_file), *cli)

    def screen(self, name: str) -> list[str]:
        """The pane's non-empty lines, from the start of its history (tmux scrolls a line into it when
        the command exits), without tmux's own "Pane is dead" line."""
        lines = [line.rstrip() for line in self("capture-pane", "-p", "-S", "-", "-t", name).splitlines()]
        return [line for line in lines if line.strip() and not line.startswith("Pane is dead")]

    def showing(self, name: str, text: str) -> list[str] | None:
        """The screen once a line of it contains `text`."""
        screen = self.screen(name)
        return screen if any(text in line for line in screen) else None

    def exit_status(self, name: str) -> str | None:
        """The exit status of the pane's command once it has exited (`signal N` if a signal ended it)."""
        dead, *status = self("display-message", "-p", "-t", name,
                             "#{pane_dead} #{pane_dead_status} #{?pane_dead_signal,signal ,}#{pane_dead_signal}").split(
                                 maxsplit=1)
        return status[0].strip() if dead == "1" and status else None  # tmux may say dead a moment before the status

    def stop(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def tmux(tmp_path):
    if not shutil.which("tmux"):
        pytest.fail("tmux not found: install Debian's tmux package (make deps)")
    terminal = Tmux(tmp_path)
    yield terminal
    terminal.stop()


@pytest.fixture
def gated(tmp_path, redis_server, redis_client):
    """A worker process whose jobs to site-b wait at the gate; stopped afterwards."""
    config = config_factory(tmp_path, redis_url=redis_server.url)
    write_site(config.sites_dir, "site-b", GATED)
    worker = WorkerProcess(tmp_path / "config.yml", tmp_path / "worker.err")
    yield config, worker, redis_client
    worker.stop()


def running_line(screen: list[str], job_id: str) -> int:
    return next(i for i, line in enumerate(screen) if line.startswith(job_id))


def check_bar(line: str) -> None:
    """`   ━━━━━━━╸━━  75% 3.0 MiB/4.0 MiB 1.0 MiB/s ETA 0:00:01 running 0:00:02`"""
    bar, figures = line.split(maxsplit=1)
    assert set(bar) <= set("━╸╺") and len(bar) > 40, line  # the bar takes the terminal's free width
    assert re.fullmatch(re.escape(FIGURES) + r"\d+:\d\d:\d\d", figures), line


def test_migrate_wait_on_a_terminal_draws_a_bar_with_bytes_rate_and_eta(tmp_path, gated, tmux):
    config, worker, redis = gated
    tmux.start("wait", tmp_path / "config.yml", "migrate", "--wait", IMAGE_A, "site-b")
    wait_for(lambda: redis.lrange(entered_key("site-b"), 0, -1), "the job at the gate", proc=worker, timeout=SLOW)
    job_id = redis.lrange(entered_key("site-b"), 0, -1)[0].decode()

    screen = wait_for(lambda: tmux.showing("wait", "ETA"), "the bar with its ETA on the terminal", timeout=SLOW)
    assert screen[0] == f"enqueued job {job_id}: migrate {IMAGE_A} to site-b"
    at = running_line(screen, job_id)
    assert screen[at] == f"{job_id}  started      {IMAGE_A} -> site-b  step=gate"
    check_bar(screen[at + 1])

    redis.set(open_key("site-b"), 1)
    assert wait_for(lambda: tmux.exit_status("wait"), "migrate --wait to exit", proc=worker, timeout=SLOW) == "0"
    screen = tmux.screen("wait")
    assert not any(BAR in line for line in screen)  # the bar is gone, the outcome stays
    assert screen[-1] == f"{job_id}  finished     {IMAGE_A} -> site-b  result: gated-{job_id}"


def test_status_on_a_terminal_draws_running_jobs_as_bars_and_watch_redraws_them(tmp_path, gated, tmux):
    config, worker, redis = gated
    queue = migration_queue(config, redis)
    failed = enqueue_migration(queue, config, IMAGE_F, "site-x")  # no such site: it fails
    wait_for(lambda: Job.fetch(failed.id, connection=redis).get_status() == "failed", "the failure", proc=worker)
    running = enqueue_migration(queue, config, IMAGE_A, "site-b")
    wait_for(lambda: redis.lrange(entered_key("site-b"), 0, -1), "the job at the gate", proc=worker, timeout=SLOW)

    tmux.start("once", tmp_path / "config.yml", "status")
    assert wait_for(lambda: tmux.exit_status("once"), "status to exit", timeout=SLOW) == "0"
    tmux.start("watch", tmp_path / "config.yml", "status", "--watch", "--interval", "0.2")
    watch = wait_for(lambda: tmux.showing("watch", "ETA"), "status --watch to draw the bar", timeout=SLOW)

    for screen in (tmux.screen("once"), watch):
        at = running_line(screen, running.id)
        assert screen[at] == f"{running.id}  started      {IMAGE_A} -> site-b  step=gate"
        check_bar(screen[at + 1])
        at = running_line(screen, failed.id)
        assert screen[at].startswith(f"{failed.id}  failed       {IMAGE_F} -> site-x  reason: unknown destination")
        hint = screen.index(f"    retry: migratio retry {failed.id}")  # after the reason, wrapped at the width
        assert hint > at and screen[hint + 1] == f"    log: {config.log_dir / 'jobs' / (failed.id + '.log')}"

    redis.set(open_key("site-b"), 1)  # watch redraws in place: the job's line changes, no second copy
    screen = wait_for(lambda: tmux.showing("watch", " finished "), "status --watch to show the job finished",
                      proc=worker, timeout=SLOW)
    assert [line for line in screen if line.startswith(running.id)] == [
        f"{running.id}  finished     {IMAGE_A} -> site-b  result: gated-{running.id}"]
    assert not any(BAR in line for line in screen)
    tmux("send-keys", "-t", "watch", "C-c")
    assert wait_for(lambda: tmux.exit_status("watch"), "status --watch to stop on Ctrl-C", timeout=SLOW) == "0"
