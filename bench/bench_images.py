"""Runtime image sizes and times: cold build, one-module rebuild, no-change ensure, image size over base,
entrypoint overhead and container start -> ready line.

    python bench/bench_images.py [results.json]

``run(json_path=None)`` returns the numbers as a dict (and writes them as JSON when given a path).
Everything it creates carries ``agentbox.test=1`` and is removed; the real current runtime image is built
if missing (that is the no-change path being measured) and kept.
"""

from __future__ import annotations

import io
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from agentbox.config import SandboxConfig
from agentbox.engine import docker_client
from agentbox.images import build_runtime_image, ensure_base_image, ensure_runtime_image
from agentbox.images.context import package_dir

TEST_LABELS = {"agentbox.test": "1"}
# Runs the entrypoint with the server replaced by /bin/true, from pristine user files each time, so the
# number is the entrypoint's own work (user, sudoers, work dir, key, env) plus setpriv and one exec.
_ENTRYPOINT_TIMING = r"""
set -e
sed 's#/opt/agentbox/venv/bin/python -I -u -m agentbox.server#/bin/true#' \
    /opt/agentbox/bin/agentbox-entrypoint > /tmp/ep
for f in passwd group shadow gshadow; do cp /etc/$f /tmp/$f.orig; done
/opt/agentbox/venv/bin/python - <<'EOF'
import os, shutil, subprocess, time
runs = []
for _ in range(25):
    for f in ("passwd", "group", "shadow", "gshadow"):
        shutil.copy(f"/tmp/{f}.orig", f"/etc/{f}")
    shutil.rmtree("/home/agent", ignore_errors=True)
    shutil.rmtree("/workspace", ignore_errors=True)
    os.makedirs("/run/agentbox", exist_ok=True)
    open("/run/agentbox/session-key", "w").write("k")
    open("/run/agentbox/env.sh", "w").write("export A='b'\n")
    t = time.perf_counter()
    subprocess.run(["/bin/sh", "/tmp/ep", "--uid", "1234", "--work-dir", "/workspace",
                    "--host", "0.0.0.0", "--port", "8000"], check=True)
    runs.append(time.perf_counter() - t)
t = time.perf_counter()
subprocess.run(["/bin/true"], check=True)
print(sorted(runs)[len(runs) // 2], time.perf_counter() - t)
EOF
"""


def _remove(client: Any, ref: str) -> None:
    try:
        client.images.remove(ref, force=True)
    except Exception as exc:  # a bench leaves no image behind, but a failed removal must not hide numbers
        print(f"could not remove {ref}: {exc}", file=sys.stderr)


def _key_tar(key: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directory = tarfile.TarInfo("agentbox")
        directory.type, directory.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(directory)
        data = key.encode()
        info = tarfile.TarInfo("agentbox/session-key")
        info.size, info.mode = len(data), 0o600
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _start_to_ready(client: Any, image: str, runs: int = 5) -> list[float]:
    """Seconds from container create to the server's ready line, as the Docker backend would see it."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        container = client.containers.create(
            image,
            ["--uid", "1234", "--work-dir", "/workspace", "--host", "0.0.0.0", "--port", "8000"],
            labels=TEST_LABELS,
            ports={"8000/tcp": ("127.0.0.1", None)},
        )
        try:
            container.put_archive("/run", _key_tar(secrets.token_urlsafe(16)))
            container.start()
            for line in container.logs(stream=True, follow=True):
                if b"agentbox-server ready on" in line:
                    break
            times.append(time.perf_counter() - started)
        finally:
            container.remove(force=True)
    return times


def run(json_path: str | Path | None = None) -> dict[str, Any]:
    """Measure the runtime image numbers on the bootstrapped/default base; optionally write JSON."""
    client = docker_client(timeout=1800)
    results: dict[str, Any] = {}
    try:
        base = ensure_base_image(client, SandboxConfig().base_container_image).ref
        results["base_image"] = base

        # No-change ensure: first call in this process (cold file cache), then warm calls.
        current = ensure_runtime_image(SandboxConfig(), client=client)
        warm = []
        for _ in range(5):
            started = time.perf_counter()
            assert ensure_runtime_image(SandboxConfig(), client=client) == current
            warm.append(time.perf_counter() - started)
        results["runtime_image"] = current
        results["ensure_no_change_s"] = round(statistics.median(warm), 4)
        # What a second `agentbox build` pays: a new process, imports, hashing, two engine calls.
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from agentbox.config import SandboxConfig as C; "
                "from agentbox.images import ensure_runtime_image as e; e(C())",
            ],
            check=True,
        )
        results["ensure_no_change_new_process_s"] = round(time.perf_counter() - started, 3)

        size = client.images.get(current).attrs["Size"]
        base_size = client.images.get(base).attrs["Size"]
        results["image_size_mb"] = round(size / 1e6, 1)
        results["image_size_over_base_mb"] = round((size - base_size) / 1e6, 1)

        # One-module rebuild: a temp copy of the package with one changed comment line.
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "agentbox"
            shutil.copytree(package_dir(), source, ignore=shutil.ignore_patterns("__pycache__"))
            module = source / "server" / "__main__.py"
            module.write_text(module.read_text() + f"\n# bench edit {uuid.uuid4().hex}\n")
            tag = f"agentbox-bench-runtime:edit-{uuid.uuid4().hex[:8]}"
            try:
                edited = build_runtime_image(base, tag=tag, client=client, labels=TEST_LABELS, source=source)
                results["rebuild_one_module_s"] = round(edited.seconds, 2)
            finally:
                _remove(client, tag)

        # Cold build: no layer cache at all, into a throwaway tag.
        tag = f"agentbox-bench-runtime:cold-{uuid.uuid4().hex[:8]}"
        try:
            cold = build_runtime_image(base, tag=tag, force=True, client=client, labels=TEST_LABELS)
            results["cold_build_s"] = round(cold.seconds, 1)
        finally:
            _remove(client, tag)

        output = client.containers.run(
            current,
            entrypoint=["/bin/sh", "-c", _ENTRYPOINT_TIMING],
            command=[],
            labels=TEST_LABELS,
            remove=True,
            network_disabled=True,
        )
        entrypoint_s, exec_s = (float(x) for x in output.decode().split())
        results["entrypoint_overhead_ms"] = round((entrypoint_s - exec_s) * 1000, 1)

        ready = _start_to_ready(client, current)
        results["start_to_ready_p50_s"] = round(statistics.median(ready), 3)
    finally:
        client.close()
    if json_path is not None:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else None), indent=2))
