"""A bounded schemathesis run over the real service's /openapi.json: no input makes it answer 5xx.

The fuzzing token may hold no sandbox (``max_sandboxes=0``), so a generated config that passes
validation and policy stops at the quota check and nothing is created on the engine; ids in paths are
random, so lifecycle calls answer 404. The admin token is used everywhere but on POST /v1/sandboxes,
a bad and no token everywhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_process import ServiceProcess

pytestmark = pytest.mark.docker

#: Examples per operation (bounded: the suite stays fast on 2 cores).
EXAMPLES = 40


def test_openapi_fuzz_finds_no_server_error(
    services: Callable[..., ServiceProcess], service_config: Callable[..., Path], docker_client: Any
) -> None:
    svc = services("--config", str(service_config()))
    with svc.client(svc.admin_token) as admin:
        r = admin.post("/v1/tokens", json={"name": "fuzz", "max_sandboxes": 0})
        fuzz_token = r.json()["token"]
    schema = schemathesis.openapi.from_url(svc.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert {op.path for op in operations} >= {"/v1/sandboxes", "/v1/sandboxes/{id}", "/v1/tokens"}
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    before = len(docker_client.api.containers(all=True, filters={"label": "agentbox.service"}))

    for op in operations:
        if op.path == "/v1/events":
            continue  # an endless stream by design; covered by the docker tests
        if op.method.upper() == "DELETE" and op.path == "/v1/tokens/{name}":
            continue  # would revoke the tokens the run uses

        # The admin token too, except where it would really create sandboxes (it has no quota).
        choices = [fuzz_token, None, "abx_not-a-token"]
        if (op.method.upper(), op.path) != ("POST", "/v1/sandboxes"):
            choices.append(svc.admin_token)

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(), token=st.sampled_from(choices))
        def run(case: Any, token: str | None) -> None:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = case.call(base_url=svc.url, headers=headers)
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.body!r}: {response.status_code} "
                                f"{response.text[:300]}")

        run()
    assert failures == [], "\n".join(failures[:20])
    # The run reached past auth and validation: successes, refusals and not-founds all occurred.
    assert statuses[200] and statuses[401] and statuses[403] and statuses[404] and statuses[422], statuses
    print(dict(statuses))
    after = len(docker_client.api.containers(all=True, filters={"label": "agentbox.service"}))
    assert after == before
    assert svc.proc.poll() is None
