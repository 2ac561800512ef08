"""Issue 11: bad input never costs the next call, responses tolerate new fields, runaway processes die.

In-process where the service is enough; through a real server (and a real keep-alive connection) where
the behaviour lives in HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pydantic
import pytest
from server_process import API_KEY, ServerProcess
from starlette.requests import Request
from starlette.routing import Route

from agentbox import protocol
from agentbox.client import RuntimeClient
from agentbox.protocol import RunCommand, SessionCreate
from agentbox.server.app import create_app
from agentbox.server.settings import ServerSettings

# ------------------------------------------------------------------------------------ version skew


def test_a_response_with_an_unknown_field_still_parses() -> None:
    """An older client reads a newer server's answer (issue 9 item 5)."""
    newer = {
        "command_id": "c1",
        "session": "default",
        "output": "hi\n",
        "exit_code": 0,
        "cwd": "/w",
        "added_in_a_later_version": {"anything": 1},
    }
    assert protocol.CommandResult.model_validate(newer).output == "hi\n"
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(cast(Any, protocol.StreamEvent))
    event = adapter.validate_python({"type": "result", "result": newer, "also_new": True})
    assert isinstance(event, protocol.StreamEnd)
    assert protocol.ErrorBody.model_validate({"code": "x", "message": "y", "details": []}).code == "x"


def test_a_request_with_an_unknown_field_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="timout"):
        RunCommand.model_validate({"command": "true", "timout": 3})
    with pytest.raises(pydantic.ValidationError):
        SessionCreate.model_validate({"name": "s", "extra": 1})


@pytest.mark.parametrize(
    ("model", "payload", "field"),
    [
        (RunCommand, {"command": "echo \ud800"}, "command"),
        (RunCommand, {"command": "x", "timeout": True}, "timeout"),
        (protocol.WriteFile, {"path": "x", "content": "\udcff"}, "content"),
        (protocol.SendInput, {"text": "\ud83d"}, "text"),
        (protocol.ReadFile, {"path": "/" + "a/" * protocol.MAX_PATH_DEPTH}, "path"),
        (protocol.BackgroundStart, {"command": "x", "env": {"K": "\ud800"}}, "env"),
    ],
)
def test_wire_types_refuse_what_the_os_cannot_take(model: type[pydantic.BaseModel], payload: Any, field: str) -> None:
    """Lone surrogates (only possible from Python callers) and bools-as-numbers fail validation, naming the field."""
    with pytest.raises(pydantic.ValidationError) as info:
        model.model_validate(payload)
    assert info.value.errors()[0]["loc"][0] == field


def test_python_callers_keep_their_natural_types() -> None:
    """What JSON must not coerce is refused; what Python callers naturally pass is not (a list for a pair)."""
    assert protocol.ViewOp(command="view", path="x", view_range=[1, -1]).view_range == (1, -1)
    assert RunCommand(command="x", timeout=5).timeout == 5.0
    assert protocol.WriteFile.model_validate_json('{"path": "x", "content": "", "mode": 420.0}').mode == 420
    for flag in ("1", '"true"'):
        with pytest.raises(pydantic.ValidationError, match="include_hidden"):
            protocol.ListDir.model_validate_json(f'{{"include_hidden": {flag}}}')


def test_the_sdk_refuses_a_lone_surrogate_inside_the_error_tree(session_client: RuntimeClient) -> None:
    from agentbox.errors import BadRequestError

    with pytest.raises(BadRequestError, match="command"):
        session_client.run("echo \ud800")
    assert session_client.run("echo fine").output == "fine\n"


# ---------------------------------------------------------------------------- HTTP-level robustness


def test_oversized_json_body_is_a_413_pointing_to_upload(server: ServerProcess) -> None:
    big = b'{"path": "x", "content": "' + b"a" * (64 * 1024 * 1024 + 1) + b'"}'
    with httpx.Client(base_url=server.url, headers={"X-Session-API-Key": API_KEY}, timeout=60) as http:
        resp = http.post("/files/write", content=big)
        assert resp.status_code == 413, resp.text[:300]
        assert resp.json()["code"] == "payload_too_large" and "/files/upload" in resp.json()["message"]
        assert http.get("/alive").status_code == 200


