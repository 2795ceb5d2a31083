"""The deployment files: no Docker engine runs here, so check what can be checked without one.

The compose file parses and wires Redis, the API and scalable GPU workers; every setting it names is a
real ``bdia.jobqueue.settings.Settings`` field and every setting written in ``.env`` reaches both
containers (compose's interpolation and ``env_file`` emulated here); the worker image's torch (read from
its base image tag) meets every dependency's floor; the health checks honour ``BDIA_KEY_PREFIX``; the
model cache volume is owned by the image's user; the images copy every installed package.
"""

from __future__ import annotations

import base64
import importlib.metadata
import os
import re
import socket
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import redis
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from support import REDIS_URL

from bdia.jobqueue.settings import Settings

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("api", "worker")
COMPOSE_ONLY = {"BDIA_PORT"}
"""``BDIA_*`` names the compose file reads for itself (not settings)."""


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _dockerfile(name: str) -> str:
    return (ROOT / "docker" / name).read_text()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _setting_names() -> set[str]:
    return {f"BDIA_{name.upper()}" for name in Settings.model_fields}


_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?-)(?P<default>[^}]*))?\}|\$(?P<bare>\w+)")


def _interpolate(value: str, project_env: dict[str, str]) -> str:
    """Compose's variable interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match["name"] or match["bare"]
        if match["op"] == ":-":
            return project_env.get(name) or match["default"]
        if match["op"] == "-":
            return project_env.get(name, match["default"])
        return project_env.get(name, "")

    return _VARIABLE.sub(one, value)


def _container_env(service: dict, dotenv: dict[str, str]) -> dict[str, str]:
    """What a container's environment holds when ``dotenv`` is the project's ``.env``: its ``env_file`` entries,
    overridden by its ``environment`` (interpolated with the ``.env`` values)."""
    env: dict[str, str] = {}
    for entry in service.get("env_file", []):
        path = entry["path"] if isinstance(entry, dict) else entry
        if path == ".env":
            env.update(dotenv)
        else:
            pytest.fail(f"env_file {path!r}: only the project's .env is expected")
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({key: _interpolate(str(value), dotenv) for key, value in environment.items()})
    return env


def test_compose_has_redis_with_aof_the_api_and_a_scalable_gpu_worker() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) >= {"redis", "api", "worker"}
    redis_service = services["redis"]
    command = redis_service["command"]
    assert "--appendonly" in command and command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis_service["volumes"]) and "healthcheck" in redis_service

    api, worker = services["api"], services["worker"]
    assert api["build"]["dockerfile"] == "docker/api.Dockerfile" and api["command"][0] == "serve"
    assert worker["build"]["dockerfile"] == "docker/worker.Dockerfile" and worker["command"] == ["worker"]
    for service in (api, worker):
        assert "healthcheck" in service and service["depends_on"]["redis"]["condition"] == "service_healthy"
        env = _container_env(service, {})
        assert env["BDIA_REDIS_URL"] == "redis://redis:6379/0" and env["BDIA_LOG_FORMAT"] == "json"
        assert env["BDIA_API_KEYS_FILE"] == "/run/secrets/api_keys" and "api_keys" in service["secrets"]  # not open
    assert "container_name" not in worker and "ports" not in worker  # so --scale worker=N works
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert set(compose["volumes"]) >= {"redis-data", "hf-cache"}


def test_every_setting_the_compose_file_names_is_a_real_setting() -> None:
    """A misspelt ``BDIA_*`` name would be ignored silently (the settings ignore unknown variables)."""
    text = (ROOT / "docker-compose.yml").read_text()
    named = set(re.findall(r"\bBDIA_[A-Z0-9_]+", text))
    assert named, "the compose file names no settings"
    assert not named - _setting_names() - COMPOSE_ONLY, f"not settings: {sorted(named - _setting_names())}"
    for name in ("BDIA_API_KEYS", "BDIA_MODEL", "BDIA_MODELS", "BDIA_KEY_PREFIX", "BDIA_WEBHOOK_SECRET"):
        assert name in text, f"{name} is not documented in docker-compose.yml"
    for name in SERVICES:
        env = _container_env(_compose()["services"][name], {})
        fields = {key.removeprefix("BDIA_").lower(): value for key, value in env.items() if key.startswith("BDIA_")}
        Settings(**fields)  # the compose file's own values and defaults are valid settings


#: Settings whose strings have a syntax: a valid value of each, unlike any default.
STRUCTURED = {
    "webhook_secret": "whsec_" + base64.b64encode(b"from-dotenv-webhook-secret-32by").decode(),
    "webhook_secrets": "tenant:whsec_" + base64.b64encode(b"from-dotenv-tenant-secret-32byt").decode(),
    "webhook_allow_hosts": "hooks.example.internal",
}


def _other_value(name: str, compose_default: str | None) -> str:
    """A valid value of the setting ``name`` that is neither its default nor the compose file's."""
    if name in STRUCTURED:
        return STRUCTURED[name]
    field = Settings.model_fields[name]
    default = field.get_default(call_default_factory=True)
    annotation = field.annotation
    if typing.get_origin(annotation) is typing.Literal:
        others = [c for c in typing.get_args(annotation) if c != compose_default]
        return next((c for c in others if c != default), others[0])
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)]  # Optional[X]: X
    kind = type(default) if default is not None else (kinds[0] if kinds else annotation)
    if kind is bool:
        return str(not default).lower()
    if kind in (int, float):
        return str((default or 0) + 7)
    return f"from-dotenv-{name}"


