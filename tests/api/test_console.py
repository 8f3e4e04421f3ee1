"""The console's routes in-process on a real Redis: pages, login, headers, read-only keys and
CSRF on the API itself, and the JSON the pages read."""

from __future__ import annotations

import redis
from starlette.testclient import TestClient

from tests.conftest import make_client, publish

KEY = "full-key-0123456789"
READ = "read-key-0123456789"


def client(redis_url: str, **env: str) -> TestClient:
    return make_client(redis_url, API_KEYS=KEY, API_READONLY_KEYS=READ, **env)


def login(api: TestClient, key: str) -> str:
    answer = api.post("/console/login", json={"key": key})
    assert answer.status_code == 204, answer.text
    csrf: str = api.get("/console/api/session").json()["csrf"]
    return csrf


def test_without_a_session_the_console_is_the_login_page(redis_url: str) -> None:
    with client(redis_url) as api:
        page = api.get("/console")
        assert page.status_code == 200 and 'id="login-form"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        for path in ("/console/api/overview", "/console/api/workers", "/console/api/session"):
            assert api.get(path).json()["error"]["code"] == "unauthorized"
        assert api.get("/console/static/console.js").status_code == 200  # code, no data
        assert api.get("/console/static/index.html").status_code == 404


def test_login_sets_a_hardened_cookie_and_opens_the_console(redis_url: str) -> None:
    with client(redis_url) as api:
        wrong = api.post("/console/login", json={"key": "nope"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        answer = api.post("/console/login", json={"key": KEY})
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and KEY not in cookie
        assert "secure" not in cookie  # plain http here; https gets Secure
        assert 'id="main"' in api.get("/console").text
        session = api.get("/console/api/session").json()
        assert session["role"] == "full" and session["auth"] and len(session["csrf"]) == 40


def test_login_over_https_sets_a_secure_cookie(redis_url: str) -> None:
    with client(redis_url) as api:
        answer = api.post(
            "/console/login", json={"key": KEY}, headers={"X-Forwarded-Proto": "https"}
        )
        assert "secure" in answer.headers["set-cookie"].lower()


def test_login_from_another_origin_is_refused(redis_url: str) -> None:
    with client(redis_url) as api:
        answer = api.post(
            "/console/login", json={"key": KEY}, headers={"Origin": "https://evil.example"}
        )
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "csrf_failed"


def test_session_changes_need_the_csrf_token_and_the_origin(redis_url: str) -> None:
    publish(redis_url, "echo", {}, run_at=2e9)
    with client(redis_url) as api:
        csrf = login(api, KEY)
        job_id = publish(redis_url, "echo", {}, run_at=2e9)
        missing = api.post(f"/jobs/{job_id}/cancel")
        assert missing.status_code == 403 and missing.json()["error"]["code"] == "csrf_failed"
        foreign = api.post(
            f"/jobs/{job_id}/cancel",
            headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403
        done = api.post(f"/jobs/{job_id}/cancel", headers={"X-CSRF-Token": csrf})
        assert done.status_code == 200 and done.json()["status"] == "canceled"


def test_read_only_key_reads_and_changes_nothing(redis_url: str, queue_redis: redis.Redis) -> None:
    job_id = publish(redis_url, "echo", {}, run_at=2e9)
    bearer = {"Authorization": f"Bearer {READ}"}
    with client(redis_url) as api:
        assert api.get(f"/jobs/{job_id}", headers=bearer).status_code == 200
        assert api.get("/queues", headers=bearer).status_code == 200
        for method, path in (
            ("POST", "/jobs"),
            ("POST", f"/jobs/{job_id}/cancel"),
            ("DELETE", f"/jobs/{job_id}"),
            ("DELETE", "/dead?all=true"),
            ("PATCH", "/schedules/x"),
        ):
            answer = api.request(method, path, headers=bearer, json={"type": "echo"})
            assert answer.status_code == 403, (method, path, answer.text)
            assert answer.json()["error"]["code"] == "read_only_key"
        csrf = login(api, READ)
        assert api.get("/console/api/session").json()["role"] == "read"
        refused = api.post(f"/jobs/{job_id}/cancel", headers={"X-CSRF-Token": csrf})
        assert refused.json()["error"]["code"] == "read_only_key"
    assert queue_redis.hget(f"rq:job:{job_id}", "status") == b"scheduled"


def test_a_full_key_still_publishes_on_the_fast_path(redis_url: str) -> None:
    with client(redis_url) as api:
        answer = api.post(
            "/jobs",
            json={"type": "echo", "payload": {}},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert answer.status_code == 202


def test_overview_workers_search_and_detail(redis_url: str, queue_redis: redis.Redis) -> None:
    job_id = publish(redis_url, "echo", {"note": "<b>x</b>"})
    with client(redis_url) as api:
        login(api, KEY)
        overview = api.get("/console/api/overview").json()
        queue = next(q for q in overview["queues"] if q["name"] == "app-queue")
        assert queue["waiting"] == 1 and queue["oldest_age"] is not None
        assert overview["chart"] is None and overview["chart_source"] == "counters"
        assert api.get("/console/api/workers").json()["workers"] == []
        found = api.get("/console/api/jobs", params={"status": "queued", "type": "echo"}).json()
        assert [j["id"] for j in found["jobs"]] == [job_id]
        assert api.get("/console/api/jobs", params={"type": "noop"}).json()["jobs"] == []
        detail = api.get(f"/console/api/jobs/{job_id}").json()
        assert detail["payload"] == {"note": "<b>x</b>"} and detail["attempts"] == []
        assert api.get("/console/api/jobs/" + "0" * 32).status_code == 404


def test_without_keys_the_console_is_open(redis_url: str) -> None:
    with make_client(redis_url) as api:
        assert 'id="main"' in api.get("/console").text
        assert api.get("/console/api/session").json() == {
            "role": "full",
            "csrf": "",
            "auth": False,
            "history": False,
            "redis_search_limit": 200,
        }
