"""Runs local commands: always an argv list, never a shell; logged with exit code and duration."""

import collections
import ctypes
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Mapping, Sequence

from migratio.errors import CommandFailed, TransientError

TAIL_LINES = 20
_PR_SET_PDEATHSIG = 1
CHILD_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR")  # what every child gets, with LC_*
SSH_CLIENTS = frozenset({"ssh", "rsync"})  # also get SSH_AUTH_SOCK: the agent may hold the site's key


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr_tail: str
    duration: float


def identity(text: str) -> str:
    return text


class Commands:
    """Command runner bound to a job's logger.

    Args:
        log: logger or LoggerAdapter carrying the job id and step.
        redact: applied to every argv and stderr text before it is logged or raised.
        env: environment for the children (None: `child_env`, never this process's secrets).
    """

    def __init__(self, log: logging.LoggerAdapter | logging.Logger, redact: Callable[[str], str] = identity,
                 env: Mapping[str, str] | None = None):
        self.log, self.redact, self.env = log, redact, env

    def run(self, argv: Sequence[str | Path], *, what: str | None = None, timeout: float | None = None,
            on_output: Callable[[str], None] | None = None, retryable_codes: Sequence[int] = (),
            check: bool = True, cwd: Path | None = None,
            feed: Callable[[BinaryIO], None] | None = None) -> Result:
        """Run argv to completion.

        Stdout is kept (for small JSON answers) unless `on_output` is given, in which case each
        line (split on CR or LF, as rsync progress uses CR) is passed to it and not kept.
        `feed`, when given, writes the command's stdin (from a thread; the pipe is closed after
        it returns; a command that stops reading early is not an error here, its exit status is).
        A non-zero exit raises CommandFailed (retryable when the code is in retryable_codes).
        """
        args = [str(a) for a in argv]
        label = what or Path(args[0]).name
        shown = self.redact(shlex.join(args))
        self.log.info("run: %s", shown)
        env = child_env(args[0]) if self.env is None else self.env
        start = time.monotonic()
        try:
            proc = subprocess.Popen(args, stdin=subprocess.PIPE if feed else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, cwd=cwd,
                                    preexec_fn=die_with_parent)
        except FileNotFoundError:
            raise CommandFailed(f"{label}: command not found: {args[0]} (is it installed and on PATH?)") from None
        except PermissionError:
            raise CommandFailed(f"{label}: permission denied running {args[0]}") from None
        stdout, tail = self._communicate(proc, timeout, on_output, label, feed)
        duration = time.monotonic() - start
        self.log.info("exit %s after %.1fs: %s", proc.returncode, duration, shown)
        result = Result(tuple(args), proc.returncode, stdout, self.redact(tail), duration)
        if check and proc.returncode != 0:
            self._fail(result, label, retryable_codes)
        if result.stderr_tail.strip():  # warnings of a command that succeeded: kept for diagnosis
            self.log.info("%s stderr tail:\n%s", label, result.stderr_tail)
        return result

    def _communicate(self, proc, timeout, on_output, label, feed=None) -> tuple[str, str]:
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        reader = threading.Thread(target=_collect, args=(proc.stderr, tail.append), daemon=True)
        reader.start()
        feed_errors: list[BaseException] = []
        writer = threading.Thread(target=_feed, args=(proc, feed, feed_errors), daemon=True) if feed else None
        if writer:
            writer.start()
        kept: list[str] = []
        fired = threading.Event()
        timer = threading.Timer(timeout, lambda: (fired.set(), proc.kill())) if timeout else None
        if timer:
            timer.start()
        try:
            _collect(proc.stdout, on_output or kept.append)
            proc.wait()
        finally:
            if timer:
                timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)
            if writer:
                writer.join(timeout=5)
        if fired.is_set():
            raise TransientError(f"{label}: timed out after {timeout:.0f}s")
        if feed_errors:
            raise feed_errors[0]
        return "\n".join(kept), "\n".join(tail)

    def _fail(self, result: Result, label: str, retryable_codes: Sequence[int]) -> None:
        last = result.stderr_tail.strip().splitlines()[-1:] or [""]
        self.log.warning("%s failed (exit %s); stderr tail:\n%s", label, result.returncode, result.stderr_tail)
        reason = f": {last[0].strip()}" if last[0].strip() else ""
        raise CommandFailed(f"{label} failed (exit {result.returncode}){reason}",
                            retryable=result.returncode in retryable_codes, stderr_tail=result.stderr_tail)


def child_env(program: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a child runs with: PATH, HOME, the locale, TZ and TMPDIR, plus SSH_AUTH_SOCK
    for ssh and rsync. Nothing else: OS_*, AWS_* and REDIS_PASSWORD are the worker's own, and no
    child (qemu-img, rsync, ssh) uses them."""
    environ = os.environ if environ is None else environ
    names = {*CHILD_ENV, *(("SSH_AUTH_SOCK",) if Path(program).name in SSH_CLIENTS else ())}
    env = {name: value for name, value in environ.items() if name in names or name.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    return env


def _collect(stream, sink: Callable[[str], None]) -> None:
    """Read a byte stream in chunks and pass on each CR/LF separated line."""
    pending = b""
    while chunk := stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536):
        pending += chunk
        *lines, pending = pending.replace(b"\r", b"\n").split(b"\n")
        for line in lines:
            if line:
                sink(line.decode("utf-8", "replace"))
    if pending:
        sink(pending.decode("utf-8", "replace"))


def _feed(proc: subprocess.Popen, feed: Callable[[BinaryIO], None], errors: list[BaseException]) -> None:
    """Write the command's stdin; an error of our own (e.g. reading the payload) kills it."""
    try:
        feed(proc.stdin)
    except BrokenPipeError:
        pass  # it stopped reading: its exit status and stderr say why
    except BaseException as exc:
        errors.append(exc)
        proc.kill()
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass


def die_with_parent() -> None:
    """Children die with the worker: a killed job never leaves an orphan rsync behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
