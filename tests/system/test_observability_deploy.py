"""The observability files: Prometheus alert rules and their unit tests, the scrape config, and
the Grafana dashboard. promtool (Debian's `prometheus` package, installed by .ci/run) checks
the rules, the config and every dashboard query; where it is missing outside CI, the rule file
is checked against a JSON schema instead. Every PromQL expression may name only the metrics
of the contract below (the names the API and the worker export on /metrics)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
BIN = Path(sys.executable).parent

# The metrics contract (issue #6): every name the service exports, with its kind. The one
# list the alert rules and the dashboard are checked against.
CONTRACT = {
    # API (3001)
    "service_http_requests_total": "counter",
    "service_http_request_duration_seconds": "histogram",
    "service_jobs_accepted_total": "counter",
    "service_jobs_rejected_total": "counter",
    "service_publish_duration_seconds": "histogram",
    # worker (3003), aggregated over the container's processes
    "service_jobs_started_total": "counter",
    "service_jobs_finished_total": "counter",
    "service_jobs_failed_total": "counter",
    "service_jobs_retried_total": "counter",
    "service_jobs_dead_total": "counter",
    "service_jobs_canceled_total": "counter",
    "service_jobs_interrupted_total": "counter",
    "service_job_duration_seconds": "histogram",
    "service_job_queue_wait_seconds": "histogram",
    "service_jobs_in_progress": "gauge",
    "service_worker_processes": "gauge",
    "service_worker_slots_busy": "gauge",
    "service_worker_slots": "gauge",
    "service_worker_process_restarts_total": "counter",
    # backlog gauges, exported by the API and every worker container (aggregate with max)
    "service_queue_waiting_jobs": "gauge",
    "service_queue_scheduled_jobs": "gauge",
    "service_queue_due_jobs": "gauge",
    "service_queue_running_jobs": "gauge",
    "service_queue_oldest_job_age_seconds": "gauge",
    "service_queue_dead_jobs": "gauge",
    "service_queue_workers": "gauge",
    "service_queue_paused": "gauge",
    "service_history_pending_events": "gauge",
    "service_dead_trimmed_jobs_total": "counter",
    "service_schedules": "gauge",
    "service_schedule_fires_total": "counter",
    "service_schedule_missed_total": "counter",
    "service_schedule_last_fire_lateness_seconds": "gauge",
    # the history shipper of each worker container with MONGODB_URI
    "service_history_shipper_up": "gauge",
    "service_history_unstorable_events_total": "counter",
}
PROMETHEUS_OWN = {"up"}  # made by Prometheus for every target it scrapes
SCRAPE_JOBS = {"job-service-api", "job-service-worker"}  # prometheus.yml's, named by the alerts


def allowed_names() -> set[str]:
    names = set(PROMETHEUS_OWN)
    for name, kind in CONTRACT.items():
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


# --- PromQL metric names, by regex -------------------------------------------------------------
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_VARIABLE = re.compile(r"\$\{?\w+\}?")  # Grafana's $queue, ${type}, $__rate_interval
# An identifier that does not start inside another token (so not `m` of `10m`, nor `e3` of
# `1e3`), taken whole (possessive: no backtracking to a shorter name), and not followed by
# `(` (a function or an aggregation).
_TOKEN = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*+)(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label
    matchers, ranges, grouping clauses, variables, functions and keywords are removed."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    return {t for t in _TOKEN.findall(text) if t.lower() not in _KEYWORDS}


def test_metric_names_finds_every_selector_and_nothing_else() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, type) (rate(service_job_duration_seconds_bucket"
        '{type=~"$type", queue!="by(x)"}[$__rate_interval]))) > 1e3 and on () '
        'absent(up{job="w"} == 1) or max without (instance) (service_queue_dead_jobs offset 10m)'
        " - max by (queue) (service_queue_dead_jobs) unless ignoring (priority) bool "
        "deriv((sum(x_total) + y:recorded)[10m:1m])"
    )
    assert metric_names(expr) == {
        "service_job_duration_seconds_bucket",
        "up",
        "service_queue_dead_jobs",
        "x_total",
        "y:recorded",
    }


# What the code registers: every family's `# TYPE` line, from a fresh interpreter (importing
# the worker's counters here would add them to this process's default registry).
EXPOSE_ALL = """
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from service.telemetry import gauges
from service.api import request_metrics as api_metrics
from service.worker import job_metrics as worker_metrics

