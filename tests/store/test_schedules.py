"""SCHEDULE_PUT and SCHEDULE_FIRE against real Redis: a due schedule fires once, a fire that is
not due or replayed or raced by another firer publishes nothing more, and the misfire
policies decide what a late fire publishes."""

from __future__ import annotations

import threading

import redis

from service.config import constants
from service.jobs.schedule import Schedule, fire_job_id
from service.store.schedules import Definition, Fired, FireSchedule, Schedules, due
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


def test_catch_up_publishes_the_latest_missed_fires_within_its_bounds(
    queue_redis: redis.Redis,
) -> None:
    schedule = Schedule(every=60, misfire="catch_up", catch_up_max=3)
    fired = misfired(queue_redis, schedule)
    assert (fired.published, fired.missed) == (3, 8)
    ids = [fire_job_id(definition(schedule).id, T + 60 * n) for n in (9, 10, 11)]
    assert queued(queue_redis) == ids
