"""AWS VM Import: stage the disk in S3 (multipart), ImportImage, poll the task, cancel on failure.

ImportImage's ClientToken is derived from the job id, so a retried job (same id) gets its
running import task back instead of starting a second one.
"""

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from boto3.s3.transfer import TransferConfig

from migratio.aws import amis
from migratio.aws.clients import AwsClients, error_code, wait_for
from migratio.errors import CommandFailed, ConfigError, PermanentError, StepError
from migratio.local import qemu
from migratio.local.commands import Commands
from migratio.units import MiB

PART_SIZE = 64 * MiB  # s3transfer raises it when a file would need more than 10,000 parts
FORMATS = {"raw": "RAW", "vmdk": "VMDK"}
TOKEN_ATTEMPTS = 5
DONE_STATES = ("completed", "deleting", "deleted")


def to_vmdk(commands: Commands, src: Path, src_format: str, dest: Path,
            progress: Callable[[float], None] | None = None) -> None:
    """Convert to a streamOptimized VMDK (compressed, holes dropped: much less to upload).

    Sequential writes: streamOptimized cannot take qemu-img's out-of-order (-W) mode.
    """
    argv = ["qemu-img", "convert", "-p", "-f", qemu.qemu_format(src_format), "-O", "vmdk",
            "-o", "subformat=streamOptimized", str(src), str(dest)]

    def on_line(line: str) -> None:
        match = qemu.PROGRESS_RE.search(line)
        if match and progress:
            progress(float(match.group(1)) / 100)

    try:
        commands.run(argv, what="qemu-img convert", on_output=on_line)
    except CommandFailed as exc:
        dest.unlink(missing_ok=True)
        tail = [ln.strip() for ln in exc.stderr_tail.splitlines() if ln.strip()]
        reason = tail[-1].removeprefix("qemu-img: ") if tail else str(exc)
        raise PermanentError(f"qemu-img convert of {src.name} to streamOptimized VMDK failed: {reason}") from None


def check_bucket(aws: AwsClients) -> str:
    """The site's bucket, after checking it exists in the site's region and is reachable."""
    bucket = aws.site.bucket
    if not bucket:
        raise ConfigError("key 'bucket' is required in the site conf for import: vm-import")
    aws.s3.head_bucket(Bucket=bucket)
    return bucket


def upload(aws: AwsClients, path: Path, key: str, *, concurrency: int, part_size: int = PART_SIZE,
           progress: Callable[[int, int], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
    """Multipart upload of `path` to the site's bucket, `concurrency` parts at once.

    s3transfer aborts the multipart upload itself when a part fails.
    """
    total = path.stat().st_size
    config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size,
                            max_concurrency=max(1, concurrency), use_threads=True)
    report = _Progress(total, progress, clock)
    aws.s3.upload_file(str(path), aws.site.bucket, key, Config=config, Callback=report)
    report.final()


class _Progress:
    """s3transfer calls back from its threads with byte increments; report at most once a second."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None, clock: Callable[[], float]):
        self.total, self.progress, self.clock = total, progress, clock
        self.done, self.last = 0, clock()
        self.lock = threading.Lock()

    def __call__(self, increment: int) -> None:
        with self.lock:
            self.done += increment
            if self.progress and self.clock() - self.last >= 1.0:
                self.last = self.clock()
                self.progress(self.done, self.total)

    def final(self) -> None:
        if self.progress:
            self.progress(self.done, self.total)


def delete_object(aws: AwsClients, key: str) -> None:
    aws.s3.delete_object(Bucket=aws.site.bucket, Key=key)


def import_request(aws: AwsClients, *, token: str, key: str, disk_format: str, description: str,
                   architecture: str, boot_mode: str | None, tags: list[dict[str, str]]) -> dict[str, Any]:
    """The ImportImage parameters (kept separate so tests can check them against the service model)."""
    site = aws.site
    request: dict[str, Any] = {
        "ClientToken": token,
        "RoleName": site.role_name,
        "Description": description[:255],
        "Architecture": architecture,
        "DiskContainers": [{
            "Description": description[:255],
            "Format": FORMATS[disk_format],
            "UserBucket": {"S3Bucket": site.bucket, "S3Key": key},
        }],
        "TagSpecifications": [{"ResourceType": "import-image-task", "Tags": tags}],
    }
    if boot_mode:
        request["BootMode"] = boot_mode
    return request


def start_import(aws: AwsClients, request: dict[str, Any], log: logging.LoggerAdapter | logging.Logger) -> dict[str, Any]:
    """ImportImage; a token whose task is gone (cancelled by an earlier attempt) moves to the job's next token."""
    base = request["ClientToken"]
    for attempt in range(TOKEN_ATTEMPTS):
        token = f"{base}-{attempt}" if attempt else base
        try:
            task = aws.ec2.import_image(**{**request, "ClientToken": token})
        except StepError as exc:
            if error_code(exc) == "IdempotentParameterMismatch" and attempt < TOKEN_ATTEMPTS - 1:
                log.warning("ImportImage token %d refused (%s); trying the next one", attempt, exc)
                continue
            raise
        if task.get("Status") not in ("deleting", "deleted"):
            return task
        log.warning("import task %s of an earlier attempt is %s; starting a new one",
                    task.get("ImportTaskId"), task.get("Status"))
    raise PermanentError(f"could not start a new import task: the job's {TOKEN_ATTEMPTS} ClientTokens all belong to "
                         f"cancelled tasks; submit the migration again as a new job")


def describe_task(aws: AwsClients, task_id: str) -> dict[str, Any]:
    tasks = aws.ec2.describe_import_image_tasks(ImportTaskIds=[task_id])["ImportImageTasks"]
    if not tasks:
        raise PermanentError(f"import task {task_id} is gone from AWS")
    return tasks[0]


def wait_import(aws: AwsClients, task_id: str, *, interval: float, timeout: float,
                report: Callable[[dict[str, Any]], None] | None = None,
                sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll the task until it completes (returns it) or fails (PermanentError with AWS's reason)."""

    def check() -> dict[str, Any] | None:
        task = describe_task(aws, task_id)
        if report:
            report(task)
        status = task.get("Status")
        if status == "completed":
            if not task.get("ImageId"):
                raise PermanentError(f"import task {task_id} completed without an AMI")
            return task
        if status in ("deleting", "deleted"):
            raise PermanentError(f"AWS VM Import task {task_id} failed: "
                                 f"{task.get('StatusMessage') or 'no reason given'}")
        return None

    return wait_for(check, what=f"import task {task_id}", interval=interval, timeout=timeout, sleep=sleep)


def abandon(aws: AwsClients, task_id: str) -> None:
    """Failure cleanup: cancel the task if it still runs, remove its AMI and snapshots if it completed."""
    task = describe_task(aws, task_id)
    status = task.get("Status")
    if status == "completed" and task.get("ImageId"):
        amis.remove(aws, task["ImageId"], snapshot_ids(task))
    elif status not in DONE_STATES:
        aws.ec2.cancel_import_task(ImportTaskId=task_id, CancelReason="migratio job failed")


def snapshot_ids(task: dict[str, Any]) -> list[str]:
    return [d["SnapshotId"] for d in task.get("SnapshotDetails") or [] if d.get("SnapshotId")]
