"""Secrets never reach Redis, a log, a status line or a child process that does not use them.

The redactor's patterns on the shapes secrets take in commands, configs and error texts; a
failed job's traceback (RQ's `exc_info`, kept in Redis) read back from a real redis-server;
and real child processes printing the environment they were given.
"""

import base64
import logging
import os
import zlib

import pytest
import redis
from rq.job import Job

from migratio.errors import PermanentError
from migratio.local.commands import Commands
from migratio.pipeline.runner import Step
from migratio.queue.connections import connect
from migratio.queue.enqueue import enqueue_migration, migration_queue
from migratio.queue.worker import build_app, run_worker
from migratio.redact import MASK, Redactor
from tests.builders import config_factory, write_site

IMAGE_1 = "11111111-1111-4111-8111-111111111111"
IMAGE_2 = "22222222-2222-4222-8222-222222222222"
KNOWN = "known-by-value-0xC0FFEE"  # a secret the redactor knows by value (as from OS_PASSWORD)


# -- patterns

@pytest.mark.parametrize("text, secrets", [
    ('password: "two words"', ["two words", "two", "words"]),
    ("password='abc,def'", ["abc", "def"]),
    ('{"password": "two words", "user": "u"}', ["two", "words"]),
    ("{'password': 'two words'}", ["two", "words"]),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCY", ["wJalrXUtnFEMI"]),
    ("aws_access_key_id=AKIAIOSFODNN7EXAMPLE", ["AKIAIOSFODNN7EXAMPLE"]),
    ("export AWS_SECRET_ACCESS_KEY='x y z'", ["x y z"]),
    ("glance --os-password hunter2x image-list", ["hunter2x"]),
    ("glance --os-password 'two words' image-list", ["two", "words"]),
    ("glance --os-auth-token=gAAAAtok image-list", ["gAAAAtok"]),
    ("openstack --os-token gAAAAtok2 image list", ["gAAAAtok2"]),
    ("--os-application-credential-secret s3cr3t", ["s3cr3t"]),
    ("OS_PASSWORD=plain OS_USERNAME=admin", ["plain"]),
    ("Authorization: Bearer eyJhbGciOi.x", ["eyJhbGciOi"]),
])
def test_each_shape_of_a_secret_is_masked(text, secrets):
    redacted = Redactor()(text)
    for secret in secrets:
        assert secret not in redacted, redacted
    assert MASK in redacted


def test_the_rest_of_the_line_stays_readable():
    redact = Redactor()
    assert redact("glance --os-password 'two words' image-list --limit 1") == \
        "glance --os-password '***' image-list --limit 1"
    assert redact('password: "two words", user: admin') == 'password: "***", user: admin'
    assert redact("password='abc,def' host=h") == "password='***' host=h"
    assert redact("aws_secret_access_key = abc/def") == "aws_secret_access_key = ***"
    for text in ("ssh -i /etc/migratio/key_file -p 22 -- glance@head rm -f -- /var/tmp/x; key_file: /k",
                 "invalid image id '../../etc/passwd': expected a UUID"):
        assert redact(text) == text


# -- what RQ keeps in Redis of a failed job

class Leaky(Step):
    """Fails with secrets in its message; with `bug`, as an internal error wrapping another one."""

    name = "leaky"

    def __init__(self, bug: bool):
        self.bug = bug

    def run(self, ctx):
        if not self.bug:
            raise PermanentError(f"remote glance failed: password='xyzzy-1,plugh-2' token={KNOWN}")
        try:
            raise ValueError(f"aws_secret_access_key = {KNOWN}x and --os-password hunter2x")
        except ValueError as exc:
            raise RuntimeError(f'bad answer {{"password": "two words"}} from {KNOWN}') from exc


SECRETS = (KNOWN, "xyzzy-1", "plugh-2", "two words", "hunter2x")  # none can occur by chance in an id


# each Redis type -> all the values stored under one key of it
READERS = {
    b"string": lambda client, key: [client.get(key)],
    b"hash": lambda client, key: [part for pair in client.hgetall(key).items() for part in pair],
    b"list": lambda client, key: client.lrange(key, 0, -1),
    b"set": lambda client, key: list(client.smembers(key)),
    b"zset": lambda client, key: client.zrange(key, 0, -1),
    b"stream": lambda client, key: [p for _, entry in client.xrange(key) for pair in entry.items() for p in pair],
}


def every_value(client: redis.Redis) -> str:
    """Everything in Redis as text: each key and its values, also base64/zlib-decoded where they decode."""
    texts = []
    for key in client.scan_iter(count=1000):
        texts.append(key.decode("utf-8", "replace"))
        texts += [decoded(value) for value in READERS[client.type(key)](client, key)]
    return "\n".join(texts)


