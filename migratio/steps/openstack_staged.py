"""The staged file of an OpenStack destination: its one name per (image, source site, format) in
the head node's staging dir, and its removal when the job ends."""

import posixpath

from migratio.openstack.ranges import marks_dir
from migratio.pipeline.context import Context


def staged_path(ctx: Context) -> str:
    """One name per (image, source site, format) in the destination's staging dir: a retried or
    repeated job finds the partial file an interrupted rsync left and resumes from it (the
    per (image, destination) lock keeps two jobs from writing it at once)."""
    fmt = ctx.payload_format or ctx.site.openstack.disk_format or ctx.require_image().disk_format  # (convert's)
    name = f"{ctx.job.image_id}-{ctx.config.name}.{fmt}"
    return posixpath.join(ctx.site.openstack.staging_dir, name)


def remove_staged_at_the_end(ctx: Context) -> str:
    """Removes the staged file when the job ends, unless a retry will resume it (rsync --partial);
    returns the cleanup's label (registered once, however often this is called)."""
    options, remote_path = ctx.site.openstack, staged_path(ctx)
    label = f"remove staged file {remote_path} on {options.host}"
    ctx.forget_exit_action(label)
    ctx.on_exit(label, lambda: _remote(ctx, ["rm", "-rf", "--", remote_path, marks_dir(remote_path)],
                                       "rm of the staged file"),
                keep_for_retry=True)
    return label


def _remote(ctx: Context, argv: list[str], what: str) -> None:
    with ctx.remote(ctx.site.openstack) as shell:
        shell.check(argv, what=what)
