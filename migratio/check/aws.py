"""Probes of an Amazon EC2 destination: credentials (STS), region, bucket, and EBS direct or the
VM Import role, through the same clients and calls the import step uses."""

import logging
import uuid

from migratio.aws import amis, ebs_direct, vm_import
from migratio.aws.clients import AwsClients, Translated, error_code, service_client
from migratio.check.probe import Fail, Runner
from migratio.conf.sites import AwsOptions
from migratio.errors import MigratioError
from migratio.pipeline.services import Services

CHECK_TAG = {"Key": "migratio", "Value": "check"}
SNAPSHOT_TIMEOUT = 120  # seconds for the empty test snapshot to complete

log = logging.getLogger("migratio.check")


def run_aws(runner: Runner, site_id: str, opts: AwsOptions, services: Services) -> None:
    """Credentials first; the other probes need them and are skipped when they fail."""
    sid = site_id
    needs_bucket = bool(opts.bucket) or opts.import_mode == "vm-import"
    last = "ebs direct" if opts.import_mode == "ebs-direct" else "vm-import role"
    aws = runner.value(f"{sid}: aws credentials", lambda: connect(services, opts),
                       "check the AWS credentials of the service (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                       "in its EnvironmentFile, or key 'profile' of the site conf)")
    if aws is None:
        for what in ("region", *(["bucket"] if needs_bucket else []), last):
            runner.skip(f"{sid}: {what}", "aws credentials failed")
        return
    runner.probe(f"{sid}: region", lambda: check_region(aws, opts.region),
                 "set 'region' to an EC2 region enabled for this account")
    if needs_bucket:
        runner.probe(f"{sid}: bucket", lambda: f"bucket {vm_import.check_bucket(aws)} is reachable", bucket_fix(opts))
    if opts.import_mode == "ebs-direct":
        runner.probe(f"{sid}: ebs direct", lambda: check_ebs_direct(aws),
                     "allow ebs:StartSnapshot, ebs:PutSnapshotBlock, ebs:CompleteSnapshot, ec2:DeleteSnapshot "
                     "and ec2:RegisterImage for these credentials")
    else:
        runner.probe(f"{sid}: vm-import role", lambda: check_role(service_client(opts, "iam"), opts.role_name),
                     f"create the service role '{opts.role_name}' trusted by vmie.amazonaws.com "
                     f"(AWS VM Import/Export prerequisites), or allow iam:GetRole")


def connect(services: Services, opts: AwsOptions) -> tuple[AwsClients, str]:
    """The site's clients, once STS accepted their credentials."""
    aws = services.aws(opts)
    ident = aws.sts.get_caller_identity()
    return aws, f"valid: {ident.get('Arn')} (account {ident.get('Account')})"


def bucket_fix(opts: AwsOptions) -> str:
    if not opts.bucket:
        return "add 'bucket: NAME' to the site conf"
    return (f"create bucket '{opts.bucket}' in {opts.region}, or allow s3:ListBucket and "
            f"s3:PutObject on it for these credentials")


def check_region(aws: AwsClients, region: str) -> str:
    names = {r["RegionName"] for r in aws.ec2.describe_regions().get("Regions", [])}
    if region not in names:
        raise Fail(f"region {region!r} is not enabled for this account ({len(names)} regions are)")
    return f"{region} is enabled"


def check_ebs_direct(aws: AwsClients, timeout: float = SNAPSHOT_TIMEOUT) -> str:
    """Start, complete and delete an empty 1 GiB snapshot through the EBS direct API (the only way
    to know StartSnapshot is allowed is to call it), then a dry-run RegisterImage."""
    snapshot = ebs_direct.start_snapshot(aws, 1, f"migratio-check-{uuid.uuid4().hex}",
                                         "migratio check (deleted right away)", [CHECK_TAG], log)
    try:
        ebs_direct.complete_snapshot(aws, snapshot, 0, interval=1, timeout=timeout)
        _dry_run_register(aws, snapshot)
    finally:
        try:
            amis.delete_snapshot(aws, snapshot)
        except MigratioError as exc:
            raise Fail(f"test snapshot {snapshot} could not be deleted: {exc}",
                       f"delete snapshot {snapshot} (tag migratio=check) by hand") from None
    return "StartSnapshot/CompleteSnapshot/DeleteSnapshot work and RegisterImage is allowed (dry run)"


def _dry_run_register(aws: AwsClients, snapshot: str) -> None:
    """RegisterImage with DryRun: AWS answers DryRunOperation when the call would be allowed."""
    try:
        aws.ec2.register_image(Name="migratio-check", RootDeviceName="/dev/xvda", DryRun=True,
                               BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}])
    except MigratioError as exc:
        if error_code(exc) != "DryRunOperation":
            raise


def check_role(iam: Translated, role_name: str) -> str:
    role = iam.get_role(RoleName=role_name)["Role"]
    return f"role {role_name} exists ({role.get('Arn')})"