def test_every_setting_written_in_dotenv_reaches_both_containers(monkeypatch: pytest.MonkeyPatch) -> None:
    """BDIA_API_KEYS, BDIA_MODELS, … in .env reach the API and the workers; only the secret's path is fixed."""
    fixed = {"api_keys_file": "/run/secrets/api_keys"}  # the mounted secret, whatever .env says
    for service in SERVICES:
        defaults = _container_env(_compose()["services"][service], {})
        dotenv = {
            f"BDIA_{name.upper()}": _other_value(name, defaults.get(f"BDIA_{name.upper()}"))
            for name in Settings.model_fields
        }
        env = _container_env(_compose()["services"][service], dotenv)
        for key in list(os.environ):
            if key.startswith("BDIA_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings(_env_file=None)
        for name in Settings.model_fields:
            expected = fixed.get(name, dotenv[f"BDIA_{name.upper()}"])
            got = getattr(settings, name)
            assert str(got).lower() == expected.lower() or got == type(got)(expected), (
                f"{service}: BDIA_{name.upper()} from .env does not reach the container "
                "(docker-compose.yml: env_file .env, or ${BDIA_…:-default} in environment)"
            )
    assert _compose()["secrets"]["api_keys"]["file"].startswith("${BDIA_API_KEYS_FILE:-")


def _torch_floors() -> dict[str, Version]:
    """Every floor on torch: pyproject's engine extra, and each installed engine dependency's own."""
    floors: dict[str, Version] = {}
    for line in _pyproject()["project"]["optional-dependencies"]["engine"]:
        requirement = Requirement(line)
        if requirement.name == "torch":
            floors["pyproject.toml"] = min(Version(s.version) for s in requirement.specifier if ">" in s.operator)
    assert "pyproject.toml" in floors, "the engine extra states no torch floor"
    for dist in ("transformers", "diffusers", "accelerate"):
        try:
            requires = importlib.metadata.requires(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            for spec in requirement.specifier if requirement.name == "torch" else ():
                if spec.operator in (">=", ">", "~=", "=="):
                    floors[dist] = max(floors.get(dist, Version("0")), Version(spec.version))
    # transformers' own import check, which disables (not just warns about) an older torch at run time.
    try:
        import transformers.utils.import_utils as import_utils
    except ImportError:
        return floors
    found = re.findall(r"PyTorch >= (\d+\.\d+(?:\.\d+)?) is required", Path(import_utils.__file__).read_text())
    if found:
        floors["transformers import_utils"] = max(Version(v) for v in found)
    return floors


def test_the_worker_image_torch_meets_every_floor() -> None:
    """transformers ≥ 5 disables torch < 2.6: a worker image below it exits at start and restarts forever."""
    base = re.search(r"^FROM\s+(\S+)", _dockerfile("worker.Dockerfile"), re.M)[1]
    tag = re.fullmatch(r"pytorch/pytorch:(?P<torch>\d+\.\d+\.\d+)-cuda(?P<cuda>\d+\.\d+)-cudnn\d+-runtime", base)
    assert tag, f"{base}: expected an official pytorch/pytorch:X.Y.Z-cudaA.B-cudnnN-runtime tag"
    image_torch = Version(tag["torch"])
    floors = _torch_floors()
    for source, floor in floors.items():
        assert image_torch >= floor, f"the worker image has torch {image_torch}, {source} needs >= {floor}"
        assert floors["pyproject.toml"] >= floor, f"pyproject.toml says torch>={floors['pyproject.toml']}: {source}"
    make_spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert make_spec and Version(make_spec[1]) >= floors["pyproject.toml"]


def test_the_model_cache_volume_belongs_to_the_image_user() -> None:
    """A fresh named volume takes the ownership of the image's folder it is mounted on: create and chown it."""
    dockerfile = _dockerfile("worker.Dockerfile")
    hf_home = re.search(r"\bHF_HOME=(\S+)", dockerfile)[1]
    worker = _compose()["services"]["worker"]
    assert _container_env(worker, {})["HF_HOME"] == hf_home
    assert any(v.split(":")[1] == hf_home for v in worker["volumes"] if not v.startswith(("/", "."))), "named volume"
    user = re.search(r"^USER\s+(\S+)", dockerfile, re.M)
    assert user, "the worker image runs as root"
    before_user = dockerfile[: user.start()]
    assert re.search(rf"useradd\b[^\n]*--uid 10001\b[^\n]*\b{user[1]}\b", before_user)
    assert re.search(r'mkdir -p ("?\$HF_HOME"?|' + re.escape(hf_home) + ")", before_user), "the cache dir is not made"
    chown = re.search(rf"chown (-R )?{user[1]}\S* (\S+)", before_user)
    assert chown and (hf_home + "/").startswith(chown[2].rstrip("/") + "/"), "the cache dir is not the user's"


def test_images_run_the_entry_points_the_tests_run() -> None:
    assert 'bdia = "bdia.cli:main"' in (ROOT / "pyproject.toml").read_text()
    api, worker = _dockerfile("api.Dockerfile"), _dockerfile("worker.Dockerfile")
    assert 'ENTRYPOINT ["bdia"]' in api and 'ENTRYPOINT ["bdia"]' in worker
    assert '".[api]"' in api and "torch" not in api.split("RUN", 1)[1].split("\n")[0]  # no torch in the API
    assert '".[worker]"' in worker
    # `bdia serve` and `bdia worker` are registered entry points running what the service tests start.
    for command in (["serve", "--help"], ["worker", "--help"]):
        done = subprocess.run([sys.executable, "-m", "bdia.cli", *command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    commands = _pyproject()["project"]["entry-points"]["bdia.commands"]
    assert commands["serve"] == "bdia.app.main:cli" and commands["worker"] == "bdia.workers.worker:main"


def test_images_copy_every_installed_package_and_the_build_context_holds_them() -> None:
    folders = set(_pyproject()["tool"]["setuptools"]["package-dir"].values())
    assert folders == {"bdia", "app", "jobqueue", "workers"}
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for name in ("api.Dockerfile", "worker.Dockerfile"):
        dockerfile = _dockerfile(name)
        for folder in folders:
            assert f"COPY {folder} ./{folder}" in dockerfile, f"{name} does not copy {folder}/"
            assert folder not in ignored, f".dockerignore leaves {folder}/ out of the build context"
        assert "COPY shapes" not in dockerfile  # not installed
    assert {".env", "secrets"} <= ignored  # keys never enter an image


def _health_commands() -> dict[str, list[str]]:
    """The worker's health check as compose and as the image state it."""
    compose = _compose()["services"]["worker"]["healthcheck"]["test"]
    assert compose[0] == "CMD"
    image = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])", _dockerfile("worker.Dockerfile"))
    assert image, "the worker image has no HEALTHCHECK"
    return {"compose": compose[1:], "image": yaml.safe_load(image[1])}


def test_the_worker_health_check_is_the_script_the_image_holds() -> None:
    script = "worker_healthcheck.py"
    assert f"COPY docker/{script} ./" in _dockerfile("worker.Dockerfile")
    workdir = re.search(r"^WORKDIR\s+(\S+)", _dockerfile("worker.Dockerfile"), re.M)[1]
    for where, command in _health_commands().items():
        assert command == ["python", f"{workdir}/{script}"], where
    text = (ROOT / "docker-compose.yml").read_text() + _dockerfile("worker.Dockerfile")
    assert "'bdia:" not in text and '"bdia:' not in text  # no health check hard-codes the default prefix


def _health(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BDIA_")}
    return subprocess.run(
        [sys.executable, str(ROOT / "docker" / "worker_healthcheck.py")],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_worker_health_check_honours_the_key_prefix(redis_client: redis.Redis, prefix: str) -> None:
    env = {"BDIA_REDIS_URL": REDIS_URL, "BDIA_KEY_PREFIX": prefix}
    assert _health(env).returncode == 1  # no worker yet
    redis_client.set(f"{prefix}:worker:{socket.gethostname()}-4242-abcdef", "{}", ex=60)
    done = _health(env)
    assert done.returncode == 0, done.stderr
    assert _health({**env, "BDIA_KEY_PREFIX": f"{prefix}-other"}).returncode == 1
    unreachable = _health({**env, "BDIA_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert unreachable.returncode == 1 and "Redis" in unreachable.stderr


def test_every_setting_is_documented() -> None:
    """docs/operations.md's configuration table names every ``BDIA_*`` setting."""
    from bdia.jobqueue.settings import Settings

    documented = (ROOT / "docs" / "operations.md").read_text()
    missing = [name for name in Settings.model_fields if f"`BDIA_{name.upper()}`" not in documented]
    assert not missing, f"not in docs/operations.md: {missing}"
