"""The AWS steps (dedupe, import in ebs-direct mode, tag) against moto_server, ctx filled directly.

moto keeps only Name and Description of RegisterImage, so the request we build is captured on
the client (botocore's provide-client-params event) and checked there.
"""

import json
import logging
import subprocess
import sys
import uuid

import pytest
from botocore.exceptions import ClientError

from migratio import origin
from migratio.aws.clients import AwsClients
from migratio.aws.ebs_direct import BLOCK_SIZE
from migratio.errors import AuthError, ConfigError, PermanentError, TransientError
from migratio.pipeline.runner import run_pipeline
from migratio.steps import aws as aws_steps
from migratio.steps import common
from tests.aws_helpers import aws_context, make_sparse_raw

pytestmark = pytest.mark.moto


def capture(calls: dict, *operations: str):
    """connect() that records the parameters of the given operations (service.Operation)."""

    def connect(options):
        aws = AwsClients.connect(options)
        for name in operations:
            service, op = name.split(".")
            client = getattr(aws, service).raw
            client.meta.events.register(f"provide-client-params.{service}.{op}",
                                        lambda params, op=op, **_: calls.setdefault(op, []).append(dict(params)))
        return aws

    return connect


def failing(operation: str, code: str = "InternalError", status: int = 500):
    """connect() whose `operation` (service.Operation) fails with an AWS error, before any request."""

    def connect(options):
        aws = AwsClients.connect(options)
        aws.ec2.raw.meta.config.retries["total_max_attempts"] = 1
        service, op = operation.split(".")

        def fail(**_):
            raise ClientError({"Error": {"Code": code, "Message": "injected"},
                               "ResponseMetadata": {"HTTPStatusCode": status}}, op)

        getattr(aws, service).raw.meta.events.register(f"before-call.{service}.{op}", fail)
        return aws

    return connect


def tagged_snapshots(moto_server, image_id: str) -> list[dict]:
    filters = [{"Name": "tag:source_uuid", "Values": [image_id]}]
    return moto_server.client("ec2").describe_snapshots(OwnerIds=["self"], Filters=filters)["Snapshots"]


def tagged_images(moto_server, image_id: str) -> list[dict]:
    filters = [{"Name": "tag:source_uuid", "Values": [image_id]}]
    return moto_server.client("ec2").describe_images(Owners=["self"], Filters=filters)["Images"]


def existing_ami(moto_server, image_id: str, **origin: str) -> str:
    """An available AMI (with its snapshot) tagged source_uuid=image_id + `origin`, as another run left it."""
    ec2 = moto_server.client("ec2")
    volume = ec2.create_volume(Size=1, AvailabilityZone="eu-west-1a")["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    ec2.delete_volume(VolumeId=volume)
    ami = ec2.register_image(Name=f"copy-{uuid.uuid4()}", RootDeviceName="/dev/xvda", VirtualizationType="hvm",
                             BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}])
    ec2.create_tags(Resources=[ami["ImageId"]], Tags=[{"Key": "source_uuid", "Value": image_id},
                                                      *({"Key": k, "Value": v} for k, v in origin.items())])
    return ami["ImageId"]


def snapshot_exists(moto_server, snapshot_id: str) -> bool:
    try:
        moto_server.client("ec2").describe_snapshots(SnapshotIds=[snapshot_id])
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "InvalidSnapshot.NotFound"
        return False
    return True


