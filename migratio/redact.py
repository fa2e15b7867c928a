"""Keeps secrets out of logs, job meta and status lines."""

import logging
import re
from typing import Iterable, Mapping

MASK = "***"
SECRET_ENV = ("OS_PASSWORD", "OS_AUTH_TOKEN", "OS_TOKEN", "OS_APPLICATION_CREDENTIAL_SECRET",
              "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "REDIS_PASSWORD")
SECRET_WORD = r"(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)"
QUOTED = r"\"(?:[^\"\\]|\\.)*\"|'[^']*'"  # a value in double or single quotes, spaces and commas included
PATTERNS = (  # the group `value` is masked
    # key = value, key: value, "key": "value", AWS_SECRET_ACCESS_KEY='v' (a key naming a secret)
    re.compile(rf"(?i)(?:(?P<q>[\"'])[\w.-]*{SECRET_WORD}[\w.-]*(?P=q)|[\w.-]*{SECRET_WORD}[\w.-]*)"
               rf"\s*[=:]\s*(?P<value>{QUOTED}|[^\s\"',&;]+)"),
    re.compile(r"(?i)(?:x-auth-token|x-subject-token|authorization)\s*:\s*(?P<value>(?:bearer\s+|basic\s+)?\S+)"),
    re.compile(rf"(?i)--[\w-]*(?:password|passwd|secret|token)[\w-]*\s+(?P<value>{QUOTED}|\S+)"),  # --os-password x
    re.compile(r"://[^:/@\s]*:(?P<value>[^@\s]+)@"),  # user:password@ in URLs
)


def _masked(match: re.Match) -> str:
    """The match up to its value, then MASK (in the value's quotes: the line stays readable), then the rest."""
    value = match.group("value")
    quote = value[0] if len(value) > 1 and value[0] in "'\"" and value[-1] == value[0] else ""
    whole, start, end = match.group(0), match.start("value") - match.start(), match.end("value") - match.start()
    return f"{whole[:start]}{quote}{MASK}{quote}{whole[end:]}"


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], extra: Iterable[str] = ()) -> "Redactor":
        return cls([environ.get(name, "") for name in SECRET_ENV] + list(extra))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        for pattern in PATTERNS:
            text = pattern.sub(_masked, text)
        return text


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
