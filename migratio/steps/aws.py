"""Steps for Amazon EC2 destinations: dedupe by source tags, import (EBS direct or VM Import), tag."""

import os
from typing import Any, Callable

from migratio.aws import amis, ebs_direct, vm_import
from migratio.aws.clients import AwsClients, client_token
from migratio.errors import PermanentError, VerificationFailed
from migratio.openstack.glance import SourceImage
from migratio.origin import SOURCE_CS, SOURCE_T, SOURCE_UUID
from migratio.pipeline.context import Context, Fact
from migratio.pipeline.runner import Step
from migratio.steps import common

AMI_TIMEOUT = 3600  # seconds for a registered AMI to become available
PENDING_TIMEOUT = 1800  # seconds dedupe waits for a pending AMI left by an earlier attempt
BAD_STATES = ("failed", "error", "invalid")


def _aws(ctx: Context) -> AwsClients:
    return ctx.services.aws(ctx.site.aws)


class Dedupe(Step):
    """An available AMI tagged with this image's source_uuid and this site's source_t (or source_cs
    alone: AMIs of older migratio versions and the old tool) ends the job as 'already present'.

    A pending one (an earlier attempt crashed after RegisterImage) is waited for; failed ones,
    which carry our tags and can never be used, are removed with their snapshots.
    """

    name = "dedupe"

    def run(self, ctx: Context) -> str | None:
        site = ctx.site.aws
        aws = _aws(ctx)
        images = amis.by_source(aws, ctx.job.image_id, ctx.job.source_site)
        for image in (i for i in images if i["State"] in BAD_STATES):
            ctx.log.warning("removing %s AMI %s left by an earlier attempt", image["State"], image["ImageId"])
            amis.remove(aws, image["ImageId"])
        ready = [i for i in images if i["State"] == "available"]
        pending = [i["ImageId"] for i in images if i["State"] == "pending"]
        while pending and not ready:
            ready = _settle(ctx, aws, pending.pop(0))
        if not ready:
            return f"No copy on {ctx.site.id} yet"
        ami = ready[0]["ImageId"]
        ctx.dest_image_id, ctx.already_present, ctx.region = ami, True, site.region
        ctx.finished = True
        return None  # the job's final line says "Image already present" (once)


def _settle(ctx: Context, aws: AwsClients, ami: str) -> list[dict[str, Any]]:
    """Wait for a pending AMI of an earlier attempt: [it] once available; [] (and removed) if it fails."""
    ctx.say(f"dedupe: waiting for pending AMI {ami} of an earlier attempt")
    try:
        return [amis.wait_available(aws, ami, interval=ctx.site.aws.poll_interval, timeout=PENDING_TIMEOUT)]
    except amis.AmiFailed as exc:
        ctx.log.warning("pending AMI %s did not become available (%s): removing it", ami, exc)
        amis.remove(aws, ami)
        return []


class Convert(common.Convert):
    """EBS direct and VM Import RAW need a raw disk; for VM Import VMDK the import step converts
    straight to streamOptimized VMDK (no raw copy in between)."""

    def target_format(self, ctx: Context) -> str | None:
        site = ctx.site.aws
        if site.import_mode == "vm-import" and site.vm_import_format == "vmdk":
            return None
        return "raw"


class Import(Step):
    """Makes the AMI: EBS direct (snapshot + RegisterImage) or VM Import, as the site conf says."""

    name = "import"
    needs = frozenset({Fact.IMAGE, Fact.INSPECTED, Fact.PAYLOAD})
    provides = frozenset({Fact.DEST_IMAGE})

    def run(self, ctx: Context) -> str | None:
        site, image = ctx.site.aws, ctx.require_image()
        size = max(image.virtual_size or 0, os.path.getsize(ctx.require_payload()))
        gib = ebs_direct.check_size(size, f"image {image.id}")  # before anything is sent
        arch, mode = amis.architecture(site, image.properties), amis.boot_mode(site, image.properties)
        aws = _aws(ctx)
        if site.import_mode == "vm-import":
            ami, snapshots = _vm_import(ctx, aws, image, arch, mode)
        else:
            ami, snapshots = _ebs_direct(ctx, aws, image, gib, arch, mode)
        ctx.dest_image_id, ctx.snapshot_ids, ctx.region = ami, snapshots, site.region
        return f"Image imported as {ami} in {site.region}"


class Tag(Step):
    """Tags the AMI and its snapshots (source_t, source_uuid, source_cs, Name) and checks the AMI is available."""

    name = "tag"
    needs = frozenset({Fact.IMAGE, Fact.DEST_IMAGE})

    def run(self, ctx: Context) -> str | None:
        aws, image, ami = _aws(ctx), ctx.require_image(), ctx.require_dest_image_id()
        described = amis.describe(aws, ami)
        if described is None:
            raise VerificationFailed(f"AMI {ami} is gone from {ctx.site.aws.region}")
        snapshots = list(dict.fromkeys([*(ctx.snapshot_ids or []), *amis.snapshots_of(described)]))
        tags = amis.source_tags(image.id, ctx.job.source_site, image.name)
        aws.ec2.create_tags(Resources=[ami, *snapshots], Tags=tags)
        _verify(amis.describe(aws, ami), ami, tags)
        return (f"AMI {ami} tagged ({SOURCE_T} {ctx.job.source_site}, {SOURCE_UUID} {image.id}, "
                f"{SOURCE_CS} {ctx.job.source_site})")


def _verify(image: dict[str, Any] | None, ami: str, tags: list[dict[str, str]]) -> None:
    if image is None or image.get("State") != "available":
        raise VerificationFailed(f"AMI {ami} is {image and image.get('State') or 'gone'}, not available")
    have = {t["Key"]: t["Value"] for t in image.get("Tags") or []}
    missing = [t["Key"] for t in tags if have.get(t["Key"]) != t["Value"]]
    if missing:
        raise VerificationFailed(f"AMI {ami} lacks tag(s) {', '.join(missing)} after tagging")


