"""docker-compose.yml, the team deployment: what it wires together, checked from the file,
and validated by Docker's own `compose config` where a compose client is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml


@pytest.fixture(scope="module")
def compose(repo_root) -> dict:
    return yaml.safe_load((repo_root / "docker-compose.yml").read_text())


def _compose_client() -> list[str] | None:
    """``docker compose`` (v2) or ``docker-compose`` (v1), whichever answers."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def _interpolated(value: str, password: str) -> str:
    return value.replace("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}", password)


def test_the_services_are_wired_to_each_other(compose, repo_root):
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", "pipeline"}
    # the pipeline reaches the tracking server by its service name and port
    tracking = urlsplit(services["pipeline"]["environment"]["MLFLOW_TRACKING_URI"])
    command = services["mlflow"]["command"]
    port = command[command.index("--port") + 1]
    assert (tracking.hostname, str(tracking.port)) == ("mlflow", port)
    assert f"mlflow:{port}" in command[command.index("--allowed-hosts") + 1].split(",")
    # both database URLs name the postgres service, its user, and a database the init
    # script creates
    created = {line.split()[2].rstrip(";") for line in
               (repo_root / "deploy" / "postgres-init.sql").read_text().splitlines()
               if line.startswith("CREATE DATABASE")}
    user = services["postgres"]["environment"]["POSTGRES_USER"]
    urls = [command[command.index("--backend-store-uri") + 1],
            services["pipeline"]["environment"]["OPTUNA_STORAGE"]]
    for url in urls:
        parts = urlsplit(_interpolated(url, "secret"))
        assert parts.scheme == "postgresql+psycopg2" and parts.hostname == "postgres"
        assert parts.username == user and parts.password == "secret"
        assert parts.path.lstrip("/") in created
    assert {urlsplit(_interpolated(u, "s")).path for u in urls} == {"/mlflow", "/optuna"}
    # published ports on the host's loopback only; the images are the project's Dockerfile
    for name, service in services.items():
        for published in service.get("ports", []):
            assert str(published).startswith("127.0.0.1:"), (name, published)
    assert services["mlflow"]["build"] == services["pipeline"]["build"] == "."
    assert "--artifacts-destination" in command


def test_docker_compose_config_accepts_it_and_asks_for_the_password(repo_root):
    client = _compose_client()
    if client is None:
        pytest.skip("no docker compose client here (docker compose v2 or docker-compose)")
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    accepted = subprocess.run([*client, "-f", "docker-compose.yml", "config"], cwd=repo_root,
                              env=dict(env, POSTGRES_PASSWORD="s3cret"), capture_output=True,
                              text=True, timeout=120)
    assert accepted.returncode == 0, accepted.stderr
    resolved = yaml.safe_load(accepted.stdout)
    assert resolved["services"]["pipeline"]["environment"]["OPTUNA_STORAGE"] == \
        "postgresql+psycopg2://hits:s3cret@postgres:5432/optuna"
    refused = subprocess.run([*client, "-f", "docker-compose.yml", "config"], cwd=repo_root,
                             env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "set POSTGRES_PASSWORD" in refused.stderr
