"""The vm-import mode: S3 multipart upload (against moto_server) and the ImportImage task.

moto does not implement ImportImage, DescribeImportImageTasks or CancelImportTask (its server
answers HTTP 500 with an HTML page, see tests/test_aws_clients.py). Those calls are therefore
checked with botocore's Stubber, which validates every request against the real EC2 service
model and returns answers of the real shapes. No test here claims the emulator ran an import;
an end-to-end import needs real AWS and is not part of this suite.
"""

import hashlib
import os
import subprocess

import pytest
from botocore.stub import ANY, Stubber

from migratio.aws import vm_import
from migratio.aws.clients import AwsClients, client_token
from migratio.errors import PermanentError, TransientError
from migratio.pipeline.runner import run_pipeline
from migratio.steps import aws as aws_steps
from tests.aws_helpers import aws_context, make_sparse_raw

MiB = 1024 * 1024


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.moto
def test_multipart_upload_with_progress(moto_server, moto_site, moto_bucket, tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(12 * MiB + 123))
    aws = AwsClients.connect(moto_site(bucket=moto_bucket).options)
    reports = []
    vm_import.upload(aws, path, "migratio/job/disk.raw", concurrency=3, part_size=5 * MiB,
                     progress=lambda done, total: reports.append((done, total)))
    s3 = moto_server.client("s3")
    head = s3.head_object(Bucket=moto_bucket, Key="migratio/job/disk.raw")
    assert head["ContentLength"] == path.stat().st_size
    assert head["ETag"].strip('"').endswith("-3"), "three parts of 5 MiB"
    body = s3.get_object(Bucket=moto_bucket, Key="migratio/job/disk.raw")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha256(path)
    assert reports[-1] == (path.stat().st_size, path.stat().st_size)


