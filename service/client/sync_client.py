"""`Client`: the API from blocking code, on an httpx2 connection pool; it runs each call's
steps (`operations`) blocking."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TypeVar

import httpx2

from service.client import wire
from service.client.calls import Calls
from service.client.operations import Done, Item, Steps, Stream, advance

T = TypeVar("T")


class Client(Calls):
    """The job service's HTTP API: `submit`, `submit_many`, `get`, `wait`, `cancel`, `dead`,
    `iter_dead`, `retry_dead`, `retry_dead_matching`. `url`: where it listens
    (`http://localhost:3001`); `api_key`: one of its API_KEYS, if set; `timeout`: seconds
    for one request (a long-poll gets its wait on top). Use it as a context manager, or
    `close()` it."""

    _http: httpx2.Client

    def connect(self, **options: Any) -> httpx2.Client:
        return httpx2.Client(**options)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, *exc_info: type[BaseException] | BaseException | TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: wire.Call) -> Any:
        """One request (after the call's pause); its answer's JSON, or the typed error."""
        if call.pause > 0:
            time.sleep(call.pause)
        try:
            response = self._http.request(**wire.request(call, self.timeout))
        except httpx2.TransportError as exc:
            raise wire.unreachable(exc) from exc
        return wire.answer(response)

    def run(self, steps: Steps[T]) -> T:
        answer = None
        while not isinstance(call := advance(steps, answer), Done):
            answer = self.send(call)
        return call.value

    def items(self, stream: Stream[T]) -> Iterator[T]:
        answer = None
        while not isinstance(step := advance(stream, answer), Done):
            answer = (yield step.value) if isinstance(step, Item) else self.send(step)
