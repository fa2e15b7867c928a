"""The pipeline runner: steps in order over a shared Context, with cleanups on every exit path."""

from typing import Callable, ClassVar, Sequence

from migratio.conf.sites import Site
from migratio.pipeline.context import Context, Fact
from migratio.pipeline.retry import decide


class Step:
    """A pipeline step. `run` returns the status line to send when it is done (or None).

    `needs` names what earlier steps must have put into the Context, `provides` what this one
    puts there for later ones; `unmet_need` checks an order once, when the pipeline is built, and
    `conf_problem` what the step needs of the site conf.
    """

    name: ClassVar[str]
    always: ClassVar[bool] = False  # runs even when an earlier step finished the job early
    needs: ClassVar[frozenset[Fact]] = frozenset()
    provides: ClassVar[frozenset[Fact]] = frozenset()

    def run(self, ctx: Context) -> str | None:
        raise NotImplementedError

    @classmethod
    def conf_problem(cls, site: Site) -> str | None:
        """What in the site conf keeps this step from running (one line, without the file), else None."""
        return None


def unmet_need(steps: Sequence[type[Step]]) -> tuple[type[Step], Fact] | None:
    """The first step that needs something no earlier step provides, and what; None if the order works."""
    have: set[Fact] = set()
    for step in steps:
        missing = [fact for fact in Fact if fact in step.needs and fact not in have]
        if missing:
            return step, missing[0]
        have |= step.provides
    return None


def run_pipeline(ctx: Context, steps: list[Step], guard: Callable[[str], None] | None = None) -> dict[str, object]:
    """Run `steps` in order; returns the job's result. Cleanups run however it ends.

    `guard(step name)` runs before each step and raises to stop the job there (a lost lock).
    Afterwards `ctx.step` names the step the pipeline ended in.
    """
    names = [s.name for s in steps]
    ctx.meta.update(state="running", steps=names, steps_done=[], step=None, error=None)
    ctx.say("Migration started")
    failed, retrying = True, False
    try:
        for step in steps:
            if ctx.finished and not step.always:
                continue
            if guard:
                guard(step.name)
            _run_step(ctx, step)
        failed = False
    except BaseException as exc:
        retrying = decide(exc, ctx.retries_left).retried
        raise
    finally:
        ended_in = ctx.step
        ctx.begin_step("cleanup")
        try:
            ctx.run_cleanups(failed, retrying)
        finally:
            ctx.close_remote()
        ctx.step = ended_in
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
