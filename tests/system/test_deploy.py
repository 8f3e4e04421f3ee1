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
import redis
import yaml

from service.dev.embedded_mongo import EmbeddedMongo
from service.dev.embedded_redis import EmbeddedRedis, free_port
from tests.conftest import ROOT, TEST_HANDLERS, ServiceProcess, env_file, http, wait_for

BIN = Path(sys.executable).parent


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


# What the host's environment gives `docker compose` in the rehearsal (never real secrets).
HOST_ENV = {
    "API_KEYS": "rehearsal-key-" + "0" * 32,
    "REDIS_PASSWORD": "rehearsal-redis-password",
    "MONGO_PASSWORD": "rehearsal-mongo-password",
}


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`, as `docker compose` expands
    them from the host's environment."""

    def expand(found: re.Match[str]) -> str:
        name, operator, argument = found.groups()
        if variables.get(name):
            return variables[name]
        if operator == ":?":
            raise LookupError(f"{name}: {argument}")
        return argument or ""

    return re.sub(r"\$\{(\w+)(?:(:[?-])([^}]*))?\}", expand, value)


def test_interpolate_expands_as_compose_does() -> None:
    assert (
        interpolate("redis://:${P:?set P}@redis:6379/0", {"P": "pw"}) == "redis://:pw@redis:6379/0"
    )
    assert interpolate("${IMAGE:-job-service:latest}", {}) == "job-service:latest"
    with pytest.raises(LookupError, match="set P"):
        interpolate("${P:?set P}", {"P": ""})


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
    # Every secret comes from the host's environment, and is required: none is in the repository.
    for service in (app, worker):
        environment = service["environment"]
        assert environment["API_KEYS"].startswith("${API_KEYS:?")
        assert environment["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
        assert "root:${MONGO_PASSWORD:?" in environment["MONGODB_URI"]
    assert "${REDIS_PASSWORD:?" in command.split("--requirepass ")[1].split()[0]
    assert redis_service["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    mongo_env = services["mongo"]["environment"]
    assert mongo_env["MONGO_INITDB_ROOT_PASSWORD"].startswith("${MONGO_PASSWORD:?")
    assert mongo_env["MONGO_INITDB_ROOT_USERNAME"] == "root"
    with pytest.raises(LookupError, match="REDIS_PASSWORD"):
        interpolate(command, {})
    # Hardened: nothing writable but volumes and /tmp, no capabilities, no privilege gained.
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert service["security_opt"] == ["no-new-privileges:true"], name
    for name in ("app", "worker", "mongo"):
        assert services[name]["tmpfs"] == ["/tmp"], name
    assert (services["redis"]["user"], services["mongo"]["user"]) == ("redis", "mongodb")


def test_development_compose_publishes_ports_on_loopback_only() -> None:
    services = compose("docker-compose.dev.yml")["services"]
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert sorted(published) == [
        "127.0.0.1:27017:27017",
        "127.0.0.1:3001:3001",
        "127.0.0.1:3003:3003",
        "127.0.0.1:6379:6379",
    ]


def deployed_env(
    name: str, service: dict[str, Any], redis_port: int, mongo_uri: str
) -> dict[str, str]:
    """A compose service's environment (env_file, then environment, expanded from HOST_ENV),
    with the compose network's hosts replaced by the local servers."""
    env = {k: v for k, v in env_file(Path(service["env_file"]).name).items() if v}
    env.update({k: interpolate(str(v), HOST_ENV) for k, v in service["environment"].items()})
    redis_url = env["REDIS_URL"]
    assert redis_url.startswith(f"redis://:{HOST_ENV['REDIS_PASSWORD']}@redis:6379/"), redis_url
    assert f"root:{HOST_ENV['MONGO_PASSWORD']}@mongo:27017/" in env["MONGODB_URI"]
    env.update(
        PATH=os.environ["PATH"],
        PYTHONPATH=str(ROOT),
        HOST="127.0.0.1",
        PORT=str(free_port()),
        REDIS_URL=redis_url.replace("@redis:6379/", f"@127.0.0.1:{redis_port}/"),
        # The MongoDB stand-in (nx-27017) has no users: its URI, without the credentials.
        MONGODB_URI=mongo_uri,
        SHUTDOWN_TIMEOUT="5",
        HANDLER_MODULES=TEST_HANDLERS,  # the application's job types, as a deployment names its own
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
    # Redis with the password compose gives it (requirepass), as the redis service runs it.
    redis_server = EmbeddedRedis(appendonly=True, password=HOST_ENV["REDIS_PASSWORD"])
    redis_server.port = free_port()
    mongo = EmbeddedMongo(path=str(tmp_path / "mongo.sqlite")).start()
    started: list[ServiceProcess] = []

    def run(name: str, log: str) -> tuple[ServiceProcess, dict[str, str]]:
        env = deployed_env(name, services[name], redis_server.port, mongo.uri)
        process = ServiceProcess(env, command, log=tmp_path / log)
        started.append(process)
        return process, env

    key = {"Authorization": f"Bearer {HOST_ENV['API_KEYS']}"}
    try:
        # The API starts before Redis: it stays up, not ready, and becomes ready with Redis
        api, api_env = run("app", "app.log")
        api.wait_healthy()
        assert http("GET", f"{api.url}/ready")[0] == 503
        redis_server.start()
        wait_for(lambda: http("GET", f"{api.url}/ready")[0] == 200, 15)
        with pytest.raises(redis.AuthenticationError):  # the password is required
            redis.Redis(port=redis_server.port).ping()
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
        # Prometheus scrapes both with the key (deploy/prometheus/prometheus.yml); no key, 401.
        for process in (api, workers[0][0]):
            assert http("GET", f"{process.url}/metrics")[0] == 401
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
    keda = {"ScaledObject", "TriggerAuthentication"}  # KEDA's CRDs: checked below
    for document in documents:
        if document["kind"] not in keda:
            kubernetes_validate.validate(document, "1.30", strict=True)
    kinds = sorted(d["kind"] for d in documents)
    expected = ["ConfigMap", "Deployment", "Deployment"]
    expected += ["PodDisruptionBudget", "PodDisruptionBudget", "Service"]
    # No Secret: it is created in the cluster, and `kubectl apply -k` must never overwrite it.
    assert kinds == sorted(expected + (sorted(keda) if "production" in target else []))


def test_kubernetes_wiring() -> None:
    documents = {(d["kind"], d["metadata"]["name"]): d for d in kustomize("overlays/production")}
    config = documents[("ConfigMap", "job-service-config")]["data"]
    assert set(config) <= set(env_file("example"))  # the same variables as the env files
    assert config["SHUTDOWN_TIMEOUT"] == env_file("worker.production")["SHUTDOWN_TIMEOUT"]
    secret = "job-service-secrets"
    assert not [kind for kind, _ in documents if kind == "Secret"]
    for name, port in (("job-service-api", 3001), ("job-service-worker", 3003)):
        pod = documents[("Deployment", name)]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert {"secretRef": {"name": secret}} in container["envFrom"]
        # Hardened: not root, no capabilities, nothing gained, the runtime's seccomp filter,
        # nothing writable but /tmp (an emptyDir).
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        (mount,) = container["volumeMounts"]
        assert mount["mountPath"] == "/tmp"
        assert {"name": mount["name"], "emptyDir": {}} in pod["volumes"]
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
    # GET /backlog needs a key: KEDA sends SCALER_API_KEY of the Secret as a bearer token.
    assert trigger["metadata"]["authMode"] == "bearer"
    auth = documents[("TriggerAuthentication", trigger["authenticationRef"]["name"])]["spec"]
    assert auth["secretTargetRef"] == [
        {"parameter": "token", "name": secret, "key": "SCALER_API_KEY"}
    ]
    assert (
        scaled["minReplicaCount"] >= 1 and scaled["scaleTargetRef"]["name"] == "job-service-worker"
    )
    # and on saturation: busy slots per replica, from the workers' /metrics in Prometheus
    saturation = scaled["triggers"][1]
    assert saturation["type"] == "prometheus"
    assert "service_worker_slots_busy" in saturation["metadata"]["query"]


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
