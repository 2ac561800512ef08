"""Hypothesis through a real server for every path, cwd, env and command field (issue 11, "Suites to add").

Each generated value goes into one field of one request, as raw JSON (so NUL bytes and lone surrogates
arrive as JSON escapes, exactly as any client can send them) or in the query string. The answer must be
a 2xx, or a 4xx ``{code, message}`` that names the field (or, for a well-formed path the file service
could not use, a not_found/file_error about it); never a 5xx. And after every answer, the next request on
the same keep-alive connection must succeed.

Bounded and reproducible (derandomized). What runs is confined to the test: commands only print their
(quoted) text, paths are moved under the server's work dir, sessions and background commands are removed.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_process import API_KEY, ServerProcess, start_server, stop_server

EXAMPLES = 120

# Text as hostile as JSON allows: any code point (lone surrogates included), NUL, '=', '/', '..'.
_hostile_text = st.text(
    alphabet=st.one_of(
        st.characters(codec=None, exclude_categories=()),
        st.sampled_from(["\x00", "=", "/", ".", "\n", "~", "\udcff", "\ud800", " ", "$", "é"]),
    ),
    max_size=40,
)
_deep_path = st.integers(min_value=1, max_value=3000).map(lambda n: "a/" * n)
_paths = st.one_of(_hostile_text, _deep_path, st.sampled_from(["", ".", "/", "~", "x" * 5000]))
_env = st.dictionaries(_hostile_text, _hostile_text, max_size=3)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own: the suite makes files and sessions the shared one must not see."""
    srv = start_server(tmp_path_factory.mktemp("fields-work"))
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def http(fuzz_server: ServerProcess) -> Iterator[httpx.Client]:
    """One client, one keep-alive connection, for every case and every follow-up request."""
    with httpx.Client(
        base_url=fuzz_server.url,
        headers={"X-Session-API-Key": API_KEY},
        timeout=60,
        limits=httpx.Limits(max_connections=1),
    ) as client:
        yield client


def _raw(body: dict[str, Any]) -> bytes:
    # ensure_ascii: NUL and lone surrogates travel as \\u escapes, valid JSON text in every byte.
    return json.dumps(body, ensure_ascii=True).encode()


def _confine(path: str, work: str) -> str:
    return work + "/" + path.lstrip("/").replace("..", "._")


def _check(http: httpx.Client, resp: httpx.Response, field: str) -> None:
    assert resp.status_code < 500, f"{resp.status_code}: {resp.text[:300]}"
    if resp.status_code >= 400:
        body = resp.json()
        assert set(body) == {"code", "message"}, body
        about_path = field in ("path", "cwd") and body["code"] in ("not_found", "file_error")
        assert field in body["message"] or about_path, f"{field} not named: {body}"
    # The next, unrelated request on the same connection works.
    assert http.get("/sessions").status_code == 200


_FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def _run(strategy: st.SearchStrategy[Any], case: Callable[[Any], None]) -> None:
    @_FUZZ
    @given(strategy)
    def run(value: Any) -> None:
        case(value)

    run()


@pytest.mark.parametrize(
    ("method", "url", "extra"),
    [
        ("POST", "/files/read", {}),
        ("POST", "/files/list", {}),
        ("POST", "/files/write", {"content": "x"}),
        ("POST", "/files/edit", {"command": "view"}),
        ("GET", "/files/download", None),
    ],
)
def test_path_fields(
    http: httpx.Client, fuzz_server: ServerProcess, method: str, url: str, extra: dict[str, str] | None
) -> None:
    work = str(fuzz_server.work_dir)

    def case(path: str) -> None:
        where = _confine(path, work)
        if extra is None:
            resp = http.request(method, f"{url}?path={quote(where, safe='')}")
        else:
            resp = http.request(method, url, content=_raw({"path": where, **extra}))
        _check(http, resp, "path")

    _run(_paths, case)


def test_cwd_and_env_fields_of_sessions(http: httpx.Client, fuzz_server: ServerProcess) -> None:
    work = str(fuzz_server.work_dir)
    counter = iter(range(10**6))

    def case(value: tuple[str | None, dict[str, str]]) -> None:
        cwd, env = value
        body: dict[str, Any] = {"name": f"f{next(counter)}", "env": env}
        if cwd is not None:
            body["cwd"] = _confine(cwd, work)
        resp = http.post("/sessions", content=_raw(body))
        _check(http, resp, "cwd" if cwd is not None and "cwd" in resp.text else "env")
        if resp.status_code == 200:
            assert http.delete(f"/sessions/{body['name']}").status_code == 200

    _run(st.tuples(st.one_of(st.none(), _paths), _env), case)


def test_cwd_env_and_command_fields_of_background(http: httpx.Client, fuzz_server: ServerProcess) -> None:
    work = str(fuzz_server.work_dir)

    def case(value: tuple[str | None, dict[str, str], str]) -> None:
        cwd, env, text = value
        body: dict[str, Any] = {"command": "printf %s " + shlex.quote(text), "env": env}
        if cwd is not None:
            body["cwd"] = _confine(cwd, work)
        resp = http.post("/background", content=_raw(body))
        named = next((f for f in ("cwd", "env", "command") if f in resp.text), "command")
        _check(http, resp, named)
        if resp.status_code == 200:
            assert http.delete(f"/background/{resp.json()['id']}").status_code == 200

    _run(st.tuples(st.one_of(st.none(), _paths), _env, _hostile_text), case)


def test_command_field_of_run(http: httpx.Client) -> None:
    def case(text: str) -> None:
        command = "printf %s " + shlex.quote(text)
        resp = http.post("/sessions/default/run", content=_raw({"command": command, "timeout": 30}))
        _check(http, resp, "command")
        if resp.status_code == 200:
            assert resp.json()["exit_code"] == 0

    _run(_hostile_text, case)
