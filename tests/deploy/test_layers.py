"""The layers stay apart: what each package imports, and the client in an environment of its own.

The engine (``bdia/``) imports nothing of the service; the queue contract (``jobqueue/``) is torch-free
and FastAPI-free; nothing imports in a cycle; ``import bdia`` loads neither FastAPI nor Redis; and the
HTTP client works where only httpx and pydantic are installed.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Where each installed package's source lives in the repository (pyproject.toml's package-dir).
PACKAGES = {
    "bdia": ROOT / "bdia",
    "bdia.jobqueue": ROOT / "jobqueue",
    "bdia.app": ROOT / "app",
    "bdia.workers": ROOT / "workers",
}


def _modules() -> dict[str, Path]:
    """Every module of the installed packages by dotted name."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if "assets" in path.parts:
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path, *, top_level_only: bool = False) -> set[str]:
    """The modules ``name`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return found


def _engine_modules() -> list[str]:
    return [
        m
        for m in MODULES
        if m == "bdia" or (m.startswith("bdia.") and m.split(".")[1] not in ("app", "workers", "jobqueue"))
    ]


def test_the_engine_imports_nothing_of_the_service() -> None:
    for name in _engine_modules():
        service = {
            m
            for m in _imports(name, MODULES[name])
            if m.split(".")[0] in ("app", "workers", "jobqueue") or m.startswith(("bdia.app", "bdia.workers"))
        }
        assert not service, f"{name} imports {service}"
        queue = {m for m in _imports(name, MODULES[name]) if m.startswith("bdia.jobqueue")}
        # Only the HTTP client's wire types share the job vocabulary (torch- and Redis-free).
        assert queue <= {"bdia.jobqueue.states"} and (not queue or name in ("bdia.wire", "bdia.client")), name


def test_the_queue_contract_is_torch_and_fastapi_free() -> None:
    for name in (m for m in MODULES if m.startswith("bdia.jobqueue")):
        banned = {
            m
            for m in _imports(name, MODULES[name])
            if m.split(".")[0] in ("torch", "fastapi", "starlette", "diffusers", "transformers", "app", "workers")
            or m.startswith(("bdia.app", "bdia.workers"))
        }
        assert not banned, f"{name} imports {banned}"


def test_nothing_imports_in_a_cycle() -> None:
    graph = {
        name: {m for m in _imports(name, path, top_level_only=True) if m in MODULES} for name, path in MODULES.items()
    }
    for name, imported in graph.items():  # a module importing its own package's __init__ is no cycle
        imported -= {m for m in imported if name.startswith(m + ".")}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        visiting.append(node)
        for nxt in sorted(graph[node]):
            if nxt in visiting:
                pytest.fail(f"import cycle: {' → '.join([*visiting[visiting.index(nxt) :], nxt])}")
            if nxt not in done:
                visit(nxt)
        visiting.pop()
        done.add(node)

    for name in sorted(graph):
        if name not in done:
            visit(name)


def test_import_bdia_loads_no_fastapi_redis_or_torch() -> None:
    code = "import sys, bdia, bdia.params, bdia.client; print(sorted({'torch', 'fastapi', 'redis'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def _distribution_files(name: str, seen: set[str]) -> set[Path]:
    """The top-level files and folders a distribution and its requirements (without extras) install."""
    key = name.lower().replace("_", "-")
    if key in seen:
        return set()
    seen.add(key)
    dist = importlib.metadata.distribution(name)
    tops: set[Path] = set()
    for file in dist.files or []:
        first = Path(file).parts[0]
        if not first.endswith((".dist-info", ".pth")) and first != "..":
            tops.add(Path(dist.locate_file(first)))
    for requirement in dist.requires or []:
        if "extra ==" in requirement:
            continue
        marker = requirement.split(";", 1)
        if len(marker) == 2 and "python_version" in marker[1] and "<" in marker[1]:
            continue  # backports for older Pythons
        dep = requirement.split(";")[0].strip()
        for stop in "<>=!~[( ":
            dep = dep.split(stop)[0]
        tops |= _distribution_files(dep, seen)
    return tops


def test_the_client_runs_where_only_httpx_and_pydantic_are_installed(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "bdia").mkdir(parents=True)
    for path in {*_distribution_files("httpx", set()), *_distribution_files("pydantic", set())}:
        os.symlink(path, site / path.name)
    # The bdia package as pip lays it out: the engine folder with the queue contract inside.
    shutil.copytree(ROOT / "bdia", site / "bdia", dirs_exist_ok=True, ignore=shutil.ignore_patterns("assets"))
    shutil.copytree(ROOT / "jobqueue", site / "bdia" / "jobqueue")
    code = """
import sys
sys.path.insert(0, sys.argv[1])
for absent in ("torch", "redis", "fastapi", "numpy", "PIL"):
    try:
        __import__(absent)
    except ImportError:
        continue
    raise SystemExit(f"{absent} is importable: the environment is not isolated")
import httpx
from bdia.client import ApiError, BdiaClient

def answer(request):
    return httpx.Response(200, json={"default": "shapes", "models": []})

with BdiaClient("http://service", transport=httpx.MockTransport(answer)) as client:
    print(client.models().default)
"""
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(site)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "shapes"


def test_installing_adds_one_top_level_name(tmp_path: Path) -> None:
    """The wheel installs ``bdia`` and nothing else, so a user's own ``app`` or ``workers`` is never shadowed."""
    import zipfile

    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    subprocess.run([*build, str(ROOT)], capture_output=True, text=True, timeout=300, check=True)
    (wheel,) = tmp_path.glob("bdia-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"bdia"}
    for package in ("bdia/app/main.py", "bdia/app/routes/jobs.py", "bdia/jobqueue/states.py", "bdia/workers/worker.py"):
        assert package in names
    assert not any(name.startswith("bdia/shapes/") for name in names)
