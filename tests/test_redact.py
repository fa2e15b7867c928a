import logging

from migratio.redact import RedactingFilter, Redactor


def test_known_secret_values_and_patterns_are_masked():
    redact = Redactor.from_environ({"OS_PASSWORD": "hunter2hunter2", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG"})
    text = redact("login with hunter2hunter2, key wJalrXUtnFEMI/K7MDENG, password=abc123 "
                  "X-Auth-Token: gAAAAAtoken redis://:pw123@host:6379/0")
    for secret in ("hunter2hunter2", "wJalrXUtnFEMI", "abc123", "gAAAAAtoken", "pw123"):
        assert secret not in text
    assert "redis://:***@host:6379/0" in text


def test_log_records_are_redacted_including_arguments(caplog):
    logger = logging.getLogger("redact-test")
    handler = logging.Handler()
    seen = []
    handler.emit = lambda record: seen.append(record.getMessage())
    handler.addFilter(RedactingFilter(Redactor(["topsecretvalue"])))
    logger.addHandler(handler)
    try:
        logger.warning("auth failed for %s", "topsecretvalue")
    finally:
        logger.removeHandler(handler)
    assert seen == ["auth failed for ***"]