@pytest.mark.moto
def test_upload_to_missing_bucket_is_one_clear_line(moto_server, moto_site, aws_env, tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(b"x" * 1000)
    aws = AwsClients.connect(moto_site(bucket="missing-bucket-x").options)
    with pytest.raises(PermanentError, match=r"^bucket missing-bucket-x does not exist in region eu-west-1$"):
        vm_import.upload(aws, path, "k", concurrency=2)


def stubbed(aws: AwsClients) -> Stubber:
    """Stub the EC2 client only: S3 keeps talking to moto."""
    return Stubber(aws.ec2.raw)


def task(status: str, message: str = "", progress: str | None = None, **extra) -> dict:
    result = {"ImportTaskId": "import-ami-0123456789abcdef0", "Status": status, "StatusMessage": message, **extra}
    if progress is not None:
        result["Progress"] = progress
    return result


def expected_request(job, bucket: str, key: str) -> dict:
    return {
        "ClientToken": client_token(job.ctx.job.job_id, "import-image"),
        "RoleName": "vmimport",
        "Description": ANY,
        "Architecture": "x86_64",
        "BootMode": "uefi",
        "DiskContainers": [{"Description": ANY, "Format": "VMDK",
                            "UserBucket": {"S3Bucket": bucket, "S3Key": key}}],
        "TagSpecifications": [{"ResourceType": "import-image-task", "Tags": [
            {"Key": "source_t", "Value": "site-a"}, {"Key": "source_uuid", "Value": job.image_id},
            {"Key": "source_cs", "Value": "site-a"}, {"Key": "Name", "Value": f"test image-{job.image_id}"}]}],
    }


def qcow2(tmp_path):
    raw = make_sparse_raw(tmp_path / "disk.raw").path
    path = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    return path


@pytest.mark.moto
def test_import_step_vm_import_vmdk_request_shapes_and_polling(moto_server, moto_site, moto_bucket, tmp_path):
    """Real: qemu-img to streamOptimized VMDK, multipart upload to moto's S3, cleanup of the object.
    Stubbed (Stubber, real EC2 model): ImportImage, DescribeImportImageTasks progress and completion."""
    site = moto_site(bucket=moto_bucket, import_mode="vm-import", vm_import_format="vmdk")
    job = aws_context(tmp_path, site, qcow2(tmp_path), payload_format="qcow2",
                      properties={"hw_firmware_type": "uefi"})
    aws = AwsClients.connect(site.options)
    job.ctx.services = job.ctx.services.__class__(**{**job.ctx.services.__dict__, "aws": lambda _: aws})
    key = f"migratio/{job.ctx.job.job_id}/{job.image_id}.vmdk"
    snapshot = {"SnapshotId": "snap-0123456789abcdef0", "Status": "completed"}
    with stubbed(aws) as stub:
        stub.add_response("import_image", task("active", "pending", "0"), expected_request(job, moto_bucket, key))
        ids = {"ImportTaskIds": ["import-ami-0123456789abcdef0"]}
        stub.add_response("describe_import_image_tasks", {"ImportImageTasks": [task("active", "converting", "40")]}, ids)
        stub.add_response("describe_import_image_tasks", {"ImportImageTasks": [
            task("completed", "", ImageId="ami-0123456789abcdef0", SnapshotDetails=[snapshot])]}, ids)
        line = aws_steps.Import().run(job.ctx)
        stub.assert_no_pending_responses()
    assert line == "Image imported as ami-0123456789abcdef0 in eu-west-1"
    assert job.ctx.result["snapshot_ids"] == ["snap-0123456789abcdef0"]
    assert any("converting (40%)" in text for text in job.ctx.status.lines)
    assert job.ctx.meta.data["import_status"] == "completed"
    assert "Contents" not in moto_server.client("s3").list_objects_v2(Bucket=moto_bucket), "object deleted"
    job.ctx.run_cleanups(failed=False)
    assert not list(job.ctx.workdir.iterdir()), "the VMDK is removed"


@pytest.mark.moto
def test_failed_import_task_is_one_line_and_leaves_nothing(moto_server, moto_site, moto_bucket, tmp_path):
    """The task ends 'deleted' with AWS's reason: permanent error; S3 object and VMDK gone, no cancel needed."""
    site = moto_site(bucket=moto_bucket, import_mode="vm-import", vm_import_format="raw")
    job = aws_context(tmp_path, site, make_sparse_raw(tmp_path / "disk.raw").path)
    aws = AwsClients.connect(site.options)
    job.ctx.services = job.ctx.services.__class__(**{**job.ctx.services.__dict__, "aws": lambda _: aws})
    reason = "ClientError: No valid partitions. Not a valid volume."
    with stubbed(aws) as stub:
        stub.add_response("import_image", task("active", "pending", "0"), None)
        stub.add_response("describe_import_image_tasks", {"ImportImageTasks": [task("deleted", reason)]}, None)
        stub.add_response("describe_import_image_tasks", {"ImportImageTasks": [task("deleted", reason)]}, None)
        with pytest.raises(PermanentError) as info:
            run_pipeline(job.ctx, [aws_steps.Import()])
        stub.assert_no_pending_responses()
    assert str(info.value) == f"AWS VM Import task import-ami-0123456789abcdef0 failed: {reason}"
    assert "Contents" not in moto_server.client("s3").list_objects_v2(Bucket=moto_bucket)


@pytest.mark.moto
def test_polling_failure_cancels_the_import_task(moto_server, moto_site, moto_bucket, tmp_path):
    site = moto_site(bucket=moto_bucket, import_mode="vm-import", vm_import_format="raw")
    job = aws_context(tmp_path, site, make_sparse_raw(tmp_path / "disk.raw").path)
    aws = AwsClients.connect(site.options)
    aws.ec2.raw.meta.config.retries["total_max_attempts"] = 1
    job.ctx.services = job.ctx.services.__class__(**{**job.ctx.services.__dict__, "aws": lambda _: aws})
    with stubbed(aws) as stub:
        stub.add_response("import_image", task("active", "pending", "0"), None)
        stub.add_client_error("describe_import_image_tasks", "RequestLimitExceeded", http_status_code=503)
        stub.add_response("describe_import_image_tasks", {"ImportImageTasks": [task("active", "converting", "10")]})
        stub.add_response("cancel_import_task", {"ImportTaskId": "import-ami-0123456789abcdef0",
                                                 "PreviousState": "active", "State": "deleting"},
                          {"ImportTaskId": "import-ami-0123456789abcdef0", "CancelReason": ANY})
        with pytest.raises(TransientError, match="RequestLimitExceeded"):
            run_pipeline(job.ctx, [aws_steps.Import()])
        stub.assert_no_pending_responses()
    assert "Contents" not in moto_server.client("s3").list_objects_v2(Bucket=moto_bucket)


def test_a_cancelled_earlier_task_moves_to_the_next_token(aws_env, moto_site):
    aws = AwsClients.connect(moto_site(bucket="b").options)
    request = vm_import.import_request(aws, token="migratio-abc", key="k", disk_format="raw", description="d",
                                       architecture="arm64", boot_mode=None, tags=[])
    assert "BootMode" not in request and request["DiskContainers"][0]["Format"] == "RAW"
    with stubbed(aws) as stub:
        stub.add_response("import_image", task("deleted", "cancelled"), {**request, "ClientToken": "migratio-abc"})
        stub.add_response("import_image", task("active", "pending"), {**request, "ClientToken": "migratio-abc-1"})
        assert vm_import.start_import(aws, request, _log())["Status"] == "active"
        stub.assert_no_pending_responses()


@pytest.mark.moto
def test_vm_import_with_missing_bucket_fails_before_converting(moto_server, moto_site, aws_env, tmp_path):
    site = moto_site(bucket="no-bucket-for-this", import_mode="vm-import")
    job = aws_context(tmp_path, site, make_sparse_raw(tmp_path / "disk.raw").path)
    with pytest.raises(PermanentError, match=r"^bucket no-bucket-for-this does not exist in region eu-west-1$"):
        run_pipeline(job.ctx, [aws_steps.Import()])
    assert not list(job.ctx.workdir.iterdir())


def _log():
    import logging

    return logging.getLogger("test")