def test_ebs_direct_import_tag_then_dedupe(moto_server, moto_site, aws_env, tmp_path):
    disk = make_sparse_raw(tmp_path / "disk.raw")
    calls: dict = {}
    site = moto_site()
    job = aws_context(tmp_path, site, disk.path, properties={"architecture": "aarch64", "hw_firmware_type": "uefi"},
                      connect=capture(calls, "ec2.RegisterImage", "ebs.StartSnapshot"))
    assert run_pipeline(job.ctx, [aws_steps.Dedupe(), aws_steps.Import(), aws_steps.Tag(), common.Cleanup()])
    result = job.ctx.result
    ami, snapshot = result["dest_image_id"], result["snapshot_ids"][0]

    name = f"test image-{job.image_id}"
    tags = [{"Key": "source_t", "Value": "site-a"}, {"Key": "source_uuid", "Value": job.image_id},
            {"Key": "source_cs", "Value": "site-a"}, {"Key": "Name", "Value": name}]
    [request] = calls["RegisterImage"]
    assert request == {
        "Name": name, "Description": request["Description"], "Architecture": "arm64", "BootMode": "uefi",
        "RootDeviceName": "/dev/xvda", "VirtualizationType": "hvm", "EnaSupport": True,
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {
            "SnapshotId": snapshot, "VolumeSize": 1, "VolumeType": "gp3", "DeleteOnTermination": True}}],
        "TagSpecifications": [{"ResourceType": "image", "Tags": tags}],
    }
    [start] = calls["StartSnapshot"]
    assert start["VolumeSize"] == 1 and start["ClientToken"].startswith("migratio-") and start["Tags"] == tags

    ec2 = moto_server.client("ec2")
    image = ec2.describe_images(ImageIds=[ami])["Images"][0]
    assert image["State"] == "available" and image["Name"] == name
    assert {t["Key"]: t["Value"] for t in image["Tags"]} == {t["Key"]: t["Value"] for t in tags}
    assert snapshot in [s["SnapshotId"] for s in tagged_snapshots(moto_server, job.image_id)]
    [tagged] = [s for s in tagged_snapshots(moto_server, job.image_id) if s["SnapshotId"] == snapshot]
    assert {t["Key"]: t["Value"] for t in tagged["Tags"]} == {t["Key"]: t["Value"] for t in tags}
    assert f"AMI {ami} tagged (source_t site-a, source_uuid {job.image_id}, source_cs site-a)" in job.ctx.status.lines
    blocks = moto_server.client("ebs").list_snapshot_blocks(SnapshotId=snapshot)["Blocks"]
    assert {b["BlockIndex"] for b in blocks} == disk.data_blocks
    assert result["blocks_sent"] == len(disk.data_blocks) <= result["blocks_allocated"] < result["blocks_total"]
    assert job.ctx.status.lines[-1] == "Cleanup done"

    again = aws_context(tmp_path, site, disk.path)
    again.ctx.job = again.ctx.job.__class__("job-again", job.image_id, "site-a", site.id)
    again.ctx.image.id = job.image_id
    line = aws_steps.Dedupe().run(again.ctx)
    assert line is None  # the job's final line says it, once
    assert again.ctx.finished and again.ctx.result == {"dest_image_id": ami, "already_present": True,
                                                        "region": "eu-west-1"}
    other_site = aws_context(tmp_path, site, disk.path)
    other_site.ctx.job = other_site.ctx.job.__class__("job-other", job.image_id, "site-b", site.id)
    assert aws_steps.Dedupe().run(other_site.ctx) == "No copy on aws-test yet"
    assert not other_site.ctx.finished


@pytest.mark.parametrize("operation,code,status,kind", [
    ("ebs.CompleteSnapshot", "InternalServerException", 500, TransientError),
    ("ec2.RegisterImage", "InvalidParameterValue", 400, PermanentError),
])
def test_failure_during_import_leaves_no_snapshot_or_ami(moto_server, moto_site, aws_env, tmp_path,
                                                         operation, code, status, kind):
    disk = make_sparse_raw(tmp_path / "disk.raw")
    calls: dict = {}
    inner = failing(operation, code, status)

    def connect(options):
        aws = inner(options)
        aws.ebs.raw.meta.events.register("after-call.ebs.StartSnapshot",
                                         lambda parsed, **_: calls.setdefault("snap", parsed["SnapshotId"]))
        return aws

    job = aws_context(tmp_path, moto_site(), disk.path, connect=connect)
    with pytest.raises(kind) as info:
        run_pipeline(job.ctx, [aws_steps.Import(), aws_steps.Tag(), common.Cleanup()])
    assert "\n" not in str(info.value) and code in str(info.value)
    assert not snapshot_exists(moto_server, calls["snap"])
    assert tagged_images(moto_server, job.image_id) == []
    assert tagged_snapshots(moto_server, job.image_id) == []


