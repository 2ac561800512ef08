"""The build context of a runtime image, and the content hash that names it.

Everything the Dockerfile copies in is gathered here as ``(path in context, mode, bytes)`` entries: the
rendered Dockerfile, the OS-package script, the gVisor compatibility shim's source and build
script, the lock file, the entrypoint, the runtime side of the agentbox package source and the host's extra CA
certificates. The content hash covers those entries
plus the base image's id, so an unchanged input set maps to the same ``agentbox-runtime:<hash>`` tag
and the build is skipped.

Hashing reads every file, but only once per process for a file whose size and mtime did not change: a
no-change ``ensure`` costs a few ``stat`` calls.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CA_CERT_DIR",
    "FILES_DIR",
    "LOCK_FILE",
    "BuildContext",
    "ContextFile",
    "host_ca_certificates",
    "make_context",
    "package_dir",
]

FILES_DIR = Path(__file__).parent / "files"
LOCK_FILE = FILES_DIR / "server-requirements.txt"
CA_CERT_DIR = Path("/usr/local/share/ca-certificates")
# Bumped when the hash's meaning changes (not its inputs), so old tags stop matching.
HASH_SCHEME = "agentbox-runtime/1"
# A fixed mtime makes the tar (and the classic builder's COPY cache) depend on content alone.
FIXED_MTIME = 1_700_000_000
# Variables that make TLS clients in the image trust the system store, which holds the carried certs
# (pip and requests use their own bundle otherwise; node only adds, never replaces).
CA_ENV = (
    "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\\n"
    "    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \\\n"
    "    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\\n"
    "    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt"
)
# What the runtime server imports. The host side (backends, cli, images, sandbox, client...) needs the
# docker SDK, typer or httpx, which the image's venv does not have, and leaving it out means editing it
# does not change the content hash. The build imports the server, so a module missing here fails the
# build, not the first sandbox.
IMAGE_MODULES = ("__init__.py", "py.typed", "_streams.py", "errors.py", "protocol.py", "server")


@dataclass(frozen=True)
class ContextFile:
    """One file of the build context."""

    path: str
    """Path inside the context (forward slashes)."""
    data: bytes
    """Content."""
    mode: int = 0o644
    """Permission bits in the tar."""


@dataclass(frozen=True)
class BuildContext:
    """A complete build context and its content hash."""

    files: tuple[ContextFile, ...]
    """Every file, in a stable order; the Dockerfile is ``Dockerfile``."""
    content_hash: str
    """Hex sha256 over the base image id and every file (path, mode, content)."""
    ca_certificates: tuple[str, ...]
    """Names of the host CA certificates carried into the image."""

    def tar(self, labels: Mapping[str, str] | None = None) -> bytes:
        """The context as an uncompressed tar archive, as the Docker build API takes it.

        ``labels`` become one ``LABEL`` line at the end of the Dockerfile. They are not part of the
        content hash (one of them usually *is* the hash), and one line costs one build step where the
        build API's ``labels`` argument costs one per label.
        """
        files = list(self.files)
        if labels:
            pairs = " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in sorted(labels.items()))
            dockerfile = files[0]
            files[0] = ContextFile(dockerfile.path, dockerfile.data + f"\nLABEL {pairs}\n".encode(), dockerfile.mode)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            dirs: set[str] = set()
            for entry in files:
                parts = entry.path.split("/")[:-1]
                for depth in range(1, len(parts) + 1):
                    directory = "/".join(parts[:depth])
                    if directory not in dirs:
                        dirs.add(directory)
                        tar.addfile(_tarinfo(directory, tarfile.DIRTYPE, 0o755, 0))
                tar.addfile(_tarinfo(entry.path, tarfile.REGTYPE, entry.mode, len(entry.data)), io.BytesIO(entry.data))
            # The Dockerfile COPYs this directory even when the host has no extra certificates.
            if "ca-certificates" not in dirs:
                tar.addfile(_tarinfo("ca-certificates", tarfile.DIRTYPE, 0o755, 0))
        return buffer.getvalue()


def _tarinfo(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


_read_cache: dict[str, tuple[int, int, bytes]] = {}


def _read(path: Path) -> bytes:
    """File content, re-read only when size or mtime changed since the last read in this process."""
    st = path.stat()
    key = str(path)
    cached = _read_cache.get(key)
    if cached is not None and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
        return cached[2]
    data = path.read_bytes()
    _read_cache[key] = (st.st_size, st.st_mtime_ns, data)
    return data


def package_dir() -> Path:
    """The directory of the agentbox package that is copied into runtime images (this one)."""
    return Path(__file__).resolve().parent.parent


def _package_files(root: Path) -> Iterable[ContextFile]:
    """The runtime side of the package: :data:`IMAGE_MODULES`, Python source only, no caches."""
    for entry in IMAGE_MODULES:
        path = root / entry
        if path.is_file():
            yield ContextFile(f"opt-agentbox/src/agentbox/{entry}", _read(path))
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(".py"):
                    rel = (Path(dirpath) / name).relative_to(root).as_posix()
                    yield ContextFile(f"opt-agentbox/src/agentbox/{rel}", _read(Path(dirpath) / name))


def host_ca_certificates(directory: Path = CA_CERT_DIR) -> list[Path]:
    """The host's extra CA certificates (``*.crt`` in /usr/local/share/ca-certificates), sorted."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*.crt") if p.is_file())


