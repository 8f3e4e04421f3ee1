"""The baselines' helper processes: a plain RQ SimpleWorker and two bare Starlette servers.

python -m benchmarks.baselines rq-worker REDIS_URL burst|run
python -m benchmarks.baselines serve-lpush|serve-rq PORT REDIS_URL
"""

from __future__ import annotations

import os
import sys
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from benchmarks.common import QUEUE, RQ_NOOP, vm_kib

LPUSH_KEY = "bench:lpush"


def rq_noop() -> None:
    """The job the RQ baselines run: nothing, like the service's `noop` type."""


def main(argv: list[str]) -> int:
    role, *args = argv
    if role == "rq-worker":
        return _rq_worker(args[0], burst=args[1] == "burst")
    if role in ("serve-lpush", "serve-rq"):
        _serve_baseline(role.removeprefix("serve-"), int(args[0]), args[1])
        return 0
    raise SystemExit(f"unknown role {role!r}")


def _rq_worker(url: str, *, burst: bool) -> int:
    """Plain RQ: a SimpleWorker with the JSON serializer. Logging at WARNING: no line per job,
    like the service at its default LOG_LEVEL (it logs jobs at DEBUG)."""
    from rq import Queue, SimpleWorker
    from rq.serializers import JSONSerializer

    connection = redis.Redis.from_url(url)
    queue = Queue(QUEUE, connection=connection, serializer=JSONSerializer)
    worker = SimpleWorker([queue], connection=connection, serializer=JSONSerializer)
    worker.work(burst=burst, logging_level="WARNING")
    pid = os.getpid()
    print(f"VmRSS={vm_kib(pid)} VmHWM={vm_kib(pid, 'VmHWM')}", flush=True)
    return 0


def _serve_baseline(kind: str, port: int, url: str) -> None:
    """A bare Starlette app, served like the service's (same uvicorn settings)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    def json_response(content: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(content), status, media_type="application/json")

    if kind == "lpush":
        client = aioredis.Redis.from_url(url)

        async def submit(request: Request) -> Response:
            await client.lpush(LPUSH_KEY, await request.body())
            return json_response({"status": "queued"}, 202)

    else:
        from rq import Queue
        from rq.serializers import JSONSerializer

        queue = Queue(QUEUE, connection=redis.Redis.from_url(url), serializer=JSONSerializer)

        async def submit(request: Request) -> Response:
            orjson.loads(await request.body())
            job = await run_in_threadpool(queue.enqueue, RQ_NOOP)
            return json_response({"id": job.id, "status": "queued"}, 202)

    async def health(request: Request) -> Response:
        return json_response({"status": "ok"})

    app = Starlette(routes=[Route("/jobs", submit, methods=["POST"]), Route("/health", health)])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