def test_failure_while_tagging_deregisters_the_ami(moto_server, moto_site, aws_env, tmp_path):
    disk = make_sparse_raw(tmp_path / "disk.raw")
    job = aws_context(tmp_path, moto_site(), disk.path, connect=failing("ec2.CreateTags", "RequestLimitExceeded", 503))
    with pytest.raises(TransientError, match="RequestLimitExceeded"):
        run_pipeline(job.ctx, [aws_steps.Import(), aws_steps.Tag(), common.Cleanup()])
    ami, snapshot = job.ctx.result["dest_image_id"], job.ctx.result["snapshot_ids"][0]
    assert ami not in [i["ImageId"] for i in moto_server.client("ec2").describe_images(Owners=["self"])["Images"]]
    assert not snapshot_exists(moto_server, snapshot)


def test_access_denied_is_one_line_and_leaves_nothing(moto_server, moto_site, aws_env, tmp_path, monkeypatch):
    disk = make_sparse_raw(tmp_path / "disk.raw")
    iam = moto_server.client("iam")
    user = f"describe-only-{tmp_path.name}"[:64]
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["ec2:Describe*"], "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    job = aws_context(tmp_path, moto_site(), disk.path)
    with moto_server.enforcing_iam():
        with pytest.raises(AuthError) as info:
            run_pipeline(job.ctx, [aws_steps.Dedupe(), aws_steps.Import(), aws_steps.Tag(), common.Cleanup()])
    assert str(info.value).startswith("AWS denied StartSnapshot in eu-west-1 (AccessDenied)")
    assert "\n" not in str(info.value)
    assert tagged_snapshots(moto_server, job.image_id) == []
    assert tagged_images(moto_server, job.image_id) == []


def test_disk_larger_than_ebs_limit_is_refused_before_any_request(moto_site, tmp_path):
    disk = make_sparse_raw(tmp_path / "disk.raw")

    def no_aws(_options):
        raise AssertionError("nothing may be sent for a disk that is too large")

    job = aws_context(tmp_path, moto_site(), disk.path, virtual_size=17 * 1024 ** 4, connect=no_aws)
    with pytest.raises(PermanentError) as info:
        run_pipeline(job.ctx, [aws_steps.Import(), aws_steps.Tag(), common.Cleanup()])
    assert str(info.value) == (f"image {job.image_id} is 17408 GiB: larger than the 16 TiB an EBS volume "
                               f"can hold, so it cannot become an AMI")


def test_region_typo_fails_the_job_naming_the_region(moto_site, aws_env, tmp_path):
    disk = make_sparse_raw(tmp_path / "disk.raw")
    job = aws_context(tmp_path, moto_site(region="us-eats-1"), disk.path)
    with pytest.raises(ConfigError, match=r"^unknown AWS region 'us-eats-1' \(did you mean 'us-east-1'\?\)"):
        run_pipeline(job.ctx, [aws_steps.Dedupe(), aws_steps.Import()])


def test_ebs_direct_refuses_a_payload_that_is_not_raw(moto_site, aws_env, tmp_path):
    disk = make_sparse_raw(tmp_path / "disk.raw")
    job = aws_context(tmp_path, moto_site(), disk.path, payload_format="qcow2")
    with pytest.raises(PermanentError, match="ebs-direct needs a raw disk, got a qcow2 payload"):
        aws_steps.Import().run(job.ctx)


def test_convert_target_format_per_import_mode(moto_site, tmp_path):
    convert = aws_steps.Convert()
    assert convert.name == "convert"
    for options, target in [({}, "raw"), ({"import_mode": "vm-import", "vm_import_format": "raw"}, "raw"),
                            ({"import_mode": "vm-import", "vm_import_format": "vmdk"}, None)]:
        job = aws_context(tmp_path, moto_site(**options), None)
        assert convert.target_format(job.ctx) == target


