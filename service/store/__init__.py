"""Redis: the connection, the Lua scripts and their wrappers (publish, claim, complete, recover,
dead letters), durability checks and housekeeping. May import `config`, `net`, `jobs` and
`telemetry`."""
