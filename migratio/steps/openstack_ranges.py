"""Transfer over several ssh streams at once (`streams: N|auto`, the shell lines of
migratio.openstack.ranges): N data connections take the payload's ranges one after the other,
while the job's own connection (its ControlMaster) prepares the staged file, then creates the
image and feeds Glance in order as ranges complete.

Each stream is its own `ssh` process (its own TCP connection): one channel's window limits a
stream per round trip, one TCP connection's congestion window and one process's cipher would
limit channels sharing it. `bandwidth_limit` paces the sum of all streams. A stream that fails
stops the others and ends Glance's input short (the image is deleted); its range has no marker,
so the retry (a TransientError) sends it again, and only the ranges without one.
"""

import functools
import os
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from migratio.errors import StepError, TransientError
from migratio.local.commands import Result
from migratio.openstack import ranges, stream
from migratio.openstack.glance_protocol import StreamCommands
from migratio.openstack.openssh import openssh_refusal, ssh_argv
from migratio.openstack.ranges import Range
from migratio.openstack.ssh import SSH_FAILED, address, last_line
from migratio.pipeline.context import Context
from migratio.steps.openstack_stream import feed_failure, made, stream_into_glance
from migratio.units import whole_mib


def stream_count(ctx: Context) -> int:
    """`streams` of the site conf; for `auto`, from the round trip time of an ssh connection
    (RemoteShell.round_trip: paramiko's, as the job's ControlMaster cannot time one) and the
    site's bandwidth_limit (see ranges.auto_streams)."""
    setting, limit = ctx.site.openstack.streams, ctx.site.limits.bandwidth_limit
    if isinstance(setting, int):
        return setting
    with ctx.services.remote(ctx.site.openstack) as probe:
        rtt = probe.round_trip()
    count = ranges.auto_streams(rtt, limit * 1024 if limit else None)
    ctx.log.info("streams: auto: %d (round trip %.1f ms)", count, rtt * 1000)
    return count


def send(ctx: Context, commands: StreamCommands, payload: Path, remote_path: str, created: list[str],
         compress: bool) -> str | None:
    """The transfer step's stream: one ssh stream (migratio.steps.openstack_stream, zstd with
    `compress`) or several (never compressed: each would need its own compressor and decoder)."""
    if ctx.site.openstack.streams == 1:
        return stream_into_glance(ctx, commands, payload, remote_path, created, compress)
    count = ctx.details["streams"] = stream_count(ctx)  # in the job's result: what `auto` chose
    if count == 1:
        return stream_into_glance(ctx, commands, payload, remote_path, created, compress)
    with ctx.remote(ctx.site.openstack) as shell:  # the job's connection: the staged file, then the control line
        listing = shell.check(ranges.prepare_argv(remote_path, payload.stat().st_size),
                              what="preparing the staged file", timeout=60)
    if compress:
        ctx.log.info("streams: %d: the ranges are sent uncompressed (compress applies to a single stream)", count)
    return send_in_ranges(ctx, commands, payload, remote_path, created, count, listing)


class Ranges:
    """The ranges of one attempt, shared by the stream threads: what is left to send, what is complete."""

    def __init__(self, ctx: Context, payload: Path, plan: list[Range], staged: set[Range]):
        self.ctx, self.payload, self.plan = ctx, payload, plan
        self.todo = [r for r in plan if r not in staged]
        self.complete, self.errors = set(staged), list[Exception]()
        self.changed, self.stop = threading.Condition(), threading.Event()
        limit = ctx.site.limits.bandwidth_limit
        self.pacer, self.size = stream.Pacer(limit * 1024 if limit else None), payload.stat().st_size
        self.sent, self.covered, self.reported = 0, sum(r.end - r.start for r in staged), ctx.clock()

    def next(self) -> Range | None:
        with self.changed:
            return None if self.stop.is_set() or not self.todo else self.todo.pop(0)

    def wrote(self, n: int) -> None:
        with self.changed:  # one pacer for all streams: bandwidth_limit caps their sum
            self.pacer.wrote(n)
            self.sent, self.covered = self.sent + n, self.covered + n
            if self.ctx.clock() - self.reported >= stream.PROGRESS_EVERY:
                self.reported = self.ctx.clock()
                self.ctx.sending(self.covered, self.size)

    def acknowledged(self, line: str) -> None:
        words = line.split()
        if len(words) == 3 and words[0] == ranges.DONE_MARK and words[1].isdigit() and words[2].isdigit():
            with self.changed:
                self.complete.add(Range(int(words[1]), int(words[2])))
                self.changed.notify_all()

    def failed(self, error: Exception | None) -> None:
        with self.changed:
            if error is not None:
                self.errors.append(error)
            self.stop.set()
            self.changed.notify_all()

    def announce(self, pipe: BinaryIO) -> None:
        """The control line's input: the end of each range, in order, once it is complete; then the size."""
        for r in self.plan:
            with self.changed:
                self.changed.wait_for(lambda r=r: r in self.complete or self.stop.is_set())
                if r not in self.complete:
                    return  # a stream failed: Glance's input ends short, the line deletes the image
            pipe.write(b"%d\n" % r.end)
            pipe.flush()
        pipe.write(b"%d\n" % self.size)
        pipe.flush()

    def feed(self, ready: threading.Event, pipe: BinaryIO) -> None:
        """A data stream's input, once its connection is `ready` (so that no range waits for a slow
        login while later ones are sent): the next range left (header, bytes, trailer) until none is."""
        while not ready.wait(0.2):
            if self.stop.is_set():
                return
        with open(self.payload, "rb") as f:
            while (r := self.next()) is not None:
                pipe.write(f"{r.start} {r.end}\n".encode())
                for pos in range(r.start, r.end, stream.CHUNK):
                    if self.stop.is_set():
                        return  # mid-range: its trailer never comes, so it is never marked complete
                    block = os.pread(f.fileno(), min(stream.CHUNK, r.end - pos), pos)
                    pipe.write(block)
                    self.wrote(len(block))
                pipe.write(f"{ranges.END_MARK} {r.start}\n".encode())
                pipe.flush()


