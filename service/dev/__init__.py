"""Local development: the zero-setup runner, an embedded Redis and MongoDB stand-in, and the demo
job types (registered by dev mode, the tests and the benchmarks, never in production). May
import every other layer."""
