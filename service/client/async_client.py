"""`AsyncClient`: the API from asyncio code, on an httpx2 connection pool; it runs each
call's steps (`operations`) awaiting, so it offers the calls `Client` does, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, TypeVar

import httpx2

from service.client import wire
from service.client.calls import Calls
from service.client.operations import Done, Item, Steps, Stream, advance

T = TypeVar("T")


class AsyncClient(Calls):
    """As `Client`, for asyncio: `async with AsyncClient(url, api_key) as jobs: ...`, each
    call awaited; `iter_dead` is an async iterator."""

    _http: httpx2.AsyncClient

    def connect(self, **options: Any) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(**options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, *exc_info: type[BaseException] | BaseException | TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: wire.Call) -> Any:
        """One request (after the call's pause); its answer's JSON, or the typed error."""
        if call.pause > 0:
            await asyncio.sleep(call.pause)
        try:
            response = await self._http.request(**wire.request(call, self.timeout))
        except httpx2.TransportError as exc:
            raise wire.unreachable(exc) from exc
        return wire.answer(response)

    async def run(self, steps: Steps[T]) -> T:
        answer = None
        while not isinstance(call := advance(steps, answer), Done):
            answer = await self.send(call)
        return call.value

    async def items(self, stream: Stream[T]) -> AsyncIterator[T]:
        answer = None
        while not isinstance(step := advance(stream, answer), Done):
            answer = (yield step.value) if isinstance(step, Item) else await self.send(step)
