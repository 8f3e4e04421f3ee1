"""SCHEDULE_PUT and SCHEDULE_FIRE against real Redis: a due schedule fires once, a fire that is
not due or replayed or raced by another firer publishes nothing more, and the misfire
policies decide what a late fire publishes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aioredis

from service.config import constants
from service.jobs.schedule import Schedule, fire_job_id
from service.store.schedules import Book, Definition, Fired, FireSchedule, Schedules, due
from service.store.schedules import definition as definition_of
from tests.store.conftest import QUEUE

T = 1_800_000_000  # a whole minute, in epoch seconds


def definition(schedule: Schedule, job_type: str = "noop") -> Definition:
    return Definition(
        f"{job_type}/{schedule.key()}", job_type, QUEUE, 180, 0, "", 3600, 3600, schedule
    )


def queued(client: redis.Redis) -> list[str]:
    return [i.decode() for i in client.lrange(constants.queue_key(QUEUE), 0, -1)]


def test_a_declared_schedule_is_due_at_its_next_fire_time(queue_redis: redis.Redis) -> None:
    every = definition(Schedule(every=60))
    assert Schedules(queue_redis).declare([every], T + 10) == ["new"]
    assert due(queue_redis, T + 59, 10) == []
    assert due(queue_redis, T + 60, 10) == [(every.id, T + 60)]


def test_declaring_again_keeps_the_next_fire_time_and_a_change_resets_it(
    queue_redis: redis.Redis,
) -> None:
    schedules = Schedules(queue_redis)
    every = definition(Schedule(every=60, name="tick"))
    schedules.declare([every], T + 10)
    assert schedules.declare([every], T + 200) == ["same"]  # a container started later
    assert due(queue_redis, T + 60, 10) == [(every.id, T + 60)]
    changed = definition(Schedule(every=300, name="tick"))
    assert schedules.declare([changed], T + 200) == ["changed"]
    assert due(queue_redis, T + 1000, 10) == [(every.id, T + 300)]


def test_retiring_removes_only_undeclared_schedules_of_the_given_types(
    queue_redis: redis.Redis,
) -> None:
    schedules = Schedules(queue_redis)
    kept, dropped = definition(Schedule(every=60)), definition(Schedule(every=300))
    other = definition(Schedule(every=60), job_type="other")
    schedules.declare([kept, dropped, other], T)
    assert schedules.retire({"noop"}, {kept.id}) == [dropped.id]
    assert {i for i, _ in due(queue_redis, T + 10_000, 10)} == {kept.id, other.id}
    assert not queue_redis.exists(constants.schedule_key(dropped.id))
    fired = schedules.fire_due(T + 60)
    assert sorted(f.id for f in fired) == sorted([kept.id, other.id])


def test_a_due_fire_publishes_one_ordinary_job_and_moves_the_schedule_on(
    queue_redis: redis.Redis,
) -> None:
    schedules = Schedules(queue_redis)
    every = definition(Schedule(every=60, payload={"n": 1}))
    schedules.declare([every], T + 10)
    assert schedules.fire_due(T + 30) == []  # not due: nothing
    assert schedules.fire_due(T + 61) == [Fired(every.id, "fired", 1)]
    job_id = fire_job_id(every.id, T + 60)
    assert queued(queue_redis) == [job_id]
    job = queue_redis.hgetall(constants.job_key(job_id))
    assert job[b"status"] == b"queued"
    assert job[b"origin"] == QUEUE.encode()
    assert job[b"data"] == b'["noop",null,[{"n":1}],{}]'
    assert due(queue_redis, T + 1000, 10) == [(every.id, T + 120)]
    state = queue_redis.hgetall(constants.schedule_key(every.id))
    assert (state[b"last"], state[b"next"], state[b"fired"]) == (b"1800000060", b"1800000120", b"1")
    assert state[b"lateness"] == b"1.000"  # published a second after its fire time


def test_a_definition_this_code_cannot_read_is_left_alone_and_the_others_fire(
    queue_redis: redis.Redis,
) -> None:
    schedules = Schedules(queue_redis)
    every = definition(Schedule(every=60))
    schedules.declare([every], T + 10)
    queue_redis.hset(constants.schedule_key("noop/future"), "spec", b'{"new_field": 1}')
    queue_redis.zadd(constants.SCHEDULES_KEY, {"noop/future": T})
    assert schedules.fire_due(T + 61) == [
        Fired("noop/future", "unreadable", 0),
        Fired(every.id, "fired", 1),
    ]
    assert due(queue_redis, T + 61, 10) == [("noop/future", T)]


def test_a_replayed_fire_publishes_nothing(queue_redis: redis.Redis) -> None:
    every = definition(Schedule(every=60))
    Schedules(queue_redis).declare([every], T + 10)
    fire = FireSchedule(queue_redis)
    assert fire(every, T + 60, T + 61) == Fired(every.id, "fired", 1)
    assert fire(every, T + 60, T + 61) == Fired(every.id, "lost", 0)  # the same fire again
    assert len(queued(queue_redis)) == 1


def test_a_fire_whose_job_exists_already_is_claimed_without_publishing_again(
    queue_redis: redis.Redis,
) -> None:
    # The schedule was removed and declared again: its fire times come round once more.
    schedules = Schedules(queue_redis)
    every = definition(Schedule(every=60))
    schedules.declare([every], T + 10)
    schedules.fire_due(T + 61)
    queue_redis.delete(constants.schedule_key(every.id))
    queue_redis.zrem(constants.SCHEDULES_KEY, every.id)
    schedules.declare([every], T + 10)
    assert schedules.fire_due(T + 61) == [Fired(every.id, "fired", 0)]
    assert len(queued(queue_redis)) == 1


def test_of_firers_racing_for_the_same_fire_exactly_one_publishes(
    queue_redis: redis.Redis, redis_url: str
) -> None:
    every = definition(Schedule(every=1))
    Schedules(queue_redis).declare([every], T)
    racers = 4
    clients = [redis.Redis.from_url(f"{redis_url}/1") for _ in range(racers)]
    fires = [FireSchedule(client) for client in clients]
    outcomes: list[Fired] = []
    lock = threading.Lock()
    for second in range(1, 21):  # twenty fire times, four firers each
        start = threading.Barrier(racers)

        def race(
            fire: FireSchedule, at: int = T + second, start: threading.Barrier = start
        ) -> None:
            start.wait()
            fired = fire(every, at, at + 0.5)
            with lock:
                outcomes.append(fired)

        threads = [threading.Thread(target=race, args=(fire,)) for fire in fires]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    for client in clients:
        client.close()
    assert sum(o.outcome == "fired" for o in outcomes) == 20
    assert sum(o.published for o in outcomes) == 20
    assert sorted(queued(queue_redis)) == sorted(
        fire_job_id(every.id, T + second) for second in range(1, 21)
    )


def misfired(queue_redis: redis.Redis, schedule: Schedule) -> Fired:
    """Declare `schedule`, then fire it ten minutes after it was due (every worker down)."""
    every = definition(schedule)
    schedules = Schedules(queue_redis)
    schedules.declare([every], T + 10)
    [fired] = schedules.fire_due(T + 60 + 600 + 5)
    assert due(queue_redis, T + 10_000, 10) == [(every.id, T + 720)]  # continues after now
    return fired


def test_skip_publishes_nothing_for_a_misfire(queue_redis: redis.Redis) -> None:
    fired = misfired(queue_redis, Schedule(every=60, misfire="skip"))
    assert (fired.published, fired.missed) == (0, 11)
    assert queued(queue_redis) == []


def test_fire_once_publishes_one_job_for_a_misfire(queue_redis: redis.Redis) -> None:
    schedule = Schedule(every=60)
    fired = misfired(queue_redis, schedule)
    assert (fired.published, fired.missed) == (1, 10)
    assert queued(queue_redis) == [fire_job_id(definition(schedule).id, T + 60)]
    state = queue_redis.hgetall(constants.schedule_key(definition(schedule).id))
    assert state[b"lateness"] == b"605.000"  # the first missed fire, published after the outage


def test_catch_up_publishes_the_latest_missed_fires_within_its_bounds(
    queue_redis: redis.Redis,
) -> None:
    schedule = Schedule(every=60, misfire="catch_up", catch_up_max=3)
    fired = misfired(queue_redis, schedule)
    assert (fired.published, fired.missed) == (3, 8)
    ids = [fire_job_id(definition(schedule).id, T + 60 * n) for n in (9, 10, 11)]
    assert queued(queue_redis) == ids


# --- The API's: created, changed, paused, resumed, deleted (Book) ----------------------------


def test_the_clean_up_keeps_api_schedules_and_the_code_does_not_take_their_ids(
    queue_redis: redis.Redis, on_client: Callable[..., Any]
) -> None:
    schedules = Schedules(queue_redis)
    created = definition(Schedule(every=60, name="from-api"))
    assert on_client(lambda client: Book(client).create(created, T)) == "created"
    # The container's clean-up keeps it, though no code declares it
    assert schedules.retire({"noop"}, set()) == []
    assert due(queue_redis, T + 60, 10) == [(created.id, T + 60)]
    # A declaration in code of the same id leaves it alone
    assert schedules.declare([definition(Schedule(every=5, name="from-api"))], T) == ["taken"]
    assert definition_of(queue_redis, created.id) == created
    assert on_client(lambda client: Book(client).create(created, T)) == "exists"


def test_a_paused_schedule_fires_nothing_stays_paused_when_redeclared_and_resumes_due(
    queue_redis: redis.Redis, on_client: Callable[..., Any]
) -> None:
    schedules = Schedules(queue_redis)
    every = definition(Schedule(every=60, name="tick"))
    schedules.declare([every], T + 10)
    assert on_client(lambda client: Book(client).set_paused(every.id, True)) is True
    assert schedules.fire_due(T + 1000) == []
    # Declared again by the code, unchanged or changed, it stays paused
    assert schedules.declare([every], T + 20) == ["same"]
    changed = definition(Schedule(every=120, name="tick"))
    assert schedules.declare([changed], T + 30) == ["changed"]
    assert schedules.fire_due(T + 10_000) == []
    # Resumed, it is due from its kept next fire time
    assert on_client(lambda client: Book(client).set_paused(every.id, True)) is True
    assert on_client(lambda client: Book(client).set_paused(every.id, False)) is True
    assert due(queue_redis, T + 10_000, 10) == [(every.id, T + 120)]
    assert on_client(lambda client: Book(client).set_paused("noop/none", True)) is False


def test_only_api_schedules_are_changed_or_deleted_and_each_change_restarts_the_timing(
    queue_redis: redis.Redis, on_client: Callable[..., Any]
) -> None:
    code = definition(Schedule(every=60, name="code"))
    Schedules(queue_redis).declare([code], T)
    api = definition(Schedule(every=60, name="api"))

    async def scenario(client: aioredis.Redis) -> list[str]:
        book = Book(client)
        await book.create(api, T)
        await book.set_paused(api.id, True)
        hourly = definition(Schedule(every=3600, name="api"))
        answers = [
            await book.update(definition(Schedule(every=5, name="code")), T),
            await book.update(hourly, T + 10),
            await book.update(definition(Schedule(every=5, name="none")), T),
            await book.delete(code.id),
        ]
        stored = await book.get(api.id)
        assert stored is not None and stored.paused and stored.next == T + 3600
        assert stored.definition == hourly and stored.origin == "api"
        await book.set_paused(api.id, False)
        listed = [(s.id, s.origin, s.next) for s in await book.list()]
        assert listed == [(code.id, "code", T + 60), (api.id, "api", T + 3600)]
        return [*answers, await book.delete(api.id), await book.delete(api.id)]

    assert on_client(scenario) == ["code", "updated", "missing", "code", "deleted", "missing"]
    assert due(queue_redis, T + 10**6, 10) == [(code.id, T + 60)]
    assert not queue_redis.exists(constants.schedule_key(api.id))
