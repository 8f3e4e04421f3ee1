"""Logging set-up: readable text in development, one JSON object per line in production."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any

import orjson

from service.config.settings import Settings

# Attributes every LogRecord has; anything else was passed through `extra=` and is kept.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


_process = "main"  # this process's name in text lines, as configure() was told
TEXT_FORMAT = "%(asctime)s %(levelname)-5s [{process}] %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _json_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(settings: Settings, process: str) -> None:
    global _process
    _process = process
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT.format(process=process)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # One line per request is uvicorn's access log: operators get it only at DEBUG.
    logging.getLogger("uvicorn.access").setLevel(
        logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING
    )


def _json_time(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created % 1 * 1000):03d}Z"
    )


def _text_time(created: float) -> str:  # as logging.Formatter's asctime
    return (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        + f",{int(created % 1 * 1000):03d}"
    )


class BatchLog:
    """Log lines collected during a batch of jobs and written together, in the format and at
    the levels `configure` set up.

    For the one-line-per-job-outcome log: a `logging` record costs more than a no-op job
    itself, so logging each through it would bound the worker's throughput; a line formatted
    here is cheap, and a batch is one write. Lines carry the batch's write time.
    """

    def __init__(self, logger: logging.Logger, settings: Settings) -> None:
        self.logger = logger
        self.json = settings.log_format == "json"
        self.prefix = f" [{_process}] {logger.name}: "
        self.pending: list[tuple[int, str, dict[str, Any]]] = []

    def add(self, level: int, message: str, fields: dict[str, Any]) -> None:
        if self.logger.isEnabledFor(level):
            self.pending.append((level, message, fields))

    def flush(self) -> None:
        if not self.pending:
            return
        now = time.time()
        if self.json:
            stamp = _json_time(now)
            lines = [
                orjson.dumps(
                    {
                        "time": stamp,
                        "level": logging.getLevelName(level).lower(),
                        "logger": self.logger.name,
                        "message": message,
                        **fields,
                    },
                    default=str,
                )
                + b"\n"
                for level, message, fields in self.pending
            ]
            text = b"".join(lines).decode()
        else:
            stamp = _text_time(now)
            text = "".join(
                f"{stamp} {logging.getLevelName(level):<5}{self.prefix}{message}\n"
                for level, message, _ in self.pending
            )
        self.pending.clear()
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                with handler.lock or contextlib.nullcontext():
                    handler.stream.write(text)
                    handler.stream.flush()
