"""AMIs on the destination: found by their source tags, registered from a snapshot, removed with it."""

import logging
import re
from typing import Any, Sequence

from migratio.aws.clients import AwsClients, error_code, wait_for
from migratio.conf.sites import AwsOptions
from migratio.errors import PermanentError, StepError, TransientError
from migratio.origin import SOURCE_T, SOURCE_UUID, is_copy, origin

# Glance `architecture` property values -> EC2 architectures.
ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64",
                 "i386": "i386", "i686": "i386", "x86": "i386"}
FIRMWARE = {"uefi": "uefi", "bios": "legacy-bios"}  # Glance `hw_firmware_type` -> EC2 boot mode
NAME_UNSAFE = re.compile(r"[^A-Za-z0-9()\[\] ./'@_-]+")  # characters an AMI name may not hold
NAME_MAX = 128
UUID_LEN = 36


class AmiFailed(PermanentError):
    """The AMI ended in a failed state (or vanished) while being made."""


def source_tags(image_id: str, source_site: str, image_name: str) -> list[dict[str, str]]:
    """source_t and source_uuid (what Atmosphere reads), source_cs (the old tool's name for source_t)
    and Name = <image name>-<uuid>."""
    tags = [{"Key": key, "Value": value} for key, value in origin(image_id, source_site).items()]
    return tags + [{"Key": "Name", "Value": f"{image_name}-{image_id}"[-256:]}]



def ami_name(image_name: str, image_id: str) -> str:
    """`<image name>-<uuid>` with characters EC2 refuses replaced, at most 128 characters."""
    safe = NAME_UNSAFE.sub("_", image_name).strip() or "image"
    return f"{safe[:NAME_MAX - UUID_LEN - 1]}-{image_id}"


def architecture(site: AwsOptions, properties: dict[str, str]) -> str:
    """The image's `architecture` property when set, else the site's default."""
    value = properties.get("architecture")
    if not value:
        return site.architecture
    try:
        return ARCHITECTURES[value.lower()]
    except KeyError:
        raise PermanentError(f"image architecture '{value}' cannot run on EC2 "
                             f"(supported: {', '.join(sorted(ARCHITECTURES))})") from None


def boot_mode(site: AwsOptions, properties: dict[str, str]) -> str | None:
    """`hw_firmware_type` of the image (uefi or bios) when set, else the site's `boot_mode` (None: EC2's default)."""
    firmware = (properties.get("hw_firmware_type") or "").lower()
    return FIRMWARE.get(firmware) or site.boot_mode


def register_request(site: AwsOptions, *, name: str, description: str, snapshot_id: str, gib: int,
                     arch: str, mode: str | None, tags: list[dict[str, str]]) -> dict[str, Any]:
    request: dict[str, Any] = {
        "Name": name,
        "Description": description[:255],
        "Architecture": arch,
        "RootDeviceName": site.root_device_name,
        "VirtualizationType": "hvm",
        "EnaSupport": site.ena_support,
        "BlockDeviceMappings": [{
            "DeviceName": site.root_device_name,
            "Ebs": {"SnapshotId": snapshot_id, "VolumeSize": gib, "VolumeType": "gp3",
                    "DeleteOnTermination": True},
        }],
        # Tagged as it is created: a crash before the tag step still leaves a findable AMI.
        "TagSpecifications": [{"ResourceType": "image", "Tags": tags}],
    }
    if mode:
        request["BootMode"] = mode
    return request


def register(aws: AwsClients, request: dict[str, Any], log: logging.LoggerAdapter | logging.Logger) -> str:
    """RegisterImage. When the call fails but our AMI exists (a lost answer), its id is returned."""
    try:
        return aws.ec2.register_image(**request)["ImageId"]
    except (TransientError, PermanentError) as exc:
        duplicate = error_code(exc) == "InvalidAMIName.Duplicate"
        if not (duplicate or isinstance(exc, TransientError)):
            raise
        ours = _ours_by_name(aws, request)
        if ours:
            log.warning("RegisterImage failed (%s) but AMI %s is ours: using it", exc, ours)
            return ours
        if duplicate:
            raise PermanentError(f"an AMI named '{request['Name']}' already exists in {aws.site.region} without "
                                 f"this image's source tags: deregister or rename it") from None
        raise


def _ours_by_name(aws: AwsClients, request: dict[str, Any]) -> str | None:
    """The AMI with the request's name and source tags (the answer to RegisterImage was lost)."""
    wanted = {t["Key"]: t["Value"] for t in request["TagSpecifications"][0]["Tags"]}
    try:
        images = by_name(aws, request["Name"])
    except StepError:
        return None
    for image in images:
        if is_copy(_tags(image), wanted[SOURCE_UUID], wanted[SOURCE_T]):
            return image["ImageId"]
    return None


def by_name(aws: AwsClients, name: str) -> list[dict[str, Any]]:
    return aws.ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]


def by_source(aws: AwsClients, image_id: str, source_site: str) -> list[dict[str, Any]]:
    """Our AMIs tagged with this source image and site, newest first.

    One DescribeImages on tag:source_uuid; the site is checked here (source_t, or source_cs alone on
    AMIs of older migratio versions and the old tool), as EC2 filters cannot say "either tag"."""
    filters = [{"Name": f"tag:{SOURCE_UUID}", "Values": [image_id]}]
    images = aws.ec2.describe_images(Owners=["self"], Filters=filters)["Images"]
    ours = [i for i in images if is_copy(_tags(i), image_id, source_site)]
    return sorted(ours, key=lambda i: i.get("CreationDate", ""), reverse=True)


def describe(aws: AwsClients, ami: str) -> dict[str, Any] | None:
    try:
        images = aws.ec2.describe_images(ImageIds=[ami])["Images"]
    except Exception as exc:
        if error_code(exc) in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
            return None
        raise
    return images[0] if images else None


def wait_available(aws: AwsClients, ami: str, *, interval: float, timeout: float) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        image = describe(aws, ami)
        if image is None:
            raise AmiFailed(f"AMI {ami} disappeared while it was being made")
        if image["State"] in ("failed", "error", "invalid", "deregistered"):
            reason = (image.get("StateReason") or {}).get("Message") or "no reason given"
            raise AmiFailed(f"AMI {ami} is {image['State']} on AWS: {reason}")
        return image if image["State"] == "available" else None

    return wait_for(check, what=f"AMI {ami} to become available", interval=interval, timeout=timeout)


def snapshots_of(image: dict[str, Any]) -> list[str]:
    return [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings") or []
            if m.get("Ebs", {}).get("SnapshotId")]


def remove(aws: AwsClients, ami: str, snapshot_ids: Sequence[str] = ()) -> None:
    """Deregister the AMI, then delete its snapshots (and the given ones); what is gone already is fine."""
    image = describe(aws, ami)
    snapshots = list(dict.fromkeys([*(snapshots_of(image) if image else []), *snapshot_ids]))
    if image is not None and image.get("State") != "deregistered":
        aws.ec2.deregister_image(ImageId=ami)
    for snapshot_id in snapshots:
        delete_snapshot(aws, snapshot_id)


def delete_snapshot(aws: AwsClients, snapshot_id: str) -> None:
    try:
        aws.ec2.delete_snapshot(SnapshotId=snapshot_id)
    except Exception as exc:
        if error_code(exc) != "InvalidSnapshot.NotFound":
            raise


def _tags(image: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in image.get("Tags") or []}
