"""boto3 clients for one AWS site; every AWS error becomes a migratio error at this boundary.

Credentials come from boto3's standard chain only (environment, shared config/credentials
files, SSO, container or instance role), optionally narrowed to a named `profile`; they are
never passed on command lines nor logged.
"""

import contextlib
import difflib
import functools
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

import boto3
import botocore
import botocore.loaders
import botocore.session
from boto3.exceptions import S3UploadFailedError
from botocore import exceptions as bx
from botocore.config import Config as BotoConfig
from botocore.parsers import ResponseParserError

from migratio.conf.sites import AwsOptions
from migratio.errors import AuthError, ConfigError, MigratioError, PermanentError, TransientError

SERVICES = ("s3", "ec2", "ebs", "sts")
AUTH_CODES = {
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "InvalidClientTokenId",
    "AuthFailure", "SignatureDoesNotMatch", "InvalidAccessKeyId", "ExpiredToken", "ExpiredTokenException",
    "UnrecognizedClientException", "AuthorizationError", "OptInRequired", "InvalidToken",
}
TRANSIENT_CODES = {
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "RequestThrottledException",
    "RequestLimitExceeded", "TooManyRequestsException", "SlowDown", "InternalError", "InternalFailure",
    "InternalServerError", "InternalServerException", "ServiceUnavailable", "ServiceUnavailableException",
    "Unavailable", "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
    "EC2ThrottledException",
}
WRONG_REGION_CODES = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
MESSAGE_RE = re.compile(r"<Message>(.*?)</Message>", re.S)
CODE_RE = re.compile(r"<Code>(.*?)</Code>", re.S)


@functools.lru_cache(maxsize=1)
def _model_loader() -> botocore.loaders.Loader:
    """One loader per process: the service models (EC2's is large) are parsed once, not per session."""
    return botocore.loaders.create_loader()


def new_session(site: AwsOptions) -> boto3.Session:
    """A session resolving credentials through the standard chain (with the site's profile, if any)."""
    core = botocore.session.Session()
    core.register_component("data_loader", _model_loader())
    return boto3.Session(botocore_session=core, profile_name=site.profile, region_name=site.region)


def client_config(site: AwsOptions) -> BotoConfig:
    """Standard retries with backoff (throttling, 5xx, connection errors); a pool for the blocks in flight."""
    return BotoConfig(
        region_name=site.region,
        retries={"mode": "standard", "max_attempts": 8},
        connect_timeout=20,
        read_timeout=300,
        max_pool_connections=max(10, site.blocks_in_flight + 2),
        user_agent_extra="migratio",
    )


def known_regions(session: boto3.Session) -> set[str]:
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("ec2", partition))
    return regions