def render_dockerfile(base: str, *, with_ca_env: bool) -> str:
    """The Dockerfile for ``base``; the CA variables are set only when certificates are carried."""
    template = _read(FILES_DIR / "Dockerfile.in").decode()
    return template.replace("@BASE@", base).replace("@CA_ENV@", CA_ENV if with_ca_env else "")


def make_context(
    base: str,
    base_id: str,
    *,
    source: Path | None = None,
    ca_dir: Path = CA_CERT_DIR,
) -> BuildContext:
    """Gather the build context for a runtime image on ``base`` (whose image id is ``base_id``)."""
    certs = host_ca_certificates(ca_dir)
    files: list[ContextFile] = [
        ContextFile("Dockerfile", render_dockerfile(base, with_ca_env=bool(certs)).encode()),
        ContextFile("install-os-packages.sh", _read(FILES_DIR / "install-os-packages.sh"), 0o755),
        ContextFile("gvisor-compat.c", _read(FILES_DIR / "gvisor-compat.c")),
        ContextFile("build-gvisor-compat.sh", _read(FILES_DIR / "build-gvisor-compat.sh"), 0o755),
        ContextFile("server-requirements.txt", _read(LOCK_FILE)),
        ContextFile("opt-agentbox/bin/agentbox-entrypoint", _read(FILES_DIR / "agentbox-entrypoint"), 0o755),
        ContextFile("opt-agentbox/bin/agentbox-sudo", _read(FILES_DIR / "agentbox-sudo"), 0o755),
    ]
    # Flattened names: two certificates with the same name in different subdirectories are unlikely,
    # and update-ca-certificates only looks at *.crt anyway.
    seen: set[str] = set()
    for cert in certs:
        name = cert.name if cert.name not in seen else f"{cert.parent.name}-{cert.name}"
        seen.add(name)
        files.append(ContextFile(f"ca-certificates/{name}", _read(cert)))
    files.extend(_package_files(source or package_dir()))

    digest = hashlib.sha256()
    digest.update(HASH_SCHEME.encode() + b"\0" + base_id.encode() + b"\0")
    for entry in files:
        digest.update(f"{entry.path}\0{entry.mode:o}\0{len(entry.data)}\0".encode())
        digest.update(entry.data)
    return BuildContext(tuple(files), digest.hexdigest(), tuple(sorted(seen)))
