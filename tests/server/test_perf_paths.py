"""The shortcuts of the hot paths keep their meaning: each one is checked against what it stands for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agentbox.server.memory import MMAP_THRESHOLD, tune_malloc
from agentbox.server.procs import Instant, now
from agentbox.server.shell import _overwrite


def test_a_process_started_since_an_instant_is_seen() -> None:
    instant = now()
    subprocess.run(["true"], check=True)
    assert not instant.nothing_started_since()


def test_an_instant_without_a_pid_never_claims_nothing_started() -> None:
    # /proc/loadavg unreadable (last_pid 0): the shortcut must fall back to the scan.
    assert not Instant(ticks=0, last_pid=0).nothing_started_since()


_FRAGMENT = """
import sys, threading
from agentbox.server.memory import tune_malloc
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
tuned = tune_malloc() if sys.argv[1] == "tune" else False
grown = []
def transfer():
    # As a transfer does on a worker thread: a 1 MiB chunk freed (glibc's dynamic threshold rises past it),
    # then chunks interleaved with small blocks that stay alive, then the chunks freed.
    first = bytearray(1 << 20)
    del first
    before = rss()
    chunks, kept = [], []
    for _ in range(64):
        chunks.append(bytearray(1 << 20))
        kept.append(bytearray(1000))
    del chunks
    grown.append(rss() - before)
thread = threading.Thread(target=transfer)
thread.start()
thread.join()
print(tuned, grown[0])
"""


def _grown(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", _FRAGMENT, mode], capture_output=True, text=True, check=True)
    tuned, grown = out.stdout.split()
    return tuned == "True", int(grown)


def test_tune_malloc_returns_freed_chunks_to_the_kernel() -> None:
    tuned, grown = _grown("tune")
    if not tuned:  # not glibc: nothing to check
        return
    # Without the setting glibc 2.36 keeps all 64 MiB here (the "plain" mode shows it).
    assert grown < 16 * MMAP_THRESHOLD, grown


def test_tune_malloc_is_harmless_to_call_twice() -> None:
    assert tune_malloc() == tune_malloc()


def test_overwrite_leaves_exactly_the_new_content(tmp_path: Path) -> None:
    path = tmp_path / "cmd.sh"
    _overwrite(str(path), b"a much longer first command\n")
    _overwrite(str(path), b"ls\n")
    assert path.read_bytes() == b"ls\n"
    _overwrite(str(path), b"echo \xff\n")
    assert path.read_bytes() == b"echo \xff\n"


def test_client_builds_a_tls_context_only_for_https() -> None:
    from agentbox.client import RuntimeClient

    with RuntimeClient("http://127.0.0.1:9", "key") as plain:
        assert plain._transport_args()["verify"] is False
    with RuntimeClient("http://localhost", "key", uds="/nonexistent.sock") as uds:
        assert uds._transport_args()["verify"] is False
    # Through a control plane behind TLS the certificate is checked, as httpx does by default.
    with RuntimeClient("https://agentbox.example/v1/sandboxes/x/runtime", "tok", auth="bearer") as tls:
        assert "verify" not in tls._transport_args()
