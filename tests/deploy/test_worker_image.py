"""The worker image can run every model family the engine loads (SD 1.x/2.x, SDXL, SD 3, Flux): its
install brings what their loading path imports, and its build checks each family's pipeline imports."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from bdia.families import FAMILIES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "docker" / "worker.Dockerfile").read_text()
FLUX_DIFFUSERS = Version("0.30")
"""The first diffusers with FluxPipeline (and FlowMatchEulerDiscreteScheduler's dynamic shifting)."""


def _install_line() -> str:
    return next(line for line in DOCKERFILE.splitlines() if "pip install" in line)


def test_the_engine_extra_brings_every_familys_libraries_at_a_floor_that_has_them() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    engine = {req.name: req for req in map(Requirement, extras["engine"])}
    assert {"diffusers", "transformers", "safetensors", "accelerate"} <= engine.keys()
    floors = [Version(spec.version) for spec in engine["diffusers"].specifier if spec.operator in (">=", "==")]
    assert floors and min(floors) >= FLUX_DIFFUSERS, "the diffusers floor predates FluxPipeline"
    assert "bdia[engine]" in extras["worker"]


def test_the_worker_image_installs_the_t5_tokenizers_needs_and_checks_each_familys_pipeline() -> None:
    install = _install_line()
    assert '".[worker]"' in install and {"sentencepiece", "protobuf"} <= set(install.split())
    imported = re.search(r"from diffusers import ([\w, ]+)", DOCKERFILE)
    assert imported, "the build does not import the families' pipelines"
    checked = {name.strip() for name in imported[1].split(",")}
    pipelines = {family.pipelines[0] for family in FAMILIES if family.name != "stable-diffusion"}
    assert pipelines <= checked, f"the build does not check {sorted(pipelines - checked)}"
