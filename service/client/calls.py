"""The API's calls as the clients offer them, listed once: each is one of `operations`, bound
by a descriptor to the client it is read from. `client.submit(...)` runs the steps through
that client's `run`, so on a `Client` it returns the result and on an `AsyncClient` a
coroutine of it; the overloads of `__get__` tell type checkers which."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from service.client import operations, wire
from service.client.operations import Steps, Stream

if TYPE_CHECKING:
    from service.client.async_client import AsyncClient
    from service.client.sync_client import Client

P = ParamSpec("P")
T = TypeVar("T")


S = TypeVar("S")  # what a call gives on a Client
A = TypeVar("A")  # and on an AsyncClient


class Method(Generic[P, S, A]):
    """A call: `steps(*args)` run by the client it is read from, through its `driver`
    (`run` for a result, `items` for a listing)."""

    def __init__(self, steps: Callable[P, Any], driver: str) -> None:
        self.steps = steps
        self.driver = driver
        self.__doc__ = steps.__doc__

    @overload
    def __get__(self, client: None, owner: type) -> Method[P, S, A]: ...
    @overload
    def __get__(self, client: Client, owner: type) -> Callable[P, S]: ...
    @overload
    def __get__(self, client: AsyncClient, owner: type) -> Callable[P, A]: ...
    def __get__(self, client: Any, owner: type) -> Any:
        if client is None:
            return self
        drive = getattr(client, self.driver)
        return functools.wraps(self.steps)(lambda *a, **k: drive(self.steps(*a, **k)))


def operation(steps: Callable[P, Steps[T]]) -> Method[P, T, Coroutine[Any, Any, T]]:
    return Method(steps, "run")


def listing(stream: Callable[P, Stream[T]]) -> Method[P, Iterator[T], AsyncIterator[T]]:
    return Method(stream, "items")


class Calls:
    """What both clients offer (see `operations` for each call's documentation), and how
    they are made: `url`, where the API listens (`http://localhost:3001`); `api_key`, one of
    its API_KEYS if it has any; `timeout`, seconds for one request (a long-poll gets its wait
    on top); `transport`, an httpx2 transport of the client's kind (a proxy, a test's)."""

    def __init__(
        self, url: str, api_key: str | None = None, *, timeout: float = 10.0, transport: Any = None
    ) -> None:
        self.timeout = timeout
        self._http = self.connect(transport=transport, **wire.options(url, api_key, timeout))

    def connect(self, **options: Any) -> Any:
        """The client's httpx2 client (of its kind) with these options."""
        raise NotImplementedError

    submit = operation(operations.submit)
    submit_many = operation(operations.submit_many)
    get = operation(operations.get)
    wait = operation(operations.wait)
    cancel = operation(operations.cancel)
    dead = operation(operations.dead)
    iter_dead = listing(operations.iter_dead)
    retry_dead = operation(operations.retry_dead)
    retry_dead_matching = operation(operations.retry_dead_matching)
