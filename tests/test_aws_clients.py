"""AwsClients: region checks, the credential chain and the translation of AWS errors.

Access denied and unknown keys are produced by moto itself with IAM enforcement switched on
(`/moto-api/reset-auth`); throttling and 5xx answers, which moto cannot be made to send, use
botocore's Stubber (answers shaped by the real service model).
"""

import json

import pytest
from botocore.config import Config as BotoConfig
from botocore.stub import Stubber

from migratio.aws import clients
from migratio.aws.clients import AwsClients, client_token, endpoint_for, error_code
from migratio.conf.sites import AwsOptions
from migratio.errors import AuthError, ConfigError, PermanentError, TransientError


def one_line(exc) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


def test_region_typo_is_a_config_error_naming_the_region(aws_env):
    with pytest.raises(ConfigError) as info:
        AwsClients.connect(AwsOptions(region="eu-wset-1"))
    assert "unknown AWS region 'eu-wset-1' (did you mean 'eu-west-1'?)" in one_line(info.value)


def test_unknown_profile_is_a_config_error(aws_env):
    with pytest.raises(ConfigError, match="AWS profile 'nope'"):
        AwsClients.connect(AwsOptions(region="eu-west-1", profile="nope"))


def test_legacy_ec2_url_of_real_aws_is_used_for_ec2_only():
    assert endpoint_for("ec2", "https://ec2.eu-west-1.amazonaws.com") == "https://ec2.eu-west-1.amazonaws.com"
    assert endpoint_for("s3", "https://ec2.eu-west-1.amazonaws.com") is None
    assert endpoint_for("ebs", "http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert endpoint_for("s3", None) is None


def test_client_token_is_stable_per_job_and_short():
    token = client_token("job-1", "snapshot")
    assert token == client_token("job-1", "snapshot") != client_token("job-2", "snapshot")
    assert token != client_token("job-1", "import-image")
    assert len(token) <= 64 and len(client_token("j", "p", 4)) <= 64


def test_no_credentials_is_an_auth_error(monkeypatch, tmp_path, aws_env):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    aws = AwsClients.connect(AwsOptions(region="eu-west-1", endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(AuthError, match="no usable AWS credentials for DescribeImages in eu-west-1"):
        aws.ec2.describe_images(Owners=["self"])


def test_unreachable_endpoint_is_transient(aws_env, monkeypatch):
    monkeypatch.setattr(clients, "client_config",
                        lambda site: BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=5))
    aws = AwsClients.connect(AwsOptions(region="eu-west-1", endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(TransientError, match=r"cannot reach AWS endpoint http://127.0.0.1:9/ for DescribeImages"):
        aws.ec2.describe_images(Owners=["self"])


@pytest.mark.parametrize("code,status,kind,text", [
    ("UnauthorizedOperation", 403, AuthError, "AWS denied RegisterImage in eu-west-1 (UnauthorizedOperation)"),
    ("InvalidClientTokenId", 403, AuthError, "AWS denied RegisterImage in eu-west-1 (InvalidClientTokenId)"),
    ("RequestLimitExceeded", 503, TransientError, "will retry: RequestLimitExceeded"),
    ("InternalError", 500, TransientError, "will retry: InternalError"),
    ("InvalidParameterValue", 400, PermanentError, "AWS RegisterImage in eu-west-1 failed: InvalidParameterValue"),
])
def test_client_errors_are_classified(aws_env, code, status, kind, text):
    aws = AwsClients.connect(AwsOptions(region="eu-west-1", endpoint_url="http://127.0.0.1:9"))
    with Stubber(aws.ec2.raw) as stub:
        stub.add_client_error("register_image", service_error_code=code, service_message="it says no",
                              http_status_code=status)
        with pytest.raises(kind) as info:
            aws.ec2.register_image(Name="abc")
    assert text in one_line(info.value)
    assert error_code(info.value) == code
    assert type(info.value) is kind or kind is PermanentError


@pytest.mark.moto
def test_missing_bucket_names_bucket_and_region(moto_server, moto_site, aws_env):
    aws = AwsClients.connect(moto_site(bucket="no-such-bucket-here").options)
    with pytest.raises(PermanentError) as info:
        aws.s3.head_bucket(Bucket="no-such-bucket-here")
    assert one_line(info.value) == "bucket no-such-bucket-here does not exist in region eu-west-1"


@pytest.mark.moto
def test_access_denied_and_unknown_keys_from_moto_iam(moto_server, moto_site, aws_env, monkeypatch):
    iam = moto_server.client("iam")
    user = f"limited-{id(iam)}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17",
              "Statement": [{"Effect": "Allow", "Action": ["ec2:Describe*"], "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="describe-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    aws = AwsClients.connect(moto_site().options)
    with moto_server.enforcing_iam():
        aws.ec2.describe_images(Owners=["self"])  # allowed by the policy
        with pytest.raises(AuthError) as denied:
            aws.ebs.start_snapshot(VolumeSize=1)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
        stranger = AwsClients.connect(moto_site().options)
        with pytest.raises(AuthError) as unknown:
            stranger.ec2.describe_images(Owners=["self"])
    assert one_line(denied.value).startswith("AWS denied StartSnapshot in eu-west-1 (AccessDenied): User: arn:aws:iam")
    assert "not authorized to perform: ebs:StartSnapshot" in str(denied.value)
    assert key["SecretAccessKey"] not in str(denied.value)
    assert one_line(unknown.value).startswith("AWS denied DescribeImages in eu-west-1 (AuthFailure)")


@pytest.mark.moto
def test_import_image_is_not_implemented_by_moto(moto_server, moto_site, aws_env):
    """moto answers ImportImage with HTTP 500 and an HTML page: we say so in one line, as a permanent error.

    This is why the vm-import mode is tested with botocore's Stubber (tests/test_aws_vm_import.py).
    """
    aws = AwsClients.connect(moto_site().options)
    aws.ec2.raw.meta.config.retries["total_max_attempts"] = 1
    with pytest.raises(PermanentError) as info:
        aws.ec2.import_image(DiskContainers=[{"Format": "RAW", "UserBucket": {"S3Bucket": "b", "S3Key": "k"}}])
    assert one_line(info.value) == (f"{moto_server.url} sent an unreadable answer to ImportImage "
                                    f"(does this endpoint implement ImportImage?)")
