"""Zero-setup local mode: a private Redis and MongoDB stand-in (unless configured), the API
and a worker."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

from service.config import constants
from service.config.settings import Settings
from service.dev.embedded_mongo import EmbeddedMongo, find_nx_server
from service.dev.embedded_redis import EmbeddedRedis
from service.telemetry import logs

log = logging.getLogger("service.dev.runner")
DEV_DATA = Path(".service-dev")  # dev mode's files (the history database), in the current folder
REDIS_VARIABLES = ("REDIS_URL", "REDIS_HOST", "QUEUE_REDIS_URL", "QUEUE_REDIS_HOST")


def _wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> bool:
    """Poll the process's /ready until it answers 200 (the worker's: its processes consume)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


DEMO_MODULE = "service.dev.demo"  # the demo job types: registered in dev mode only


def run(settings: Settings) -> int:
    logs.configure(settings, "dev")
    environ = dict(os.environ)
    embedded = None
    if not any(environ.get(name) for name in REDIS_VARIABLES):
        embedded = EmbeddedRedis().start()
        log.info("started a private Redis (%s) on %s", embedded.binary or "fakeredis", embedded.url)
        environ["REDIS_URL"] = f"{embedded.url}/0"
        environ["QUEUE_REDIS_URL"] = f"{embedded.url}/1"
    embedded_mongo = None
    if not environ.get("MONGODB_URI") and find_nx_server() is not None:
        # A file database, so the job history outlives a restart of dev mode.
        DEV_DATA.mkdir(exist_ok=True)
        embedded_mongo = EmbeddedMongo(path=str(DEV_DATA / "mongo.sqlite")).start()
        log.info("started a private MongoDB stand-in (nx-27017) on %s", embedded_mongo.uri)
        environ["MONGODB_URI"] = embedded_mongo.uri
    api_port = int(environ.get("PORT", constants.API_PORT))
    worker_port = int(environ.get("WORKER_PORT", constants.WORKER_HEALTH_PORT))
    common = {
        **environ,
        "HOST": environ.get("HOST", "127.0.0.1"),
        "HANDLER_MODULES": ",".join(dict.fromkeys([DEMO_MODULE, *settings.handler_modules])),
    }
    # Own sessions: Ctrl-C reaches only this process, which stops each child once, in order.
    api = subprocess.Popen(
        [sys.executable, "-m", "service"],
        env={**common, "WORKER_MODE": "false", "PORT": str(api_port)},
        start_new_session=True,
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "service"],
        env={**common, "WORKER_MODE": "true", "PORT": str(worker_port)},
        start_new_session=True,
    )
    stopping = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        for child in (api, worker):
            if child.poll() is not None:
                continue
            if len(stopping) == 1:
                child.send_signal(signal.SIGTERM)
            else:  # the whole session: the supervisor's worker processes too
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        if _wait_ready(api_port, api) and _wait_ready(worker_port, worker):
            # A placeholder, never a key: this output ends up in terminals' scrollback and CI logs.
            key = " -H 'Authorization: Bearer <one of API_KEYS>'" if settings.api_keys else ""
            print(
                f"\n  API     http://127.0.0.1:{api_port}   (OpenAPI: /openapi.json)\n"
                f"  worker  http://127.0.0.1:{worker_port}/health\n\n  Try:\n"
                f"  curl -s -X POST localhost:{api_port}/jobs{key} "
                "-H 'Content-Type: application/json' "
                '-d \'{"type": "echo", "payload": {"hello": "world"}}\'\n'
                f"  curl -s localhost:{api_port}/jobs/<id>{key}\n\n  Ctrl-C stops everything.\n",
                flush=True,
            )
        while api.poll() is None and worker.poll() is None:
            time.sleep(0.2)
        if not stopping:
            stop(signal.SIGTERM, None)
        codes = [api.wait(), worker.wait()]
    finally:
        for server in (embedded, embedded_mongo):
            if server is not None:
                server.stop()
    return 0 if stopping and codes == [0, 0] else max(codes) or 1