def check_region(region: str, session: boto3.Session) -> None:
    """Refuse a region botocore does not know (a typo would otherwise surface as a DNS failure)."""
    known = known_regions(session)
    if region in known:
        return
    close = difflib.get_close_matches(region, sorted(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown AWS region '{region}'{hint}: check key 'region' in the site conf "
                      f"(botocore {botocore.__version__} knows {len(known)} regions; upgrade boto3 "
                      f"if the region is new)")


def endpoint_for(service: str, endpoint_url: str | None) -> str | None:
    """The site's endpoint_url, except that a real AWS EC2 URL (legacy EC2_URL) is used for EC2 only."""
    if not endpoint_url:
        return None
    host = urlparse(endpoint_url).hostname or ""
    if host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
        return endpoint_url if service == "ec2" else None
    return endpoint_url


def client_token(job_id: str, purpose: str, attempt: int = 0) -> str:
    """A ClientToken stable for one job (a retried job gets the same one): at most 64 ASCII chars."""
    digest = hashlib.sha256(f"{job_id}:{purpose}".encode()).hexdigest()[:40]
    return f"migratio-{digest}" + (f"-{attempt}" if attempt else "")


@dataclass
class AwsClients:
    """The s3, ec2, ebs and sts clients of one site; their calls raise migratio errors only."""

    site: AwsOptions
    s3: Any
    ec2: Any
    ebs: Any
    sts: Any

    @classmethod
    def connect(cls, site: AwsOptions, session: boto3.Session | None = None) -> "AwsClients":
        try:
            session = session or new_session(site)
            check_region(site.region, session)
            config = client_config(site)
            clients = {name: service_client(site, name, session, config) for name in SERVICES}
        except bx.ProfileNotFound:
            raise ConfigError(f"AWS profile '{site.profile}' (key 'profile' in the site conf) is not in "
                              f"the shared config/credentials files") from None
        except ValueError as exc:  # botocore refuses a malformed endpoint URL
            raise ConfigError(f"key 'endpoint_url' in the site conf is not usable: {exc}") from None
        except bx.BotoCoreError as exc:  # e.g. a credential_process or SSO login that fails
            raise translate(exc, site, "client setup") from None
        return cls(site, **clients)

    def account_id(self) -> str:
        return self.sts.get_caller_identity()["Account"]


def service_client(site: AwsOptions, name: str, session: boto3.Session | None = None,
                   config: BotoConfig | None = None) -> "Translated":
    """The site's client of one AWS service (s3, ec2, iam, ...), raising migratio errors only."""
    session = session or new_session(site)
    return Translated(session.client(name, region_name=site.region, config=config or client_config(site),
                                     endpoint_url=endpoint_for(name, site.endpoint_url)), site)


class Translated:
    """Wraps a boto3 client: each method call raises migratio errors instead of botocore's."""

    def __init__(self, client: Any, site: AwsOptions):
        self.raw, self.site = client, site

    @property
    def meta(self) -> Any:
        return self.raw.meta

    @property
    def exceptions(self) -> Any:
        return self.raw.exceptions

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if not callable(attr):
            return attr
        operation = self.raw.meta.method_to_api_mapping.get(name) or name.replace("_", " ")

        def call(*args, **kwargs):
            with translated(self.site, operation):
                return attr(*args, **kwargs)

        call.__name__ = name
        return call


@contextlib.contextmanager
def translated(site: AwsOptions, operation: str) -> Iterator[None]:
    """Raise botocore/boto3 errors from the block as migratio errors (one readable line)."""
    try:
        yield
    except MigratioError:
        raise
    except (bx.BotoCoreError, bx.ClientError, ResponseParserError, S3UploadFailedError) as exc:
        raise translate(exc, site, operation) from None


def translate(exc: BaseException, site: AwsOptions, operation: str) -> MigratioError:
    """The migratio error for a boto3 exception raised by `operation` (a name such as StartSnapshot)."""
    if isinstance(exc, S3UploadFailedError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, (bx.ClientError, bx.BotoCoreError)):
            return translate(cause, site, operation)
        return TransientError(f"AWS S3 upload failed in {site.region}: {exc}")
    if isinstance(exc, bx.ClientError):
        return _client_error(exc, site, operation)
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        return AuthError(f"no usable AWS credentials for {operation} in {site.region}: {exc} "
                         f"(set them in the environment, ~/.aws/credentials, a profile or an instance role)")
    if isinstance(exc, bx.ProfileNotFound):
        return ConfigError(f"AWS profile not found: {exc}")
    if isinstance(exc, bx.SSLError):
        return PermanentError(f"TLS error talking to AWS for {operation} in {site.region}: {exc}")
    if isinstance(exc, bx.EndpointConnectionError):
        return _connection_error(exc, site, operation)
    if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError)):
        return TransientError(f"AWS {operation} in {site.region}: connection problem: {exc}")
    if isinstance(exc, ResponseParserError):
        where = site.endpoint_url or f"AWS in {site.region}"
        if site.endpoint_url:
            return PermanentError(f"{where} sent an unreadable answer to {operation} "
                                  f"(does this endpoint implement {operation}?)")
        return TransientError(f"{where} sent an unreadable answer to {operation}")
    if isinstance(exc, bx.ParamValidationError):
        return PermanentError(f"invalid AWS {operation} request: {exc}")
    return TransientError(f"AWS {operation} in {site.region} failed: {type(exc).__name__}: {exc}")


def error_code(exc: BaseException) -> str | None:
    """The AWS error code a translated error came from (None when it was not an AWS answer)."""
    return getattr(exc, "aws_code", None)


def _client_error(exc: bx.ClientError, site: AwsOptions, operation: str) -> MigratioError:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    code, message = _code_and_message(str(error.get("Code", "")), str(error.get("Message") or ""))
    region, bucket = site.region, site.bucket
    if code == "NoSuchBucket" or (operation == "HeadBucket" and status == 404):
        result: MigratioError = PermanentError(f"bucket {bucket} does not exist in region {region}")
    elif code in WRONG_REGION_CODES or (operation == "HeadBucket" and status == 301):
        result = PermanentError(f"bucket {bucket} is not in region {region} (key 'region' in the site conf)")
    elif code in AUTH_CODES or status in (401, 403):
        result = AuthError(f"AWS denied {operation} in {region} ({code or status}): {message or 'access denied'}"
                           f" — check the credentials and IAM policy used for this site")
    elif code in TRANSIENT_CODES or status >= 500 or code.endswith("Throttling"):
        result = TransientError(f"AWS {operation} in {region} failed, will retry: {code or status}: {message}")
    else:
        result = PermanentError(f"AWS {operation} in {region} failed: {code or status}: {message}")
    result.aws_code = code
    return result


def _code_and_message(code: str, message: str) -> tuple[str, str]:
    """Some endpoints (moto for the EBS direct APIs) put an XML error document in the message."""
    if message.lstrip().startswith("<"):
        inner_code, inner_message = CODE_RE.search(message), MESSAGE_RE.search(message)
        code = inner_code.group(1) if inner_code else code
        message = inner_message.group(1) if inner_message else ""
    return code, " ".join(message.split())


def _connection_error(exc: bx.EndpointConnectionError, site: AwsOptions, operation: str) -> MigratioError:
    url = exc.kwargs.get("endpoint_url", "")
    if not site.endpoint_url and site.region not in known_regions(new_session(site)):
        return ConfigError(f"unknown AWS region '{site.region}': no endpoint {url} (key 'region' in the site conf)")
    return TransientError(f"cannot reach AWS endpoint {url} for {operation}: connection failed")


def wait_for(check: Callable[[], Any], *, what: str, interval: float, timeout: float,
             sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> Any:
    """Call `check` every `interval` seconds until it returns something other than None."""
    deadline = clock() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if clock() >= deadline:
            raise TransientError(f"timed out after {timeout:.0f}s waiting for {what}")
        sleep(interval)
