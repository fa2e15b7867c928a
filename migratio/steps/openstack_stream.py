"""Transfer's default for OpenStack destinations: the payload piped over ssh into the destination
Glance on its head node (the shell line of migratio.openstack.stream), registered as it arrives.

Whatever the attempt creates is cleaned up however it ends: the caller registers the deletion of
the image before the command runs, and the id lands in `created` as soon as the head node names
it. A feed that fails (the payload cannot be read) does not cut the connection: the head node's
input just ends early, so its line gives up on its own and prints which image it created; that
one is deleted, and the feed's error is the job's.
"""

from pathlib import Path
from typing import BinaryIO, Callable

from migratio.errors import PermanentError, TransientError
from migratio.local.commands import Result
from migratio.openstack import compression, stream
from migratio.openstack.glance_protocol import StreamCommands
from migratio.openstack.openssh import ssh_argv
from migratio.pipeline.context import Context
from migratio.units import whole_mib


def stream_into_glance(ctx: Context, commands: StreamCommands, payload: Path, remote_path: str,
                       created: list[str], compress: bool = False) -> str | None:
    """Pipe the payload (compressed with `compress`) into the destination Glance; returns the status line.

    None (nothing registered: rsync it) when an earlier attempt left a partial staged copy to resume.
    """
    options, size = ctx.site.openstack, payload.stat().st_size
    decoder = compression.DECOMPRESS if compress else ()
    line = stream.remote_line(commands, remote_path, size, options.remote_env_file, decoder)
    limit = ctx.site.limits.bandwidth_limit
    start = ctx.clock()

    def progress(done: int) -> None:
        elapsed = ctx.clock() - start
        ctx.sending(done, size, done / elapsed if elapsed > 0 else None)

    tally = stream.Tally()
    feed = stream.feeder(payload, limit * 1024 if limit else None, progress, compress=compress, tally=tally)
    failed: list[Exception] = []

    def ending_early_on_failure(pipe: BinaryIO) -> None:
        try:
            feed(pipe)
        except BrokenPipeError:
            raise  # the head node stopped reading: its exit status says why
        except Exception as exc:  # its stdin is closed now: the line gives up and names its image
            failed.append(exc)

    with ctx.remote(options) as shell:  # the job's connection: no new login
        argv = ssh_argv(options, line, shell.ssh_options)
    result = ctx.commands.run(argv, what="ssh stream", check=False, feed=ending_early_on_failure)
    ctx.log.info("streamed %d payload bytes as %d bytes on the wire (%s)", tally.payload, tally.wire,
                 "zstd" if compress else "uncompressed")
    image_id = stream.created_id(result.stdout)
    if image_id:
        created.append(image_id)
    if failed:
        raise feed_failure(failed[0], payload, ctx.site.id)
    if result.returncode == stream.PARTIAL_STAGED:
        ctx.log.info("a partial copy of an earlier attempt is staged: resuming it with rsync")
        return None
    made(ctx, result, image_id)
    took = ctx.clock() - start
    wire = f", {whole_mib(tally.wire)} on the wire with zstd" if compress else ""
    return f"Image transferred ({whole_mib(size)} in {took:.0f} s{wire}, streamed into Glance on {ctx.site.id})"


def made(ctx: Context, result: Result, image_id: str | None) -> None:
    """The head node's line ended: its failure raised, else the image it made is the job's copy."""
    error = stream.outcome(result.returncode, result.stdout, result.stderr_tail, ctx.site.openstack, ctx.site.id)
    if error:
        raise error
    if not image_id:
        raise PermanentError(f"remote glance image-create on {ctx.site.id}: no image id in its output")
    ctx.dest_image_id, ctx.already_present = image_id, False


def use_compression(ctx: Context, payload: Path, head_node_zstd: Callable[[], str | None]) -> bool:
    """Whether to compress the stream: `compress: true` always (an error where zstd is missing),
    `false` never, `auto` on a link capped by `bandwidth_limit` (the link, not the CPU, is the
    limit) when both ends have zstd and a sample of the payload compresses (the head node is
    asked last: an incompressible payload costs no round trip)."""
    site, mode = ctx.site, ctx.site.openstack.compress
    if mode is False or (mode == "auto" and not _capped(ctx)):
        return False
    missing = None if compression.local_program() else "the worker"
    if mode == "auto" and not missing and not _compresses(ctx, payload):
        return False
    missing = missing or (None if head_node_zstd() else f"the head node {site.openstack.host}")
    if missing and mode is True:
        raise PermanentError(f"{site.path}: key 'compress' is true but zstd is not installed on {missing} "
                             f"(site {site.id}): install it there or set 'compress: auto'")
    if missing:
        ctx.log.info("zstd is not installed on %s: streaming image %s uncompressed", missing, ctx.job.image_id)
    return not missing


def _capped(ctx: Context) -> bool:
    limit = ctx.site.limits.bandwidth_limit
    if compression.link_capped(limit):
        return True
    ctx.log.info("streaming uncompressed (compress: auto): the link is not capped at %d KiB/s or less "
                 "(bandwidth_limit %s), compressing would cost more CPU than link time", compression.AUTO_LIMIT, limit)
    return False


def _compresses(ctx: Context, payload: Path) -> bool:
    ratio = compression.sample_ratio(payload)
    worth = ratio >= compression.MIN_RATIO
    ctx.log.info("a sample of %s compresses %.2fx with zstd -1: %s", payload.name, ratio,
                 "worth compressing" if worth else "streaming it uncompressed")
    return worth


def feed_failure(exc: Exception, payload: Path, site_id: str) -> Exception:
    """A payload that could not be read, as a retryable error naming it; anything else as it is."""
    if isinstance(exc, OSError):
        return TransientError(f"reading {payload} to stream it to {site_id} failed: {exc.strerror or exc}")
    return exc
