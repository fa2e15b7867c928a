"""The runner with small in-process steps (pure logic: no external services)."""

import pytest

from migratio.errors import CommandFailed, ConfigError, PermanentError, TransientError
from migratio.pipeline.context import StepOrderError
from migratio.pipeline.retry import MustWait, decide
from migratio.pipeline.runner import Step, run_pipeline
from migratio.pipeline.status import FAILED, WAITING, WILL_RETRY, ProgressThrottle
from tests.builders import make_context


def make_step(name, action=None, always=False):
    class S(Step):
        def run(self, ctx):
            ctx.details.setdefault("ran", []).append(name)
            if action:
                action(ctx)
            return f"{name} done"

    S.name, S.always = name, always
    return S()


@pytest.fixture
def ctx(tmp_path):
    return make_context(tmp_path)


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


def test_the_result_is_built_from_what_the_steps_said(ctx):
    assert ctx.result == {}
    ctx.details.update(blocks_sent=3)
    ctx.dest_image_id, ctx.snapshot_ids, ctx.region = "ami-1", ["snap-1"], "eu-west-1"
    assert ctx.result == {"blocks_sent": 3, "dest_image_id": "ami-1", "snapshot_ids": ["snap-1"],
                          "region": "eu-west-1"}  # already_present unsaid: left out
    ctx.already_present, ctx.verified = False, {"md5": "x"}
    assert run_pipeline(ctx, []) == {"blocks_sent": 3, "dest_image_id": "ami-1", "already_present": False,
                                     "snapshot_ids": ["snap-1"], "region": "eu-west-1", "verified": {"md5": "x"}}
    with pytest.raises(TypeError):
        ctx.result["dest_image_id"] = "lost"  # a step sets the field, never the result


def test_a_step_outside_a_built_pipeline_is_told_what_it_lacks(ctx):
    ctx.step = "verify"
    with pytest.raises(StepOrderError, match="step 'verify' needs the destination image id"):
        ctx.require_dest_image_id()
    with pytest.raises(StepOrderError, match="needs the payload to send"):
        ctx.require_payload()
    with pytest.raises(StepOrderError, match="needs the located source image"):
        ctx.require_image()


@pytest.mark.parametrize("exc, left, retried, uses_attempt, state, prefix", [
    (TransientError("link lost"), 2, True, True, "retrying", WILL_RETRY),
    (TransientError("link lost"), 0, False, True, "failed", FAILED),
    (CommandFailed("rsync: timeout", retryable=True), 1, True, True, "retrying", WILL_RETRY),
    (CommandFailed("rsync: denied"), 1, False, True, "failed", FAILED),
    (PermanentError("not found"), 3, False, True, "failed", FAILED),
    (ConfigError("bad conf"), 3, False, True, "failed", FAILED),
    (ZeroDivisionError("a bug"), 1, False, True, "failed", FAILED),  # internal: it would fail the same way
    (ZeroDivisionError("a bug"), None, False, True, "failed", FAILED),
    (MustWait("lock held"), 2, True, False, "waiting", WAITING),
    (MustWait("lock held"), 0, False, False, "failed", FAILED),
    (KeyboardInterrupt(), 3, False, True, "failed", FAILED),
])
def test_the_retry_decision(exc, left, retried, uses_attempt, state, prefix):
    decision = decide(exc, left)
    assert (decision.retried, decision.uses_attempt, decision.state, decision.prefix) == (
        retried, uses_attempt, state, prefix)


@pytest.mark.parametrize("exc, retries_left, kept_runs", [
    (TransientError("link lost"), 1, False),  # retried: the staged file stays for the retry
    (TransientError("link lost"), 0, True),
    (PermanentError("denied"), 1, True),
])
def test_files_kept_for_a_retry_stay_only_when_it_is_retried(ctx, exc, retries_left, kept_runs):
    calls = []
    ctx.retries_left = retries_left

    def fail(c):
        c.on_exit("remove staged", lambda: calls.append("staged"), keep_for_retry=True)
        raise exc

    with pytest.raises(type(exc)):
        run_pipeline(ctx, [make_step("transfer", fail)])
    assert calls == (["staged"] if kept_runs else [])
