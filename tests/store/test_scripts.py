"""The scripts' composition: key names and limits come from constants.py, never the Lua."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import constants
from service.store import lua, scripts

STORE = Path(scripts.__file__).parent
LUA = sorted(STORE.glob("*.lua"))


@pytest.mark.parametrize("path", LUA, ids=lambda path: path.name)
def test_no_key_is_spelled_in_the_lua(path: Path) -> None:
    text = path.read_text()
    assert constants.KEY_PREFIX not in text
    for part in [*constants.KEYS.values(), *constants.KEY_FAMILIES.values()]:
        assert f"'{part}" not in text and f'"{part}' not in text, part


def test_every_script_is_composed_with_its_flags_first_and_its_fragments_once() -> None:
    for path in LUA:
        if path.name.startswith("_"):
            continue
        source = scripts.compose(path.stem)
        assert source.startswith(("#!lua\n", "#!lua flags=allow-oom\n"))
        assert source.count("\n#!") == 0 and "-- include:" not in source
        assert source.count("local function record(") <= 1
        assert "local PREFIX = ARGV[1]" in source


def test_the_prelude_defines_only_what_a_script_mentions() -> None:
    prelude = scripts.prelude("redis.call('GET', job_key(id)) return DEAD_TRIM_MAX")
    assert "job_key" in prelude and f"DEAD_TRIM_MAX = {constants.DEAD_TRIM_MAX}" in prelude
    assert "queue_key" not in prelude and "HISTORY_STREAM" not in prelude


def test_every_call_passes_the_key_prefix_first(queue_redis: object) -> None:
    script = lua.Script(queue_redis, "return ARGV[1]")  # type: ignore[arg-type]
    assert script() == constants.KEY_PREFIX.encode()
