"""Keeps secrets out of logs, job meta and status lines."""

import logging
import re
from typing import Iterable, Mapping

MASK = "***"
SECRET_ENV = ("OS_PASSWORD", "OS_AUTH_TOKEN", "OS_TOKEN", "OS_APPLICATION_CREDENTIAL_SECRET",
              "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "REDIS_PASSWORD")
PATTERNS = (
    re.compile(r"(?i)(password|passwd|secret|token|api[_-]?key)(\s*[=:]\s*|\"\s*:\s*\")([^\s\"',&]+)"),
    re.compile(r"(?i)(x-auth-token|x-subject-token|authorization)(\s*:\s*)(\S+)"),
    re.compile(r"(://[^:/@\s]*:)([^@\s]+)(@)"),  # user:password@ in URLs
)


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], extra: Iterable[str] = ()) -> "Redactor":
        return cls([environ.get(name, "") for name in SECRET_ENV] + list(extra))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        text = PATTERNS[0].sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
        text = PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
        return PATTERNS[2].sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", text)


class RedactingFilter(logging.Filter):
    """Applied to handlers: the final text of every record is redacted."""

    def __init__(self, redact: Redactor):
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = self.redact(message), None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True
