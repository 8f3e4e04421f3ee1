"""The test suite. Its folders mirror `service/`: the tests of `service/store/lua.py` are in
`tests/store/test_lua.py`, those of `service/status.py` in `tests/test_status.py`, and so on.
`tests/benchmarks/` does the same for `benchmarks/`.

`tests/system/` holds the scenario tests that span the system as real processes rather than
test one module: end to end with the env files (`test_e2e.py`), the job lifecycle through the
API and workers (`test_lifecycle.py`), faults under kills, pauses and a full Redis
(`test_faults.py`), abuse of a live API (`test_abuse.py`), /metrics after real jobs
(`test_metrics.py`), and the deployment and observability files rehearsed and checked
(`test_deploy.py`, `test_observability_deploy.py`).

Fixtures and helpers shared by several files live in `conftest.py` only; a test never imports
another test. The job types the tests load by name through HANDLER_MODULES stay at the top
(`tests.sample_handlers`, `tests.lean_handlers`, `tests.broken_handlers`,
`tests.retention_handlers`), since that name is what a service process under test imports.
"""
