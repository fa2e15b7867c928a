"""The exception tree. Every message is one line an operator can act on.

External errors (Glance, SSH, boto3, subprocesses) are translated into these at the
client boundary, so the rest of the code never sees a third-party exception.

    MigratioError
    ├── ConfigError            bad config.yml or site conf (permanent)
    ├── InvalidInput           bad image id, site id, job payload (permanent)
    └── StepError         a step failed
        ├── PermanentError     retrying cannot help (not found, denied, host key, hostile image)
        │   ├── ImageNotFound
        │   ├── HostKeyError
        │   ├── AuthError
        │   ├── UnsafeImage
        │   ├── VerificationFailed
        │   └── NotEnoughSpace
        └── TransientError     retry with backoff (refused, timeout, 5xx, lost link)
"""


class MigratioError(Exception):
    """Base of everything migratio raises on purpose."""

    retryable = False

    def __str__(self) -> str:
        text = super().__str__()
        return " ".join(text.split())  # always one line


class ConfigError(MigratioError):
    """A configuration file or key is wrong."""


class InvalidInput(MigratioError):
    """A job argument or payload is not acceptable."""


class StepError(MigratioError):
    """A pipeline step failed."""


class PermanentError(StepError):
    """Retrying the same job cannot succeed."""


class TransientError(StepError):
    """The failure may go away: the job is retried with backoff."""

    retryable = True


class ImageNotFound(PermanentError):
    pass


class HostKeyError(PermanentError):
    pass


class AuthError(PermanentError):
    pass


class UnsafeImage(PermanentError):
    pass


class VerificationFailed(PermanentError):
    pass


class NotEnoughSpace(PermanentError):
    pass


class CommandFailed(StepError):
    """A local or remote command exited non-zero (see `retryable`)."""

    def __init__(self, message: str, *, retryable: bool = False, stderr_tail: str = ""):
        super().__init__(message)
        self.retryable = retryable
        self.stderr_tail = stderr_tail


def describe(exc: BaseException, limit: int = 300) -> str:
    """An exception migratio did not raise on purpose (a bug, a library's), in one line: `<type>: <message>`."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:limit]