def decoded(value: bytes) -> str:
    """The value as text, plus what it holds zlib-compressed or base64+zlib (RQ's exc_string, job data)."""
    out = [value.decode("utf-8", "replace")]
    for attempt in (lambda v: zlib.decompress(v), lambda v: zlib.decompress(base64.b64decode(v))):
        try:
            out.append(attempt(value).decode("utf-8", "replace"))
        except (zlib.error, ValueError):
            pass
    return "\n".join(out)


def test_a_failed_jobs_traceback_in_redis_carries_no_secret(tmp_path, redis_server, redis_client):
    config = config_factory(tmp_path, redis_url=redis_server.url, retries=0)
    for site in ("site-b", "site-c"):
        write_site(config.sites_dir, site, "type: openstack\nhost: h\nuser: u\n")
    redact = Redactor([KNOWN])
    app = build_app(config, connect(config, redact), services=object(), redact=redact)
    app.steps_for = lambda site: [Leaky(bug=site.id == "site-c")]
    queue = migration_queue(config, app.redis)
    permanent = enqueue_migration(queue, config, IMAGE_1, "site-b", feedback=True)
    bug = enqueue_migration(queue, config, IMAGE_2, "site-c", feedback=True)

    run_worker(app, burst=True)

    kept = {}
    for job in (permanent, bug):
        fetched = Job.fetch(job.id, connection=redis_client)
        assert fetched.get_status() == "failed"
        kept[job.id] = fetched.latest_result().exc_string  # RQ's exc_info, read back from Redis
        assert "Traceback" in kept[job.id] and MASK in kept[job.id]
    assert "PermanentError: remote glance failed: password='***' token=***" in kept[permanent.id]
    assert "aws_secret_access_key = ***" in kept[bug.id]
    assert 'RuntimeError: bad answer {"password": "***"}' in kept[bug.id]
    assert Job.fetch(permanent.id, connection=redis_client).meta["error"] == \
        "remote glance failed: password='***' token=***"
    everything = every_value(redis_client)
    assert "remote glance failed: password='***'" in everything  # what was searched holds the job
    for secret in SECRETS:
        assert secret not in everything, secret


# -- what a child process is given

def printed_env(result) -> dict[str, str]:
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


@pytest.fixture
def secret_env(monkeypatch, tmp_path):
    values = {"OS_PASSWORD": "os-pass-1", "OS_AUTH_TOKEN": "os-token-1", "OS_USERNAME": "admin",
              "OS_AUTH_URL": "http://keystone:5000/v3", "AWS_ACCESS_KEY_ID": "AKIAKEYID0000001",
              "AWS_SECRET_ACCESS_KEY": "aws-secret-1", "AWS_SESSION_TOKEN": "aws-session-1",
              "REDIS_PASSWORD": "redis-pass-1", "SOME_DB_PASSWORD": "db-pass-1",
              "SSH_AUTH_SOCK": str(tmp_path / "agent.sock"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
              "HOME": str(tmp_path / "home")}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def test_a_child_gets_path_home_and_locale_and_no_secret(secret_env):
    result = Commands(logging.getLogger("test")).run(["env"])
    env = printed_env(result)
    assert env["PATH"] == os.environ["PATH"]
    assert (env["HOME"], env["LANG"], env["LC_ALL"]) == (secret_env["HOME"], "C.UTF-8", "C.UTF-8")
    assert "SSH_AUTH_SOCK" not in env  # not an ssh client
    for name in ("OS_PASSWORD", "OS_AUTH_TOKEN", "OS_USERNAME", "OS_AUTH_URL", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "REDIS_PASSWORD", "SOME_DB_PASSWORD"):
        assert name not in env
        assert secret_env[name] not in result.stdout


@pytest.mark.parametrize("client", ["ssh", "rsync"])
def test_ssh_clients_also_get_the_agent_socket_and_still_no_secret(secret_env, tmp_path, client):
    """A stand-in named like the client (rsync runs ssh, which may use the agent) prints its environment."""
    program = tmp_path / "bin" / client
    program.parent.mkdir()
    program.write_text("#!/bin/sh\nexec env\n")
    program.chmod(0o755)
    result = Commands(logging.getLogger("test")).run([str(program), "-p", "22", "--", "u@h", "true"])
    env = printed_env(result)
    assert env["SSH_AUTH_SOCK"] == secret_env["SSH_AUTH_SOCK"] and env["HOME"] == secret_env["HOME"]
    for name in ("OS_PASSWORD", "OS_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "REDIS_PASSWORD"):
        assert name not in env and secret_env[name] not in result.stdout

