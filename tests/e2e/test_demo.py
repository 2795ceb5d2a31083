"""``bdia demo``: the whole service driven by the typed client, and a clear message without Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import REDIS_URL, ROOT


def _demo(args: list[str], **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BDIA_")}
    return subprocess.run(
        [sys.executable, "-m", "app.demo", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_demo_without_redis_says_what_to_install(tmp_path: Path) -> None:
    done = _demo(["--out", str(tmp_path)], PATH=str(tmp_path))  # no redis-server on this PATH
    assert done.returncode == 1
    assert "apt-get install redis-server" in done.stderr and "BDIA_REDIS_URL" in done.stderr


def test_demo_end_to_end(tmp_path: Path, redis_client) -> None:
    # The default model, as `make demo` runs it (shapes: pixel space, so the pixels come back too).
    done = _demo(["--out", str(tmp_path), "--steps", "5"], BDIA_REDIS_URL=REDIS_URL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "latent max abs error 0 (bit-exact" in done.stdout and "answered from the cache: True" in done.stdout
    assert "model shapes" in done.stdout and "pixels identical to the upload" in done.stdout
    assert "edit 1 changed" in done.stdout and "every pixel outside its mask is the upload's own" in done.stdout
    names = ("edit-1-mask.png", "edit-2-mask.png")
    for name in ("source.png", "edit-1.png", "edit-2.png", "reconstruction.png", "inversion.safetensors", *names):
        assert (tmp_path / name).stat().st_size > 0
    assert not list(redis_client.scan_iter(match="bdia-demo-*"))  # it cleaned up after itself
