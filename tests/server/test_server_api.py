"""The API of a real server process, through the client (and raw HTTP where the client would hide it)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from server_process import API_KEY, ServerProcess, start_server, stop_server

from agentbox.client import AsyncRuntimeClient, RuntimeClient
from agentbox.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    FileOperationError,
    NotFoundError,
    SandboxError,
)
from agentbox.protocol import ErrorOutput, RichOutput, StreamOutput

# ------------------------------------------------------------------------------------ auth and errors


def test_alive_needs_no_key_and_everything_else_does(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/alive").json() == {"status": "ok"}
    missing = httpx.get(f"{server.url}/info")
    assert missing.status_code == 401 and missing.json()["code"] == "unauthorized"
    wrong = httpx.post(
        f"{server.url}/sessions/default/run", json={"command": "id"}, headers={"X-Session-API-Key": "nope"}
    )
    assert wrong.status_code == 403 and wrong.json()["code"] == "forbidden"
    assert httpx.get(f"{server.url}/openapi.json").status_code == 401
    with RuntimeClient(server.url, "wrong") as bad, pytest.raises(AuthenticationError):
        bad.info()


def test_openapi_schema_describes_the_api(server: ServerProcess) -> None:
    doc = httpx.get(f"{server.url}/openapi.json", headers={"X-Session-API-Key": API_KEY}).json()
    assert doc["openapi"].startswith("3.")
    assert "/sessions/{name}/run" in doc["paths"] and "/files/edit" in doc["paths"]
    assert "RunCommand" in doc["components"]["schemas"]
    run_schema = doc["components"]["schemas"]["RunCommand"]
    assert run_schema["additionalProperties"] is False and run_schema["properties"]["timeout"]["description"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "says"),
    [
        ("POST", "/sessions/default/run", b"{not json", 400, "bad_request", "not valid JSON"),
        ("POST", "/sessions/default/run", b'{"command": "x", "timout": 3}', 422, "validation_error", "timout"),
        ("POST", "/sessions/default/run", b'{"command": "x", "timeout": "soon"}', 422, "validation_error", "timeout"),
        ("POST", "/files/edit", b'{"command": "explode", "path": "x"}', 422, "validation_error", "command"),
        ("POST", "/sessions", b'{"name": "no spaces allowed"}', 422, "validation_error", "name"),
        ("GET", "/no/such/endpoint", None, 404, "not_found", "no endpoint"),
        ("GET", "/sessions/default/run", None, 405, "method_not_allowed", "not allowed"),
        ("PATCH", "/sessions", None, 405, "method_not_allowed", "allowed: "),
        ("HEAD", "/info", None, 405, "method_not_allowed", "not allowed"),
        ("POST", "/sessions/nope/run", b'{"command": "x"}', 404, "not_found", "nope"),
        ("GET", "/background/bg-missing/output?offset=-1", None, 422, "validation_error", "offset"),
        # Issue 11 item 7: each of these was a 500 (and cost the client its connection).
        ("POST", "/files/read", b'{"path": "a\\u0000b"}', 422, "validation_error", "path"),
        ("POST", "/files/list", b'{"path": "' + b"a/" * 2000 + b'"}', 422, "validation_error", "path"),
        ("POST", "/sessions", b'{"name": "n1", "cwd": "x\\u0000"}', 422, "validation_error", "cwd"),
        ("POST", "/sessions", b'{"name": "n2", "env": {"A=B": "1"}}', 422, "validation_error", "env"),
        ("POST", "/sessions", b'{"name": "n3", "env": {"": "1"}}', 422, "validation_error", "env"),
        ("POST", "/sessions", b'{"name": "n4", "env": {"A": "1\\u0000"}}', 422, "validation_error", "env.A"),
        ("POST", "/sessions", b'{"name": "n5", "cwd": "/etc/passwd"}', 400, "bad_request", "cwd"),
        ("POST", "/sessions", b'{"name": "n6", "cwd": "/no/such/dir"}', 404, "not_found", "cwd"),
        ("POST", "/background", b'{"command": "true", "cwd": "/etc/passwd"}', 400, "bad_request", "cwd"),
        ("POST", "/background", b'{"command": "true\\u0000"}', 422, "validation_error", "command"),
        ("POST", "/background", b'{"command": "true", "env": {"X=": "1"}}', 422, "validation_error", "env"),
        ("POST", "/sessions/default/run", b'{"command": "echo \\u0000"}', 422, "validation_error", "command"),
        ("POST", "/sessions/default/run", b'{"command": "true", "timeout": true}', 422, "validation_error", "timeout"),
        ("POST", "/sessions/default/run", b'{"command": "x", "max_output_chars": "500"}', 422, "validation_error",
         "max_output_chars"),
        ("GET", f"/background/bg-x/output?offset={2**70}", None, 422, "validation_error", "offset"),
        ("POST", "/files/write", '{"path": "f", "content": "é", "encoding": "base64"}'.encode(), 422,
         "validation_error", "content"),
        ("POST", "/files/read", b'{"path": "\\ud800"}', 422, "validation_error", "path: "),
        ("POST", "/sessions/default/run", b'{"command": "echo \\udfff"}', 422, "validation_error", "command"),
        ("POST", "/files/edit", b'{"command": "view", "path": "x", "view_range": [1, 1e30]}', 422,
         "validation_error", "view_range"),
    ],
)
def test_malformed_requests_get_4xx_code_and_message(
    server: ServerProcess, method: str, path: str, body: bytes | None, status: int, code: str, says: str
) -> None:
    with httpx.Client(base_url=server.url, headers={"X-Session-API-Key": API_KEY}) as http:
        resp = http.request(method, path, content=body)
        assert resp.status_code == status, resp.text
        if method != "HEAD":
            assert resp.json()["code"] == code and says in resp.json()["message"]
            assert set(resp.json()) == {"code", "message"}
        if status == 405:
            assert resp.headers["allow"]
        # The same keep-alive connection serves the next request.
        assert http.get("/sessions").status_code == 200


def test_transport_errors_become_sandbox_errors() -> None:
    with (
        RuntimeClient("http://127.0.0.1:9", API_KEY, timeout=2) as c,
        pytest.raises(SandboxError, match="cannot connect"),
    ):
        c.alive()


def test_a_server_on_a_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "server.sock"
    (tmp_path / "work").mkdir()
    srv = start_server(tmp_path / "work", "--uds", str(sock))
    try:
        assert srv.url == f"unix:{sock}"  # the ready line names the socket
        # Created private: the host connects as root or as the server's own uid.
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        with RuntimeClient("http://sandbox", API_KEY, timeout=30, uds=str(sock)) as c:
            res = c.run("echo over-uds; pwd")
            assert res.output == f"over-uds\n{tmp_path / 'work'}\n" and res.exit_code == 0
            with (
                pytest.raises(AuthenticationError),
                RuntimeClient("http://sandbox", "wrong", timeout=30, uds=str(sock)) as wrong,
            ):
                wrong.run("true")

        async def run_async() -> str:
            async with AsyncRuntimeClient("http://sandbox", API_KEY, timeout=30, uds=str(sock)) as ac:
                return (await ac.run("echo async-uds")).output

        assert asyncio.run(run_async()) == "async-uds\n"
    finally:
        stop_server(srv)
    # A socket left by an earlier run (a restarted container) is replaced, not an error.
    assert sock.exists()
    srv = start_server(tmp_path / "work", "--uds", str(sock))
    try:
        with RuntimeClient("http://sandbox", API_KEY, timeout=30, uds=str(sock)) as c:
            assert c.alive().status == "ok"
    finally:
        stop_server(srv)
    with (
        RuntimeClient("http://sandbox", API_KEY, timeout=2, uds=str(tmp_path / "missing.sock")) as c,
        pytest.raises(SandboxError, match="cannot connect to the runtime server at unix:"),
    ):
        c.alive()


# -------------------------------------------------------------------------------------------- shell


def test_run_reports_exit_code_and_cwd(client: RuntimeClient, server: ServerProcess) -> None:
    res = client.run("mkdir -p d && cd d && echo hi && (exit 3)")
    assert res.output == "hi\n" and res.exit_code == 3 and res.cwd == str(server.work_dir / "d")


def test_busy_session_is_refused_with_409(client: RuntimeClient) -> None:
    first = client.run("sleep 0.5; echo done", no_output_timeout=0.1)
    assert first.still_running
    with pytest.raises(ConflictError, match="still running"):
        client.run("echo second")
    rest = client.read_output(timeout=10, no_output_timeout=5)
    assert rest.output == "done\n" and rest.exit_code == 0


def test_timeouts_over_http_leave_session_usable(client: RuntimeClient) -> None:
    res = client.run("echo start; sleep 20", timeout=0.5)
    assert res.timed_out and res.output.startswith("start")
    # Shell builtins: output at once, however loaded the machine (an interpreter's start can outlast 0.5 s).
    res = client.run("echo waiting; read line; echo bye", no_output_timeout=0.5)
    assert res.still_running and "waiting" in res.output
    res = client.send_input("\n", timeout=10, no_output_timeout=5)
    assert "bye" in res.output and res.exit_code == 0
    client.run("sleep 20", no_output_timeout=0.1)
    res = client.interrupt()
    assert res.interrupted and not res.still_running
    assert client.run("echo usable").output == "usable\n"


def test_ten_megabytes_of_output_is_truncated_but_fully_retrievable(client: RuntimeClient) -> None:
    res = client.run("head -c 10000000 /dev/zero | tr '\\0' 'x'; echo; echo END")
    assert res.truncated and len(res.output) <= 30_000 and res.output.endswith("END\n")
    assert res.output_chars == 10_000_005
    full = client.command_output(res.command_id)
    assert len(full) == 10_000_005 and full.endswith("x\nEND\n")


def test_stream_delivers_chunks_then_result(client: RuntimeClient) -> None:
    events = list(
        client.stream("for i in 1 2 3; do echo line$i; sleep 0.05; done; exit_code_is() { return 4; }; exit_code_is")
    )
    assert events[-1].type == "result" and events[-1].result.exit_code == 4
    text = "".join(e.text for e in events if e.type == "output")
    assert text == "line1\nline2\nline3\n"
    assert len([e for e in events if e.type == "output"]) >= 2  # produced over time, not in one piece


def test_named_sessions(client: RuntimeClient, server: ServerProcess) -> None:
    client.create_session("side", cwd="/", env={"SIDE": "1"})
    try:
        assert client.run("echo $SIDE; pwd", session="side").output == "1\n/\n"
        assert {s.name for s in client.list_sessions()} >= {"default", "side"}
    finally:
        client.close_session("side")
    with pytest.raises(NotFoundError):
        client.run("true", session="side")


def test_exit_restarts_the_shell(client: RuntimeClient) -> None:
    res = client.run("exit 5")
    assert res.session_restarted and res.exit_code == 5
    assert client.run("echo back").output == "back\n"


def test_finished_children_are_reaped(client: RuntimeClient, server: ServerProcess) -> None:
    client.run("exit 0")
    bg = client.start_background("true")
    for _ in range(100):
        if not client.background_info(bg.id).running:
            break
        time.sleep(0.05)
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    states = [
        Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        for pid in children
        if Path(f"/proc/{pid}/stat").exists()
    ]
    assert "Z" not in states


def test_idle_server_uses_no_cpu(client: RuntimeClient, server: ServerProcess) -> None:
    def cpu_ticks() -> int:
        fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    client.run("true")
    time.sleep(0.2)
    before = cpu_ticks()
    time.sleep(1.0)
    assert cpu_ticks() - before <= 1  # at most one 10 ms tick in a second of idleness


# -------------------------------------------------------------------------------------- background


def test_background_commands(client: RuntimeClient) -> None:
    bg = client.start_background("echo out; echo err >&2; sleep 30")
    assert bg.running and bg.id in {b.id for b in client.list_background()}
    out = None
    for _ in range(100):
        out = client.read_background(bg.id)
        if "err" in out.output:
            break
        time.sleep(0.02)
    assert out is not None and "out\n" in out.output and "err\n" in out.output and out.running
    killed = client.kill_background(bg.id)
    assert not killed.running and killed.exit_code == -9
    # DELETE forgets it: no record, no output left behind.
    assert bg.id not in {b.id for b in client.list_background()}
    with pytest.raises(NotFoundError):
        client.background_info(bg.id)
    done = client.start_background("printf abc; exit 3")
    for _ in range(100):
        info = client.background_info(done.id)
        if not info.running:
            break
        time.sleep(0.02)
    assert info.exit_code == 3
    tail = client.read_background(done.id, offset=1)
    assert tail.output == "bc" and tail.next_offset == 3
    with pytest.raises(NotFoundError):
        client.read_background("bg-nope")


# ------------------------------------------------------------------------------------------- files


def test_files_relative_to_session_cwd(client: RuntimeClient, server: ServerProcess) -> None:
    client.run("mkdir -p rel && cd rel")
    written = client.write_file("notes/a.txt", "first\nsecond\nthird\n")
    assert written.path == str(server.work_dir / "rel" / "notes" / "a.txt")
    assert client.read_file("notes/a.txt", start_line=2, end_line=2).content == "second\n"
    client.write_file("bin.dat", b"\x00\xff\x10")
    with pytest.warns(DeprecationWarning, match="read_bytes"):  # the old spelling still works, and says so
        assert base64.b64decode(client.read_file("bin.dat", binary=True).content) == b"\x00\xff\x10"
    names = [e.name for e in client.list_dir(".").entries]
    assert names == ["bin.dat", "notes"]
    with pytest.raises(NotFoundError):
        client.read_file("missing.txt")


def test_editor_over_http(client: RuntimeClient, server: ServerProcess) -> None:
    path = str(server.work_dir / "edit_me.py")
    client.create(path, "x = 1\ny = 1\n")
    client.str_replace(path, "x = 1", "x = 2")
    with pytest.raises(FileOperationError, match="2 times"):
        client.str_replace(path, " = ", "=")
    client.insert(path, 2, "z = 3")
    assert "     3\tz = 3" in client.view(path)
    client.undo_edit(path)
    assert Path(path).read_text() == "x = 2\ny = 1\n"


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_large_file_round_trip(client: RuntimeClient, server: ServerProcess, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(50):
            f.write(os.urandom(1 << 20))
    up = client.upload(src, "uploads/big.bin")
    assert up.bytes == 50 << 20 and _sha(server.work_dir / "uploads" / "big.bin") == _sha(src)
    client.download("uploads/big.bin", tmp_path / "back.bin")
    assert _sha(tmp_path / "back.bin") == _sha(src)
    with pytest.raises(NotFoundError):
        client.download("uploads/none.bin", tmp_path / "none.bin")


def test_tree_round_trip(client: RuntimeClient, server: ServerProcess, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "deep.txt").write_text("deep")
    (tree / "top.bin").write_bytes(os.urandom(3 << 20))
    (tree / "link").symlink_to("top.bin")
    up = client.upload(tree, "tree-copy")
    assert up.files == 2
    remote = server.work_dir / "tree-copy"
    assert (remote / "a" / "b" / "deep.txt").read_text() == "deep"
    assert os.readlink(remote / "link") == "top.bin"
    client.download("tree-copy", tmp_path / "tree-back")
    assert (tmp_path / "tree-back" / "top.bin").read_bytes() == (tree / "top.bin").read_bytes()
    assert (tmp_path / "tree-back" / "a" / "b" / "deep.txt").read_text() == "deep"


def test_tar_upload_cannot_escape_its_directory(server: ServerProcess, tmp_path: Path) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"evil"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    resp = httpx.put(
        f"{server.url}/files/upload",
        params={"path": "jail", "format": "tar"},
        content=buf.getvalue(),
        headers={"X-Session-API-Key": API_KEY},
    )
    assert resp.status_code == 400 and resp.json()["code"] == "file_error"
    assert not (server.work_dir / "escaped.txt").exists()


# ------------------------------------------------------------------------------------------ python


def test_python_kernel_state_errors_images_timeout(client: RuntimeClient) -> None:
    res = client.run_python("x = 40\nprint('set')")
    assert res.status == "ok" and res.outputs[0].type == "stream" and res.outputs[0].text == "set\n"
    res = client.run_python("x + 2")
    assert res.outputs[-1].type == "result" and res.outputs[-1].text == "42"
    res = client.run_python("def f():\n    raise ValueError('boom')\nf()")
    assert res.status == "error"
    err = res.outputs[-1]
    assert err.type == "error" and err.ename == "ValueError" and err.evalue == "boom"
    assert any("raise ValueError" in line for line in err.traceback)
    assert not any("\x1b[" in line for line in err.traceback)
    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    )
    res = client.run_python(f"from IPython.display import Image, display\ndisplay(Image(data={png!r}, format='png'))")
    shown = res.outputs[-1]
    assert shown.type == "display" and shown.png is not None and base64.b64decode(shown.png) == png
    res = client.run_python("import time\nprint('going', flush=True)\ntime.sleep(30)", timeout=1)
    assert res.status == "timeout" and any(isinstance(o, StreamOutput) and "going" in o.text for o in res.outputs)
    last = client.run_python("x").outputs[-1]
    assert isinstance(last, (StreamOutput, RichOutput)) and last.text == "40"  # interrupted, not restarted
    client.restart_python()
    res = client.run_python("x")
    error = res.outputs[-1]
    assert res.status == "error" and isinstance(error, ErrorOutput) and error.ename == "NameError"


def test_info_reports_usage(client: RuntimeClient, server: ServerProcess) -> None:
    info = client.info()
    assert info.pid == server.pid and info.sessions >= 1 and info.uptime_s > 0
    assert info.server.cpu_seconds > 0 and info.server.rss_bytes
    assert info.idle_s < info.uptime_s


# ------------------------------------------------------------------------------------ key handover


def test_key_file_is_read_and_deleted(tmp_path: Path) -> None:
    import subprocess
    import sys

    key_file = tmp_path / "key"
    key_file.write_text("file-key\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentbox.server",
            "--work-dir",
            str(tmp_path / "made" / "here"),
            "--api-key-file",
            str(key_file),
            "--delete-key-file",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("agentbox-server ready on http://127.0.0.1:")
        assert not key_file.exists() and (tmp_path / "made" / "here").is_dir()
        with RuntimeClient(line.split()[-1], "file-key") as c:
            assert c.run("pwd").output.strip() == str(tmp_path / "made" / "here")
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_missing_key_source_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "agentbox.server", "--work-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2 and "--api-key-file" in res.stderr


def test_async_client(server: ServerProcess, tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncRuntimeClient(server.url, API_KEY) as c:
            await c.create_session("async")
            res = await c.run("echo async-hi", session="async")
            assert res.output == "async-hi\n"
            chunks = [e async for e in c.stream("echo a; echo b", session="async")]
            assert chunks[-1].type == "result"
            src = tmp_path / "f.bin"
            src.write_bytes(os.urandom(100_000))
            await c.upload(src, "async/f.bin", session="async")
            await c.download("async/f.bin", tmp_path / "g.bin", session="async")
            assert (tmp_path / "g.bin").read_bytes() == src.read_bytes()
            with pytest.raises(BadRequestError):
                await c.run("x", session="async", max_output_chars=5)
            await c.close_session("async")

    asyncio.run(main())


def test_shutdown_kills_sandbox_processes(tmp_path: Path, session_pids: Callable[[int], list[int]]) -> None:
    srv = start_server(tmp_path)
    with RuntimeClient(srv.url, API_KEY) as c:
        c.run("sleep 300 &")
        bash_pid = c.list_sessions()[0].pid
    assert session_pids(bash_pid)
    stop_server(srv)
    assert session_pids(bash_pid) == []