def send_in_ranges(ctx: Context, commands: StreamCommands, payload: Path, remote_path: str,
                   created: list[str], count: int, listing: str) -> str:
    """Send the payload over `count` streams into the destination Glance, skipping the ranges
    `listing` (prepare_argv's output) names; returns the status line."""
    options, plan, start = ctx.site.openstack, ranges.plan(payload), ctx.clock()
    shared = Ranges(ctx, payload, plan, ranges.staged_ranges(listing, plan))
    if len(shared.complete):
        ctx.log.info("resuming: %d of %d ranges are staged already", len(shared.complete), len(plan))
    threads = [threading.Thread(target=_data_stream, args=(ctx, shared, remote_path, i, count), daemon=True)
               for i in range(1, min(count, len(shared.todo)) + 1)]
    for thread in threads:
        thread.start()
    line = ranges.control_line(commands, remote_path, payload.stat().st_size, options.remote_env_file)
    with ctx.remote(options) as shell:  # the control line reuses the job's connection; the data streams don't
        via = shell.ssh_options
    try:
        result = _run(ctx, line, "ssh stream (control)", shared.announce, None, via)
    finally:
        shared.failed(None)  # the control line ended: no stream has anything left to do
        for thread in threads:
            thread.join()
    return _outcome(ctx, shared, result, created, count, start)


def _data_stream(ctx: Context, shared: Ranges, remote_path: str, number: int, count: int) -> None:
    ready = threading.Event()

    def heard(line: str) -> None:
        if line == ranges.READY_MARK:
            ready.set()
        shared.acknowledged(line)

    try:
        result = _run(ctx, ranges.writer_line(remote_path), f"ssh stream {number} of {count}",
                      functools.partial(shared.feed, ready), heard)
    except Exception as exc:  # (its feed's: the payload cannot be read) the job's error, in its thread
        shared.failed(feed_failure(exc, shared.payload, ctx.site.id))
        return
    if result.returncode != 0 and not shared.stop.is_set():
        shared.failed(_stream_failure(ctx, result, number, count))


def _run(ctx: Context, line: str, what: str, feed: Callable[[BinaryIO], None],
         on_output: Callable[[str], None] | None, via: Sequence[str] = ()) -> Result:
    return ctx.commands.run(ssh_argv(ctx.site.openstack, line, via), what=what, check=False, feed=feed,
                            on_output=on_output)


def _stream_failure(ctx: Context, result: Result, number: int, count: int) -> StepError:
    options = ctx.site.openstack
    if result.returncode == SSH_FAILED:
        refusal = openssh_refusal(result.stderr_tail, options)
        if refusal:
            return refusal
    reason = last_line(result.stderr_tail) or f"exit {result.returncode}"
    return TransientError(f"ssh stream {number} of {count} to {address(options.host, options.port)} failed while "
                          f"sending image {ctx.job.image_id}: {reason}")


def _outcome(ctx: Context, shared: Ranges, result: Result, created: list[str], count: int, start: float) -> str:
    image_id = stream.created_id(result.stdout)
    if image_id:
        created.append(image_id)
    if shared.errors:  # a stream failed: Glance's error (a short upload) is its consequence
        raise shared.errors[0]
    made(ctx, result, image_id)
    ctx.sending(shared.size, shared.size)
    took = ctx.clock() - start
    return (f"Image transferred ({whole_mib(shared.size)} in {took:.0f} s, streamed into Glance on {ctx.site.id} "
            f"over {count} ssh streams, {whole_mib(shared.sent)} sent)")
