"""Container health checks for the project image (the slim base has no curl).

``python /app/deploy/healthcheck.py http URL``: the URL answers 2xx.
``python /app/deploy/healthcheck.py quotes``: every configured symbol has a quote in Redis
received within ``ORDERSAGA_QUOTE_MAX_AGE_S`` (what the saga itself calls fresh).
Exit status 0 means healthy.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request


def check_http(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            status = response.status
    except OSError as exc:
        return f"{url}: {exc}"
    return None if 200 <= status < 300 else f"{url}: HTTP {status}"


def check_quotes() -> str | None:
    import redis

    from core.keys import RedisKeys
    from core.redisconn import sync_redis_client
    from core.settings import Settings

    settings = Settings()
    keys = RedisKeys(settings.redis_prefix)
    client = sync_redis_client(settings, socket_timeout=3, decode_responses=True)
    try:
        raw = client.mget([keys.quote(s) for s in settings.symbols])
    except redis.RedisError as exc:
        return f"redis: {exc}"
    now = time.time()
    stale = [
        symbol
        for symbol, value in zip(settings.symbols, raw, strict=True)
        if value is None or now - float(json.loads(value)["received_at"]) > settings.quote_max_age_s
    ]
    return f"no fresh quote for {','.join(stale)}" if stale else None


def main(argv: list[str]) -> int:
    if argv[:1] == ["http"] and len(argv) == 2:
        problem = check_http(argv[1])
    elif argv == ["quotes"]:
        problem = check_quotes()
    else:
        print("usage: healthcheck.py http URL | quotes", file=sys.stderr)
        return 2
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
