"""`python -m service [run|dev|healthcheck|status]`: load settings, then run one mode.

run (default)   WORKER_MODE=false: the HTTP publisher; WORKER_MODE=true: the worker supervisor
dev             API and worker together, with a private Redis when none is configured
healthcheck     GET the running process's own /health on PORT; exit 0 if healthy (for Docker)
status          queues, live workers and recent failures, read from Redis (`status --help`)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from service.config import constants
from service.config.settings import ConfigError, Settings, load
from service.jobs import registry
from service.telemetry import logs

COMMANDS = ("run", "dev", "healthcheck", "status")

log = logging.getLogger("service")


def healthcheck(settings: Settings) -> int:
    url = f"http://127.0.0.1:{settings.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def worker_metrics_dir() -> Iterator[None]:
    """PROMETHEUS_MULTIPROC_DIR for the worker's processes (set before prometheus_client is
    imported: it picks its storage at import). Ours is removed on exit; one you set is emptied
    at start, as prometheus_client asks."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(given or tempfile.mkdtemp(prefix="service-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    try:
        yield
    finally:
        if not given:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "run"
    if command not in COMMANDS or (len(args) > 1 and command != "status"):
        print(f"usage: python -m service [{'|'.join(COMMANDS)}]", file=sys.stderr)
        return constants.EXIT_USAGE
    try:
        settings = load()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return constants.EXIT_CONFIG
    if command == "healthcheck":
        return healthcheck(settings)
    if command == "status":
        from service import status

        return status.main(settings, args[1:])
    if command == "dev":
        from service.dev import runner

        return runner.run(settings)
    logs.configure(settings, "worker" if settings.worker_mode else "api")
    try:
        handlers = registry.load(settings.handler_modules).within(
            settings.max_result_ttl, settings.max_failure_ttl
        )
    except ImportError as exc:
        modules = ",".join(settings.handler_modules)
        print(f"invalid configuration:\n  HANDLER_MODULES={modules!r}: {exc}", file=sys.stderr)
        return constants.EXIT_CONFIG
    except registry.TtlAboveCeiling as exc:  # before any port is bound
        print(ConfigError(exc.problems), file=sys.stderr)
        return constants.EXIT_CONFIG
    if not handlers:
        log.warning("no job types registered: HANDLER_MODULES names no module with @job handlers")
    if settings.worker_mode:
        with worker_metrics_dir():
            from service.worker import supervisor

            return supervisor.run(settings, handlers)
    from service.api import server

    return server.run(settings, handlers)


if __name__ == "__main__":
    sys.exit(main())
