"""The deployment files: no Docker engine runs here, so check what can be checked without one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _dockerfile(name: str) -> str:
    return (ROOT / "docker" / name).read_text()


def test_compose_has_redis_with_aof_the_api_and_a_scalable_gpu_worker() -> None:
    services = _compose()["services"]
    assert set(services) >= {"redis", "api", "worker"}
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"]) and "healthcheck" in redis

    api, worker = services["api"], services["worker"]
    assert api["build"]["dockerfile"] == "docker/api.Dockerfile" and api["command"][0] == "serve"
    assert worker["build"]["dockerfile"] == "docker/worker.Dockerfile" and worker["command"] == ["worker"]
    for service in (api, worker):
        assert "healthcheck" in service and service["depends_on"]["redis"]["condition"] == "service_healthy"
        env = service["environment"]
        assert env["BDIA_REDIS_URL"] == "redis://redis:6379/0" and env["BDIA_LOG_FORMAT"] == "json"
        assert env["BDIA_API_KEYS_FILE"] and "api_keys" in service["secrets"]  # keys configured: not open
    assert "container_name" not in worker and "ports" not in worker  # so --scale worker=N works
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert any(v.split(":")[1] == worker["environment"]["HF_HOME"] for v in worker["volumes"])  # weights volume
    assert set(_compose()["volumes"]) >= {"redis-data", "hf-cache"}


def test_images_run_the_entry_points_the_tests_run() -> None:
    assert 'bdia = "bdia.cli:main"' in (ROOT / "pyproject.toml").read_text()
    api, worker = _dockerfile("api.Dockerfile"), _dockerfile("worker.Dockerfile")
    assert 'ENTRYPOINT ["bdia"]' in api and 'ENTRYPOINT ["bdia"]' in worker
    assert '".[api]"' in api and "torch" not in api.split("RUN", 1)[1].split("\n")[0]  # no torch in the API
    assert "cuda" in worker.split("\n", 3)[2].lower() and '".[worker]"' in worker
    # `bdia serve` and `bdia worker` are registered entry points running what the service tests start.
    for command in (["serve", "--help"], ["worker", "--help"]):
        done = subprocess.run([sys.executable, "-m", "bdia.cli", *command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'serve = "bdia.app.main:cli"' in pyproject and 'worker = "bdia.workers.worker:main"' in pyproject
    for folder in ("bdia", "app", "jobqueue", "workers"):  # every installed package's source is in the images
        assert f"COPY {folder} ./{folder}" in api and f"COPY {folder} ./{folder}" in worker
