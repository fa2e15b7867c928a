"""The pipeline runner: steps in order over a shared Context, with cleanups on every exit path."""

from typing import ClassVar, Sequence

from migratio.pipeline.context import Context, Fact
from migratio.pipeline.retry import decide


class Step:
    """A pipeline step. `run` returns the status line to send when it is done (or None).

    `needs` names what earlier steps must have put into the Context, `provides` what this one
    puts there for later ones; `unmet_need` checks an order once, when the pipeline is built.
    """

    name: ClassVar[str]
    always: ClassVar[bool] = False  # runs even when an earlier step finished the job early
    needs: ClassVar[frozenset[Fact]] = frozenset()
    provides: ClassVar[frozenset[Fact]] = frozenset()

    def run(self, ctx: Context) -> str | None:
        raise NotImplementedError


def unmet_need(steps: Sequence[type[Step]]) -> tuple[type[Step], Fact] | None:
    """The first step that needs something no earlier step provides, and what; None if the order works."""
    have: set[Fact] = set()
    for step in steps:
        missing = [fact for fact in Fact if fact in step.needs and fact not in have]
        if missing:
            return step, missing[0]
        have |= step.provides
    return None


def run_pipeline(ctx: Context, steps: list[Step]) -> dict[str, object]:
    """Run `steps` in order; returns the job's result. Cleanups run however it ends."""
    names = [s.name for s in steps]
    ctx.meta.update(state="running", steps=names, steps_done=[], step=None, error=None)
    ctx.say("Migration started")
    failed, retrying = True, False
    try:
        for step in steps:
            if ctx.finished and not step.always:
                continue
            _run_step(ctx, step)
        failed = False
    except BaseException as exc:
        retrying = decide(exc, ctx.retries_left).retried
        raise
    finally:
        ctx.begin_step("cleanup")
        ctx.run_cleanups(failed, retrying)
    return dict(ctx.result)


def _run_step(ctx: Context, step: Step) -> None:
    ctx.begin_step(step.name)
    ctx.meta.update(step=step.name, bytes_done=None, bytes_total=None, rate=None)
    ctx.log.info("started")
    start = ctx.clock()
    try:
        line = step.run(ctx)
    except Exception as exc:
        ctx.log.error("failed after %.1fs: %s", ctx.clock() - start, exc)
        raise
    finally:
        ctx.metrics.step_ended(ctx.site.id, ctx.site.type, step.name, ctx.clock() - start)
    ctx.log.info("done in %.1fs", ctx.clock() - start)
    ctx.steps_done.append(step.name)
    ctx.meta.update(steps_done=list(ctx.steps_done))
    if line:
        ctx.say(line)