def test_architecture_and_boot_mode_sources(moto_site):
    from migratio.aws import amis

    site = moto_site(architecture="x86_64", boot_mode="uefi-preferred").options
    assert amis.architecture(site, {}) == "x86_64"
    assert amis.architecture(site, {"architecture": "aarch64"}) == "arm64"
    assert amis.boot_mode(site, {}) == "uefi-preferred"
    assert amis.boot_mode(site, {"hw_firmware_type": "bios"}) == "legacy-bios"
    with pytest.raises(PermanentError, match="image architecture 'ppc64le' cannot run on EC2"):
        amis.architecture(site, {"architecture": "ppc64le"})
    assert amis.ami_name("web: nginx*1", "u" * 36) == f"web_ nginx_1-{'u' * 36}"
    assert len(amis.ami_name("x" * 300, "u" * 36)) == 128


def test_blocks_are_512_kib():
    assert BLOCK_SIZE == 512 * 1024


def stubbed_dedupe(tmp_path, moto_site, answers):
    """Dedupe with EC2 stubbed (Stubber, real model): moto makes AMIs available at once, so a
    pending or failed AMI left by an earlier attempt can only be shown this way."""
    from botocore.stub import Stubber

    site = moto_site()
    aws = AwsClients.connect(site.options)
    job = aws_context(tmp_path, site, None, connect=lambda _: aws)
    stub = Stubber(aws.ec2.raw)
    for method, response, params in answers(job):
        stub.add_response(method, response, params)
    with stub:
        line = aws_steps.Dedupe().run(job.ctx)
        stub.assert_no_pending_responses()
    return job, line


def image(ami, state, snapshot="snap-0123456789abcdef0", tags=()):
    return {"ImageId": ami, "State": state, "CreationDate": "2026-11-26T00:00:00.000Z",
            "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}],
            "Tags": [{"Key": k, "Value": v} for k, v in tags]}


def our_tags(job):
    return [("source_t", "site-a"), ("source_uuid", job.image_id), ("source_cs", "site-a")]


def test_dedupe_waits_for_a_pending_ami_of_an_earlier_attempt(moto_site, aws_env, tmp_path):
    def answers(job):
        filters = [{"Name": "tag:source_uuid", "Values": [job.image_id]}]  # the site tag is checked locally
        return [("describe_images", {"Images": [image("ami-0aaaaaaaaaaaaaaaa", "pending", tags=our_tags(job))]},
                 {"Owners": ["self"], "Filters": filters}),
                ("describe_images", {"Images": [image("ami-0aaaaaaaaaaaaaaaa", "pending")]},
                 {"ImageIds": ["ami-0aaaaaaaaaaaaaaaa"]}),
                ("describe_images", {"Images": [image("ami-0aaaaaaaaaaaaaaaa", "available")]},
                 {"ImageIds": ["ami-0aaaaaaaaaaaaaaaa"]})]

    job, line = stubbed_dedupe(tmp_path, moto_site, answers)
    assert line is None  # the job's final line says it, once
    assert job.ctx.finished and job.ctx.result["already_present"]
    assert job.ctx.result["dest_image_id"] == "ami-0aaaaaaaaaaaaaaaa"


def test_dedupe_removes_a_failed_leftover_and_goes_on(moto_site, aws_env, tmp_path):
    def answers(job):
        one = {"ImageIds": ["ami-0bbbbbbbbbbbbbbbb"]}
        return [("describe_images", {"Images": [image("ami-0bbbbbbbbbbbbbbbb", "failed", tags=our_tags(job))]}, None),
                ("describe_images", {"Images": [image("ami-0bbbbbbbbbbbbbbbb", "failed")]}, one),
                ("deregister_image", {}, {"ImageId": "ami-0bbbbbbbbbbbbbbbb"}),
                ("delete_snapshot", {}, {"SnapshotId": "snap-0123456789abcdef0"})]

    job, line = stubbed_dedupe(tmp_path, moto_site, answers)
    assert line == "No copy on aws-test yet" and not job.ctx.finished


