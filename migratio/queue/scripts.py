"""migratio's Lua scripts (migratio/lua/<name>.lua), registered with a Redis client.

redis-py's Script runs EVALSHA and loads the script on NOSCRIPT, so each one is sent once
per server, not with every call.
"""

from functools import cache
from pathlib import Path

import redis
from redis.commands.core import Script

LUA_DIR = Path(__file__).resolve().parent / "lua"


@cache
def source(name: str) -> str:
    return (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")


def load(client: redis.Redis, name: str) -> Script:
    return client.register_script(source(name))
