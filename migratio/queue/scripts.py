"""migratio's Lua scripts (migratio/queue/lua/<name>.lua), registered with a Redis client.

redis-py's Script runs EVALSHA and loads the script on NOSCRIPT, so each one is sent once
per server, not with every call.
"""

from functools import cache
from pathlib import Path
from typing import Literal

import redis
from redis.commands.core import Script

LUA_DIR = Path(__file__).resolve().parent / "lua"

Name = Literal[
    "delete_if_equal",  # compare-and-delete: releases a lock or claim held with a token
    "expire_if_equal",  # compare-and-expire: refreshes a held lock
    "replace_if_equal",  # compare-and-set: takes over the lock of a dead holder
    "ingest_recover", "ingest_dead", "ingest_back",  # see migratio.queue.ingest
    "feedback_submit", "feedback_deliver",  # see migratio.queue.feedback
]


@cache
def source(name: Name) -> str:
    return (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")


def load(client: redis.Redis, name: Name) -> Script:
    return client.register_script(source(name))