@pytest.mark.parametrize("origin", [{"source_cs": "site-a"}, {"source_t": "site-a"},
                                    {"source_t": "site-z", "source_cs": "site-a"}],
                         ids=["source_cs-only", "source_t-only", "stale-source_t"])
def test_dedupe_finds_an_ami_by_either_site_tag(moto_server, moto_site, aws_env, tmp_path, origin):
    """AMIs of older migratio versions and the old tool carry only source_cs; ours source_t as well."""
    site = moto_site()
    job = aws_context(tmp_path, site, None)
    existing_ami(moto_server, job.image_id, source_t="site-z", source_cs="site-z")  # another site's copy
    ami = existing_ami(moto_server, job.image_id, **origin)
    assert aws_steps.Dedupe().run(job.ctx) is None
    assert job.ctx.finished and job.ctx.result["dest_image_id"] == ami


def test_dedupe_ignores_amis_of_other_sites(moto_server, moto_site, aws_env, tmp_path):
    job = aws_context(tmp_path, moto_site(), None)
    existing_ami(moto_server, job.image_id, source_t="site-z", source_cs="site-z")
    existing_ami(moto_server, job.image_id, source_cs="site-z")
    existing_ami(moto_server, job.image_id, source_t="site-z")
    existing_ami(moto_server, job.image_id)  # no site tag at all
    assert aws_steps.Dedupe().run(job.ctx) == "No copy on aws-test yet"
    assert not job.ctx.finished


@pytest.mark.parametrize("origin,ours", [({"source_cs": "site-a"}, True), ({"source_t": "site-a"}, True),
                                         ({"source_cs": "site-z"}, False)])
def test_lost_register_answer_finds_the_ami_by_either_site_tag(moto_site, aws_env, tmp_path, origin, ours):
    """RegisterImage said the name is taken: the AMI of that name is used when it is a copy of ours."""
    from botocore.stub import Stubber

    from migratio.aws import amis

    site = moto_site()
    aws = AwsClients.connect(site.options)
    image_id = str(uuid.uuid4())
    tags = amis.source_tags(image_id, "site-a", "img")
    request = amis.register_request(site.options, name=amis.ami_name("img", image_id), description="d",
                                    snapshot_id="snap-0123456789abcdef0", gib=1, arch="x86_64", mode=None, tags=tags)
    found = {"ImageId": "ami-0cccccccccccccccc", "State": "available",
             "Tags": [{"Key": "source_uuid", "Value": image_id}, *({"Key": k, "Value": v} for k, v in origin.items())]}
    with Stubber(aws.ec2.raw) as stub:
        stub.add_client_error("register_image", "InvalidAMIName.Duplicate", "name in use", 400)
        stub.add_response("describe_images", {"Images": [found]},
                          {"Owners": ["self"], "Filters": [{"Name": "name", "Values": [request["Name"]]}]})
        if ours:
            assert amis.register(aws, request, logging.getLogger("test")) == "ami-0cccccccccccccccc"
        else:
            with pytest.raises(PermanentError, match="already exists .* without this image's source tags"):
                amis.register(aws, request, logging.getLogger("test"))
        stub.assert_no_pending_responses()


def test_source_tags_name_the_keys_atmosphere_reads():
    from migratio.aws import amis

    assert [t["Key"] for t in amis.source_tags("u", "site-a", "img")] == ["source_t", "source_uuid", "source_cs",
                                                                          "Name"]
    assert (origin.SOURCE_T, origin.SOURCE_UUID, origin.SOURCE_CS) == ("source_t", "source_uuid", "source_cs")


def test_amis_imports_on_its_own():
    """migratio.aws.amis takes the key names from migratio.origin, not from the steps that import it."""
    for module in ("migratio.aws.amis", "migratio.aws.vm_import", "migratio.aws.ebs_direct"):
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
