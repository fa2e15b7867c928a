"""Transfer's default for OpenStack destinations: the payload piped over ssh into the destination
Glance on its head node (the shell line of migratio.openstack.stream), registered as it arrives.

Whatever the attempt creates is cleaned up however it ends: the caller registers the deletion of
the image before the command runs, and the id lands in `created` as soon as the head node names
it. A feed that fails (the payload cannot be read) does not cut the connection: the head node's
input just ends early, so its line gives up on its own and prints which image it created; that
one is deleted, and the feed's error is the job's.
"""

from pathlib import Path
from typing import BinaryIO

from migratio.errors import PermanentError, TransientError
from migratio.local.commands import Result
from migratio.openstack import stream
from migratio.openstack.glance_protocol import StreamCommands
from migratio.openstack.openssh import ssh_argv
from migratio.pipeline.context import Context
from migratio.units import whole_mib


def stream_into_glance(ctx: Context, commands: StreamCommands, payload: Path, remote_path: str,
                       created: list[str]) -> str | None:
    """Pipe the payload into the destination Glance; returns the status line.

    None (nothing registered: rsync it) when an earlier attempt left a partial staged copy to resume.
    """
    options, size = ctx.site.openstack, payload.stat().st_size
    line = stream.remote_line(commands, remote_path, size, options.remote_env_file)
    limit = ctx.site.limits.bandwidth_limit
    start = ctx.clock()

    def progress(done: int) -> None:
        elapsed = ctx.clock() - start
        ctx.sending(done, size, done / elapsed if elapsed > 0 else None)

    feed, failed = stream.feeder(payload, limit * 1024 if limit else None, progress), []

    def ending_early_on_failure(pipe: BinaryIO) -> None:
        try:
            feed(pipe)
        except BrokenPipeError:
            raise  # the head node stopped reading: its exit status says why
        except Exception as exc:  # its stdin is closed now: the line gives up and names its image
            failed.append(exc)

    result = ctx.commands.run(ssh_argv(options, line), what="ssh stream", check=False, feed=ending_early_on_failure)
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
    return f"Image transferred ({whole_mib(size)} in {took:.0f} s, streamed into Glance on {ctx.site.id})"


def made(ctx: Context, result: Result, image_id: str | None) -> None:
    """The head node's line ended: its failure raised, else the image it made is the job's copy."""
    error = stream.outcome(result.returncode, result.stdout, result.stderr_tail, ctx.site.openstack, ctx.site.id)
    if error:
        raise error
    if not image_id:
        raise PermanentError(f"remote glance image-create on {ctx.site.id}: no image id in its output")
    ctx.dest_image_id, ctx.already_present = image_id, False


def feed_failure(exc: Exception, payload: Path, site_id: str) -> Exception:
    """A payload that could not be read, as a retryable error naming it; anything else as it is."""
    if isinstance(exc, OSError):
        return TransientError(f"reading {payload} to stream it to {site_id} failed: {exc.strerror or exc}")
    return exc
