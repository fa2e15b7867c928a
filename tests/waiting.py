"""The one way tests wait for something that happens elsewhere (a process, Redis, a server)."""

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], what: str | Callable[[], str], timeout: float = 60, proc=None,
             interval: float = 0.05):
    """Poll until predicate() is truthy and return its value.

    Fails naming `what` (a text, or a function giving it, called only then) after `timeout`
    seconds, or as soon as `proc` (a worker process with `.proc` and `.stderr`) has exited; the
    failure carries the tail of the worker's stderr.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.proc.returncode}) while waiting for {_text(what)}:\n"
                                 f"{proc.stderr[-6000:]}")
        if time.monotonic() > deadline:
            extra = f"\nworker stderr:\n{proc.stderr[-6000:]}" if proc is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {_text(what)}{extra}")
        time.sleep(interval)


def _text(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what
