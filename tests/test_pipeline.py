"""The runner with small in-process steps (pure logic: no external services)."""

import pytest

from migratio.conf.sites import Site
from migratio.errors import PermanentError
from migratio.pipeline.runner import Context, Step, run_pipeline
from migratio.pipeline.status import DictMeta, JobInfo, ProgressThrottle
from tests.helpers import config_factory


class Lines:
    def __init__(self):
        self.lines = []

    def emit(self, job, text):
        self.lines.append(text)


def make_step(name, action=None, always=False):
    class S(Step):
        def run(self, ctx):
            ctx.result.setdefault("ran", []).append(name)
            if action:
                action(ctx)
            return f"{name} done"

    S.name, S.always = name, always
    return S()


@pytest.fixture
def ctx(tmp_path):
    config = config_factory(tmp_path)
    site = Site("site-b", "openstack", tmp_path / "site-b.conf", options=None)
    return Context(JobInfo("j1", "img", "site-a", "site-b"), config, site, services=None,
                   workdir=tmp_path / "work", meta=DictMeta(), status=Lines())


def test_steps_run_in_order_with_status_lines_and_meta(ctx):
    result = run_pipeline(ctx, [make_step("a"), make_step("b"), make_step("c")])
    assert result["ran"] == ["a", "b", "c"]
    assert ctx.status.lines == ["Migration started", "a done", "b done", "c done"]
    assert ctx.meta.data["steps"] == ["a", "b", "c"]
    assert ctx.meta.data["steps_done"] == ["a", "b", "c"]


def test_failure_stops_the_pipeline_and_runs_cleanups(ctx):
    calls = []

    def register(c):
        c.on_exit("remove temp", lambda: calls.append("exit"))
        c.on_failure("delete half-made image", lambda: calls.append("failure"))

    def boom(c):
        raise PermanentError("remote glance failed")

    steps = [make_step("a", register), make_step("b", boom), make_step("c")]
    with pytest.raises(PermanentError, match="remote glance failed"):
        run_pipeline(ctx, steps)
    assert ctx.result["ran"] == ["a", "b"]
    assert ctx.meta.data["step"] == "b"
    assert ctx.meta.data["steps_done"] == ["a"]
    assert calls == ["failure", "exit"]  # reverse order of registration


def test_success_runs_exit_cleanups_only(ctx):
    calls = []

    def register(c):
        c.on_exit("remove temp", lambda: calls.append("exit"))
        c.on_failure("delete image", lambda: calls.append("failure"))

    run_pipeline(ctx, [make_step("a", register)])
    assert calls == ["exit"]


def test_a_failing_cleanup_does_not_hide_the_others(ctx):
    calls = []

    def register(c):
        c.on_exit("first", lambda: calls.append("first"))
        c.on_exit("broken", lambda: 1 / 0)

    run_pipeline(ctx, [make_step("a", register)])
    assert calls == ["first"]


def test_finished_skips_to_always_steps(ctx):
    def present(c):
        c.finished = True

    run_pipeline(ctx, [make_step("dedupe", present), make_step("transfer"), make_step("cleanup", always=True)])
    assert ctx.result["ran"] == ["dedupe", "cleanup"]


def test_progress_updates_meta_and_throttles_lines(ctx):
    now = [0.0]
    ctx.clock = lambda: now[0]
    ctx.step = "transfer"
    for done in range(0, 101, 1):
        ctx.progress(done * 1024, 100 * 1024)
    assert ctx.meta.data["bytes_done"] == 100 * 1024
    lines = [ln for ln in ctx.status.lines if ln.startswith("transfer:")]
    assert len(lines) == 10  # one per 10 %
    assert lines[-1] == "transfer: 100% (100.0 KiB of 100.0 KiB)"


def test_throttle_also_fires_on_time():
    now = [0.0]
    throttle = ProgressThrottle(lambda: now[0], percent=10, interval=30)
    assert not throttle.due(1, 1000)
    now[0] = 31
    assert throttle.due(2, 1000)
    assert not throttle.due(3, 1000)
