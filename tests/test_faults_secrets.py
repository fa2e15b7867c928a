"""Secrets configured everywhere reach no output: logs, worker stderr, anything in Redis."""

import json
import uuid
import zlib
from pathlib import Path

import pytest

from tests.fixtures.faults import SECRETS


@pytest.mark.lab
def test_no_secret_reaches_any_output(env, glance_image):
    """A migration and a failed one with secrets configured everywhere (Redis password, clouds.yaml
    token, OS_PASSWORD / OS_AUTH_TOKEN / AWS keys in the worker's environment); then every output
    of the run is searched for them: logs, per-job logs, worker stderr, everything in Redis (job
    hashes with meta, results and tracebacks, the feedback queue)."""
    img = glance_image(data_mib=1)
    env.configure(log_level="DEBUG")
    clouds = env.config.clouds_file
    clouds.write_text(clouds.read_text().replace('"lab-token"', json.dumps(SECRETS["clouds.yaml token"])))
    assert SECRETS["clouds.yaml token"] in clouds.read_text()  # (the lab's Glance takes any token)
    key_body = Path(env.lab.head_node.key_file).read_text().splitlines()[1]
    worker = env.worker(env={"OS_PASSWORD": SECRETS["OS_PASSWORD"], "OS_AUTH_TOKEN": SECRETS["OS_AUTH_TOKEN"],
                             "AWS_SECRET_ACCESS_KEY": SECRETS["AWS_SECRET_ACCESS_KEY"],
                             "AWS_ACCESS_KEY_ID": "AKIA" + uuid.uuid4().hex[:16].upper()})
    ok = env.enqueue(img.id)
    bad = env.enqueue(str(uuid.uuid4()))
    assert env.wait_ended(ok.id, worker) == "finished", env.job_log(ok.id)
    assert env.wait_ended(bad.id, worker) == "failed"

    outputs = {"worker stderr": worker.stderr}
    for path in env.config.log_dir.rglob("*.log"):
        outputs[str(path)] = path.read_text(errors="replace")
    for key in env.redis.keys("*"):
        outputs[f"redis {key.decode()}"] = _redis_value(env.redis, key)
    assert len(outputs) > 5 and any("Migration finished" in text for text in outputs.values())
    secrets = {**SECRETS, "private key": key_body}
    leaks = [(what, where) for what, secret in secrets.items() for where, text in outputs.items() if secret in text]
    assert leaks == []
    assert secrets["redis password"] in env.config_file.read_text()  # the search would have found it


def _redis_value(client, key) -> str:
    """Every value under `key`, as text (zlib-compressed fields, as RQ stores tracebacks, inflated)."""
    kind = client.type(key).decode()
    if kind == "string":
        parts = [client.get(key)]
    elif kind == "hash":
        parts = [part for kv in client.hgetall(key).items() for part in kv]
    elif kind == "list":
        parts = client.lrange(key, 0, -1)
    elif kind == "set":
        parts = list(client.smembers(key))
    elif kind == "zset":
        parts = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
    elif kind == "stream":
        parts = [part for _, fields in client.xrange(key) for kv in fields.items() for part in kv]
    else:
        parts = [client.dump(key) or b""]
    texts = []
    for part in parts:
        texts.append(part)
        try:
            texts.append(zlib.decompress(part))
        except zlib.error:
            pass
    return b"\n".join(texts).decode("utf-8", "replace")
