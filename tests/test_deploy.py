"""The deployment files, checked without a Docker engine: linted, validated against the
compose spec, and rehearsed as local processes running exactly what the image would run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.embedded_mongo import EmbeddedMongo
from service.embedded_redis import EmbeddedRedis, free_port

from .conftest import ROOT, ServiceProcess, http, wait_for
from .test_settings import env_file

BIN = Path(sys.executable).parent
KEY = "rehearsal-key-" + "0" * 32  # production takes keys of 32 characters or more


def compose(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return document


def dockerfile_json(instruction: str) -> list[str]:
    """The exec-form arguments of the Dockerfile's last CMD (or HEALTHCHECK ... CMD)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith(instruction)]
    found = re.search(r"CMD (\[.*\])", lines[-1])
    assert found, lines[-1]
    return list(json.loads(found.group(1)))


def test_the_dockerfile_lints_clean() -> None:
    result = subprocess.run(
        [BIN / "hadolint", ROOT / "Dockerfile"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", text, re.M)  # not root
    assert "STOPSIGNAL SIGTERM" in text and "requirements.lock" in text
    assert dockerfile_json("CMD") == ["python", "-m", "service"]


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.dev.yml"])
def test_compose_files_follow_the_compose_spec(name: str) -> None:
    result = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", ROOT / name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_compose_shape() -> None:
    services = compose("docker-compose.yml")["services"]
    worker, app, redis_service = services["worker"], services["app"], services["redis"]
    assert app["env_file"] == "env/api.production"
    assert worker["env_file"] == "env/worker.production"
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N works
    assert worker["deploy"]["resources"]["limits"] == {"cpus": "0.8", "memory": "768M"}
    assert worker["deploy"]["resources"]["reservations"] == {"cpus": "0.3", "memory": "256M"}
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert grace > float(env_file("worker.production")["SHUTDOWN_TIMEOUT"])
    for service in (app, worker):
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["depends_on"]["mongo"]["condition"] == "service_healthy"
        assert service["healthcheck"]["test"] == ["CMD", *dockerfile_json("HEALTHCHECK")]
    command = " ".join(redis_service["command"])
    assert "--appendfsync everysec" in command and "--maxmemory-policy noeviction" in command
    assert services["mongo"]["image"].startswith("mongo:")  # the official image
    assert services["mongo"]["healthcheck"] and redis_service["healthcheck"]
    assert app["environment"]["API_KEYS"].startswith("${API_KEYS:?")  # from the host, no secret


def deployed_env(
    name: str, service: dict[str, Any], redis_url: str, mongo_uri: str
) -> dict[str, str]:
    """A compose service's environment (env_file, then environment), pointed at local servers."""
    env = {k: v for k, v in env_file(Path(service["env_file"]).name).items() if v}
    env.update({k: str(v) for k, v in service.get("environment", {}).items()})
    for key in ("REDIS_HOST", "REDIS_PORT", "QUEUE_REDIS_DB"):
        env.pop(key, None)
    env.update(
        PATH=os.environ["PATH"],
        PYTHONPATH=str(ROOT),
        HOST="127.0.0.1",
        PORT=str(free_port()),
        REDIS_URL=f"{redis_url}/0",
        QUEUE_REDIS_URL=f"{redis_url}/1",
        MONGODB_URI=mongo_uri,
        API_KEYS=KEY,
        SHUTDOWN_TIMEOUT="5",
    )
    return env


def healthcheck_passes(process: ServiceProcess, env: dict[str, str]) -> bool:
    """Run the image's HEALTHCHECK command, as Docker would, inside the 'container's' env."""
    command = [sys.executable if a == "python" else a for a in dockerfile_json("HEALTHCHECK")]
    return (
        subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=30).returncode == 0
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_rehearse_the_production_deployment_as_local_processes(tmp_path: Path) -> None:
    services = compose("docker-compose.yml")["services"]
    command = tuple(dockerfile_json("CMD")[3:])  # after `python -m service`: none
    redis_server = EmbeddedRedis(appendonly=True)
    redis_server.port = free_port()
    mongo = EmbeddedMongo(path=str(tmp_path / "mongo.sqlite")).start()
    started: list[ServiceProcess] = []

    def run(name: str, log: str) -> tuple[ServiceProcess, dict[str, str]]:
        env = deployed_env(name, services[name], redis_server.url, mongo.uri)
        process = ServiceProcess(env, command, log=tmp_path / log)
        started.append(process)
        return process, env

    key = {"Authorization": f"Bearer {KEY}"}
    try:
        # The API starts before Redis: it stays up, not ready, and becomes ready with Redis
        api, api_env = run("app", "app.log")
        api.wait_healthy()
        assert http("GET", f"{api.url}/ready")[0] == 503
        redis_server.start()
        wait_for(lambda: http("GET", f"{api.url}/ready")[0] == 200, 15)
        assert api.process.poll() is None  # no crash loop
        # Two worker replicas; both health checks pass as Docker runs them
        workers = [run("worker", f"worker-{n}.log") for n in range(2)]
        for process, env in workers:
            process.wait_healthy()
            assert healthcheck_passes(process, env)
            # Consuming, not only alive: otherwise one replica may take every job
            wait_for(lambda p=process: http("GET", f"{p.url}/ready")[0] == 200, 30)
        assert healthcheck_passes(api, api_env)
        # Jobs flow across the replicas
        ids = [
            http(
                "POST",
                f"{api.url}/jobs",
                {"type": "sleep", "payload": {"seconds": 0.05}},
                headers=key,
            )[2]["id"]
            for _ in range(30)
        ]

        def statuses() -> list[str]:
            return [http("GET", f"{api.url}/jobs/{i}", headers=key)[2]["status"] for i in ids]

        wait_for(lambda: set(statuses()) == {"finished"}, 30)
        ran_on = {
            http("GET", f"{api.url}/jobs/{i}", headers=key)[2]["worker"].split(".")[1] for i in ids
        }
        assert ran_on == {str(process.process.pid) for process, _ in workers}
        # Restart the worker replicas only: the API keeps accepting, nothing is lost
        for process, _ in workers:
            process.signal(signal.SIGTERM)
        more = [http("POST", f"{api.url}/jobs", {"type": "noop"}, headers=key) for _ in range(10)]
        assert {status for status, _, _ in more} == {202}
        assert [process.wait(30) for process, _ in workers] == [0, 0]
        workers = [run("worker", f"worker-restarted-{n}.log") for n in range(2)]
        for process, _ in workers:
            process.wait_healthy()
        ids += [body["id"] for _, _, body in more]
        wait_for(lambda: set(statuses()) == {"finished"}, 30)
    finally:
        for process in started:
            process.stop()
        redis_server.stop()
        mongo.stop()


def kustomize(target: str) -> list[dict[str, Any]]:
    built = subprocess.run(
        [BIN / "kubectl", "kustomize", ROOT / "deploy/kubernetes" / target],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(built) if doc]


@pytest.mark.parametrize("target", ["base", "overlays/production"])
def test_kubernetes_manifests_build_and_match_their_schemas(target: str) -> None:
    import kubernetes_validate

    documents = kustomize(target)
    for document in documents:
        if document["kind"] != "ScaledObject":  # a KEDA CRD: checked below
            kubernetes_validate.validate(document, "1.30", strict=True)
    kinds = sorted(d["kind"] for d in documents)
    expected = [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "PodDisruptionBudget",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ]
    assert kinds == sorted(expected + (["ScaledObject"] if "production" in target else []))


def test_kubernetes_wiring() -> None:
    documents = {(d["kind"], d["metadata"]["name"]): d for d in kustomize("overlays/production")}
    config = documents[("ConfigMap", "job-service-config")]["data"]
    assert set(config) <= set(env_file("example"))  # the same variables as the env files
    assert config["SHUTDOWN_TIMEOUT"] == env_file("worker.production")["SHUTDOWN_TIMEOUT"]
    assert documents[("Secret", "job-service-secrets")]["stringData"] == {"API_KEYS": ""}
    for name, port in (("job-service-api", 3001), ("job-service-worker", 3003)):
        pod = documents[("Deployment", name)]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert pod["terminationGracePeriodSeconds"] > int(config["SHUTDOWN_TIMEOUT"])
        assert container["ports"][0]["containerPort"] == port
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["PORT"] == str(port)
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["image"] == "registry.example.com/job-service:0.1.0"
    scaled = documents[("ScaledObject", "job-service-worker")]["spec"]
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "metrics-api" and trigger["metadata"]["valueLocation"] == "backlog"
    assert trigger["metadata"]["url"].endswith("/backlog")
    assert (
        scaled["minReplicaCount"] >= 1 and scaled["scaleTargetRef"]["name"] == "job-service-worker"
    )


def test_the_makefile_lists_every_target_and_each_expands() -> None:
    text = (ROOT / "Makefile").read_text()
    documented = re.findall(r"^([a-z-]+):.*## ", text, re.M)
    phony = re.search(r"^\.PHONY: (.*)$", text, re.M)
    assert phony and set(phony.group(1).split()) == set(documented)
    for target in (
        "dev-up",
        "dev-down",
        "prod-up",
        "prod-down",
        "build",
        "logs",
        "logs-api",
        "logs-worker",
        "status",
        "restart",
        "restart-api",
        "restart-worker",
        "worker-local",
    ):
        assert target in documented
    # make itself is not needed by the two README commands; where it exists, check it parses
    if shutil.which("make"):
        listed = subprocess.run(
            ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        ).stdout
        assert [line.split()[0] for line in listed.splitlines()] == documented
        dry = subprocess.run(
            ["make", "-n", "prod-up", "WORKERS=3"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert dry.strip() == "docker compose -f docker-compose.yml up -d --scale worker=3"