@contextlib.contextmanager
def _serve(app: Any) -> Iterator[tuple[str, int]]:
    """Serve ``app`` with uvicorn (httptools, as the real server) on a free port in a thread."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="on", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started, "uvicorn did not start"
        yield sock.getsockname()
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def test_an_unexpected_error_is_a_500_that_keeps_the_connection(tmp_path: Path) -> None:
    """uvicorn closes a connection whose app raised after answering; the next, unrelated call then failed."""
    (tmp_path / "w").mkdir()
    app = create_app(ServerSettings(api_key="k", work_dir=str(tmp_path / "w"), state_dir=str(tmp_path / "s")))

    async def boom(request: Request) -> None:
        raise RuntimeError("a bug")

    app.router.routes.append(Route("/boom", boom, methods=["GET"]))
    with _serve(app) as address, socket.create_connection(address) as s:
        request = b"GET %s HTTP/1.1\r\nHost: x\r\nX-Session-API-Key: k\r\n\r\n"
        s.sendall(request % b"/boom" + request % b"/sessions")
        s.settimeout(30)
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            assert chunk, f"the server closed the connection after: {data!r}"
            data += chunk
    first, second = data.split(b"HTTP/1.1 ")[1:3]
    assert first.startswith(b"500") and b'"code":"internal"' in first and b"RuntimeError" in first
    assert second.startswith(b"200") and b'"sessions"' in second


# ---------------------------------------------------------------------------------- runaway processes


def _procs_with(token: bytes) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``token``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if token in cmdline and state not in (b"Z", b"X"):
            found.append(int(name))
    return found


async def _until_all_started(probe: bytes) -> None:
    """Wait (bounded) until every process _ESCAPES starts is running: 4 sleeps, and 63 of the bomb."""
    for _ in range(2000):
        if len(_procs_with(probe)) >= 67:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {len(_procs_with(probe))} of 67 processes started")


# Every way a command's processes can leave its shell's session, process group or ancestry.
_ESCAPES = (
    "sleep {t} &\n"  # a background job: its own process group
    "setsid sleep {t} &\n"  # a new session
    "(setsid sleep {t} &)\n"  # double fork: a new session, and reparented to init
    "env -i /bin/sleep {t} &\n"  # no marker in its environment (found by ancestry)
    "bomb() {{ [ $1 -lt 5 ] && {{ bomb $(($1+1)) & bomb $(($1+1)) & }}; sleep {t}; }}; bomb 0 &\n"  # a bounded bomb
    "sleep {t}"
)


def test_a_timeout_kills_everything_the_command_started(aio, make_shells, tmp_path: Path) -> None:
    token = "1234.25"

    async def main() -> None:
        async with make_shells(tmp_path) as m:
            sh = m.get("default")
            await sh.run(RunCommand(command="sleep 1234.5 &"))  # an earlier command's job: not this command's
            res = await sh.run(RunCommand(command=_ESCAPES.format(t=token), timeout=2))
            assert res.timed_out and not res.still_running
            assert _procs_with(b"sleep\x00" + token.encode()) == []
            assert len(_procs_with(b"sleep\x001234.5")) == 1
            # (bash reports its killed jobs with the next command's output: "[2]  Killed  sleep ...")
            assert (await sh.run(RunCommand(command="echo ok"))).output.startswith("ok\n")

    aio(main())
    assert _procs_with(b"sleep\x001234.5") == []  # the session's close took it


@pytest.mark.parametrize("how", ["close", "exit", "interrupt"])
def test_a_session_close_restart_or_interrupt_kills_escaped_processes(
    aio, make_shells, tmp_path: Path, how: str
) -> None:
    token = {"close": "2345.25", "exit": "2345.5", "interrupt": "2345.75"}[how]
    probe = b"sleep\x00" + token.encode()

    async def main() -> None:
        async with make_shells(tmp_path) as m:
            m.create(SessionCreate(name="s"))
            sh = m.get("s")
            if how == "interrupt":
                await sh.run(RunCommand(command=_ESCAPES.format(t=token), no_output_timeout=0.5))
                await _until_all_started(probe)
                res = await sh.interrupt()
                assert res.interrupted and not res.still_running
            else:
                res = await sh.run(RunCommand(command=_ESCAPES.format(t=token).rsplit("\n", 1)[0]))
                assert res.exit_code == 0
                await _until_all_started(probe)  # left running on purpose: the command ended normally
                if how == "close":
                    m.close("s")
                else:
                    assert (await sh.run(RunCommand(command="exit 3"))).session_restarted
            assert _procs_with(probe) == []

    aio(main())


def test_delete_background_kills_what_it_left_running(server: ServerProcess) -> None:
    with RuntimeClient(server.url, API_KEY, timeout=30) as c:
        bg = c.start_background("(setsid sleep 3456.25 &); sleep 3456.25 & echo started")
        for _ in range(200):
            if len(_procs_with(b"sleep\x003456.25")) == 2:
                break
            asyncio.run(asyncio.sleep(0.02))
        assert len(_procs_with(b"sleep\x003456.25")) == 2
        c.kill_background(bg.id)
        assert _procs_with(b"sleep\x003456.25") == []