live = CollectorRegistry()
live.register(worker_metrics.SupervisorCollector(lambda: (1, 0, 5, 0)))
live.register(worker_metrics.HistoryCollector(lambda: (True, 0, 0)))
backlog = gauges.BacklogCollector()
backlog.latest = gauges.Snapshot({"q": gauges.QueueFigures(waiting={"high": 0})}, 0, 0.0)
live.register(backlog)
print(generate_latest(REGISTRY).decode() + generate_latest(live).decode())
"""


def test_the_contract_is_what_the_code_exports() -> None:
    result = subprocess.run(
        [sys.executable, "-c", EXPOSE_ALL], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    families = dict(re.findall(r"^# TYPE (service_\w+) (\w+)$", result.stdout, re.M))
    # prometheus_client's creation timestamps (`<name>_created`): not part of the contract.
    assert {k: v for k, v in families.items() if not k.endswith("_created")} == CONTRACT


# --- promtool, or a schema where it is missing ------------------------------------------------
def promtool() -> str | None:
    """promtool's path; None outside CI when it is not installed. CI must have it."""
    path = shutil.which("promtool")
    if path is None and os.environ.get("CI"):
        pytest.fail("promtool is not installed: .ci/run installs Debian's prometheus package")
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    tool = promtool()
    if tool is None:  # a developer's machine without promtool: the file's shape, at least
        schema = PROMETHEUS / "rules.schema.json"
        result = run(BIN / "check-jsonschema", "--schemafile", schema, "alerts.yml")
        assert result.returncode == 0, result.stdout + result.stderr
        print("promtool not installed: alerts.yml checked against rules.schema.json only")
        return
    checked = run(tool, "check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout
    tested = run(tool, "test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_rule_schema_rejects_a_malformed_rule(tmp_path: Path) -> None:
    """The fallback check must be able to fail: an alert without `expr`, a bad duration."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        yaml.safe_dump({"groups": [{"name": "service", "rules": [{"alert": "X", "for": "5 min"}]}]})
    )
    schema = PROMETHEUS / "rules.schema.json"
    result = run(BIN / "check-jsonschema", "--schemafile", schema, bad)
    assert result.returncode == 1, result.stdout + result.stderr
    good = run(BIN / "check-jsonschema", "--schemafile", schema, "alerts.yml")
    assert good.returncode == 0, good.stdout + good.stderr


KEY_FILE = "/run/secrets/job_service_api_key"  # the compose secret prometheus.yml names


def test_prometheus_config_scrapes_both_services_and_loads_the_rules(tmp_path: Path) -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == SCRAPE_JOBS
    assert jobs["job-service-api"]["static_configs"][0]["targets"] == ["app:3001"]
    discovery = jobs["job-service-worker"]["dns_sd_configs"][0]
    assert discovery == {**discovery, "names": ["worker"], "type": "A", "port": 3003}
    # Both /metrics need a key when API_KEYS is set: Prometheus sends one as a bearer token.
    for job in jobs.values():
        assert job["authorization"] == {"type": "Bearer", "credentials_file": KEY_FILE}
    tool = promtool()
    if tool is not None:  # promtool checks that the key file exists: one stands in for it
        key_file = tmp_path / "api_key"
        key_file.write_text("a-key")
        text = (PROMETHEUS / "prometheus.yml").read_text().replace(KEY_FILE, str(key_file))
        (tmp_path / "prometheus.yml").write_text(text)
        (tmp_path / "alerts.yml").write_text((PROMETHEUS / "alerts.yml").read_text())
        result = run(tool, "check", "config", tmp_path / "prometheus.yml")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS: 1 rule files found" in result.stdout


def test_every_alert_has_for_severity_and_annotations() -> None:
    groups = load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    assert [group["name"] for group in groups] == ["service"]
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
        assert "$value" in rule["annotations"]["description"] or "$labels" in str(rule)
    for needed in (
        "JobServiceBacklogGrowing",
        "JobServiceOldestJobTooOld",
        "JobServiceFailureRatioHigh",
        "JobServiceNoWorkers",
        "JobServiceDeadLettersGrowing",
        "JobServiceHistoryNotDraining",
    ):
        assert needed in names
    jobs_named = set(re.findall(r'job(?:=~?)"([^"]+)"', str(rules)))
    assert {name for pattern in jobs_named for name in pattern.split("|")} <= SCRAPE_JOBS


def test_the_rule_tests_show_each_alert_firing_and_not_firing() -> None:
    tests = load_yaml(PROMETHEUS / "alerts_test.yml")
    assert tests["rule_files"] == ["alerts.yml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert firing == names
    assert quiet == names


# --- the dashboard ----------------------------------------------------------------------------
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    return found


def test_the_dashboard_is_importable_grafana_json() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    assert board["uid"] and board["title"] and board["id"] is None
    (source,) = board["__inputs"]
    assert source == {**source, "name": "DS_PROMETHEUS", "type": "datasource"}
    assert source["pluginId"] == "prometheus"
    required = {(r["type"], r["id"]) for r in board["__requires"]}
    assert {("datasource", "prometheus"), ("panel", "timeseries"), ("panel", "stat")} <= required
    panels = board["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
    rows = [panel["title"] for panel in panels if panel["type"] == "row"]
    assert rows == [
        "Overview",
        "Backlog",
        "Throughput",
        "Failures",
        "Job latency",
        "Workers",
        "Dead letters and history",
        "API",
        "Schedules",
    ]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"queue", "type"}
    for variable in variables.values():
        assert variable["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_the_dashboard_shows_every_metric_and_quantiles_of_each_histogram() -> None:
    exprs = [expr for _, expr in dashboard_queries()]
    shown = set().union(*(metric_names(expr) for expr in exprs))
    # Request latency is shown per route at p95 only; the other histograms at p50, p95, p99.
    quantiles = {"service_http_request_duration_seconds": ("0.95",)}
    for name, kind in CONTRACT.items():
        if kind != "histogram":
            assert name in shown, f"{name} is on no panel"
            continue
        for q in quantiles.get(name, ("0.5", "0.95", "0.99")):
            quantile = rf"histogram_quantile\({q}, sum by \(le[^)]*\) \(rate\({name}_bucket[{{[]"
            assert any(re.search(quantile, expr) for expr in exprs), (name, q)


def test_every_expression_names_only_contract_metrics() -> None:
    allowed = allowed_names()
    expressions = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    expressions += dashboard_queries()
    for variable in dashboard()["templating"]["list"]:
        found = re.fullmatch(r"label_values\((\w+), *\w+\)", variable["definition"])
        assert found, variable["definition"]
        expressions.append((f"variable {variable['name']}", found.group(1)))
    unknown = {
        where: sorted(names - allowed)
        for where, expr in expressions
        if (names := metric_names(expr)) - allowed
    }
    assert unknown == {}
    histograms = {name for name, kind in CONTRACT.items() if kind == "histogram"}
    for where, expr in expressions:
        assert not metric_names(expr) & histograms, (
            f"{where}: a histogram needs _bucket/_sum/_count"
        )
        if "up" in metric_names(expr):
            assert where.startswith("alert"), where


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each query, as a recording rule (Grafana's variables filled in)."""
    rules = [
        {
            "record": f"dashboard:query_{n}",
            "expr": re.sub(r"\$__(rate_interval|interval|range)", "5m", expr),
        }
        for n, (_, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    tool = promtool()
    if tool is None:  # without promtool: brackets balance, at least
        for _, expr in dashboard_queries():
            for left, right in ("()", "[]", "{}"):
                assert expr.count(left) == expr.count(right), expr
        return
    result = run(tool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_readme_lists_every_metric_and_alert() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Observability") : readme.index("## Troubleshooting")]
    documented = set(re.findall(r"`(service_[a-z_]+)`", section))
    assert set(CONTRACT) <= documented
    assert documented <= allowed_names()
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in section, rule["alert"]