def _ebs_direct(ctx: Context, aws: AwsClients, image: SourceImage, gib: int, arch: str,
                mode: str | None) -> tuple[str, list[str]]:
    site = ctx.site.aws
    if ctx.payload_format != "raw":
        raise PermanentError(f"import: ebs-direct needs a raw disk, got a {ctx.payload_format} payload "
                             f"(the 'convert' step must run before 'import')")
    tags = amis.source_tags(image.id, ctx.job.source_site, image.name)
    description = f"{image.name} ({image.id}) from {ctx.job.source_site}, migratio job {ctx.job.job_id}"
    snapshot = ebs_direct.start_snapshot(aws, gib, client_token(ctx.job.job_id, "snapshot"), description, tags,
                                         ctx.log)
    ctx.on_failure(f"delete EBS snapshot {snapshot}", lambda: amis.delete_snapshot(aws, snapshot))
    ctx.say(f"import: writing {image.id} into EBS snapshot {snapshot}")
    writer = ebs_direct.BlockWriter(aws.ebs, snapshot, site.blocks_in_flight, progress=ctx.sending, clock=ctx.clock)
    stats = writer.write(ctx.require_payload())
    ctx.log.info("snapshot %s: sent %d blocks of %d allocated (%d zero skipped, %d in the volume) in %.1fs",
                 snapshot, stats.blocks_sent, stats.blocks_allocated, stats.blocks_zero, stats.blocks_total,
                 stats.seconds)
    ctx.details.update(blocks_sent=stats.blocks_sent, blocks_allocated=stats.blocks_allocated,
                      blocks_zero=stats.blocks_zero, blocks_total=stats.blocks_total)
    ebs_direct.complete_snapshot(aws, snapshot, stats.blocks_sent, interval=site.poll_interval,
                                 timeout=ctx.config.job_timeout)
    request = amis.register_request(site, name=amis.ami_name(image.name, image.id), description=description,
                                    snapshot_id=snapshot, gib=gib, arch=arch, mode=mode, tags=tags)
    ami = amis.register(aws, request, ctx.log)
    ctx.on_failure(f"deregister AMI {ami}", lambda: amis.remove(aws, ami, [snapshot]))
    amis.wait_available(aws, ami, interval=site.poll_interval, timeout=AMI_TIMEOUT)
    return ami, [snapshot]


def _vm_import(ctx: Context, aws: AwsClients, image: SourceImage, arch: str,
               mode: str | None) -> tuple[str, list[str]]:
    site = ctx.site.aws
    bucket = vm_import.check_bucket(aws)  # before converting: a wrong bucket fails fast
    source = ctx.require_payload()
    payload, disk_format = source, site.vm_import_format
    if disk_format == "vmdk":
        payload = ctx.workdir / f"{image.id}.vmdk"
        ctx.on_exit(f"remove {payload}", lambda: payload.unlink(missing_ok=True))
        allocated = os.stat(source).st_blocks * 512  # a streamOptimized VMDK is compressed: at most this
        common.ensure_space(ctx.workdir, allocated, f"converting image {image.id} to VMDK")
        total = image.virtual_size or os.path.getsize(source)
        vm_import.to_vmdk(ctx.commands, source, ctx.payload_format, payload,
                          progress=lambda fraction: ctx.progress(int(fraction * total), total))
    elif ctx.payload_format != "raw":
        raise PermanentError(f"import: vm-import with format raw needs a raw disk, got a {ctx.payload_format} "
                             f"payload (the 'convert' step must run before 'import')")
    key = f"migratio/{ctx.job.job_id}/{image.id}.{disk_format}"
    ctx.on_exit(f"delete s3://{bucket}/{key}", lambda: vm_import.delete_object(aws, key))
    ctx.say(f"import: uploading {image.id} to s3://{bucket}/{key}")
    vm_import.upload(aws, payload, key, concurrency=site.blocks_in_flight, progress=ctx.sending, clock=ctx.clock)
    tags = amis.source_tags(image.id, ctx.job.source_site, image.name)
    description = f"{image.name} ({image.id}) from {ctx.job.source_site}, migratio job {ctx.job.job_id}"
    request = vm_import.import_request(aws, token=client_token(ctx.job.job_id, "import-image"), key=key,
                                       disk_format=disk_format, description=description, architecture=arch,
                                       boot_mode=mode, tags=tags)
    task_id = vm_import.start_import(aws, request, ctx.log)["ImportTaskId"]
    ctx.on_failure(f"cancel import task {task_id}", lambda: vm_import.abandon(aws, task_id))
    ctx.say(f"import: AWS VM Import task {task_id} started")
    task = vm_import.wait_import(aws, task_id, interval=site.poll_interval, timeout=ctx.config.job_timeout,
                                 report=_import_reporter(ctx, task_id))
    vm_import.delete_object(aws, key)  # not needed any more; on_exit deletes it on failure paths
    return task["ImageId"], vm_import.snapshot_ids(task)


def _import_reporter(ctx: Context, task_id: str) -> Callable[[dict[str, Any]], None]:
    last: dict[str, Any] = {}

    def report(task: dict[str, Any]) -> None:
        status, progress = task.get("StatusMessage") or task.get("Status"), task.get("Progress")
        ctx.meta.update(import_task=task_id, import_status=status, import_progress=progress)
        if (status, progress) != (last.get("status"), last.get("progress")):
            last.update(status=status, progress=progress)
            ctx.say(f"import: AWS VM Import {task_id} {status}" + (f" ({progress}%)" if progress else ""))

    return report
