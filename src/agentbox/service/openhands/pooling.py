"""Warm pools of OpenHands runtimes: ``[[pool]]`` entries with an ``[pool.openhands]`` table.

OpenHands' ``/start`` posts an image, an argv, a working directory, an environment and a session id. Only
the session id varies between the conversations of one OpenHands installation (V0 ``RemoteRuntime``: the
argv follows its configuration, ``environment`` is ``runtime_startup_env_vars``), and OpenHands' servers
never read it: it lives in the service's record alone. So a runtime can be started before anyone asks:
the pool's runtime runs the launch, its server boots (V0: the action server makes its user, starts tmux,
Jupyter and the agent skills), and a ``/start`` that posts exactly that launch, with limits equal to the
profile's, takes it in one store transaction (:meth:`WarmPools.match_launch`) and gets it already ready.

The session key needs nothing per session either: like every sandbox's, it is made with the sandbox, put
in the container as a file before start (read into the server's environment and deleted by
:data:`~.runtimes.LAUNCHER`), and shown to no one until the runtime has an owner, who then gets it.

What cannot be pre-warmed (such starts match no pool and start cold, as without a pool):

* an ``environment`` that varies per conversation: V1's app server with a public ``web_url`` puts the
  sandbox id into ``OH_WEBHOOKS_0_BASE_URL``; per-conversation ``runtime_startup_env_vars``;
* the operator's volumes (bind mounts are fixed before the owner is known: pool profiles have none);
* whatever OpenHands does after ``connect()`` (environment variables, git config, the repository): it
  does it over the sandbox URL in every case.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from agentbox.backends.base import SandboxState
from agentbox.backends.spec import foreign_server_spec, spec_from_config
from agentbox.config import SandboxConfig
from agentbox.errors import AgentboxError, ConfigError, SandboxStartError
from agentbox.service.labels import SERVICE_POOL
from agentbox.service.openhands.models import Launch
from agentbox.service.openhands.runtimes import (
    LABEL_KIND,
    LAUNCHER,
    OPENHANDS_PORT,
    discard,
    kind_of,
    launch_container,
    probe,
)

if TYPE_CHECKING:
    from agentbox.service.sandboxes import SandboxManager

__all__ = ["make_pooled_runtime", "pool_launch"]

#: Seconds a pooled runtime's server may take to answer (V0 boots Jupyter: tens of seconds on 2 cores).
READY_TIMEOUT = 300.0
#: Pauses between liveness probes of a booting server: short at first, then at most a second. A foreign
#: server has no ready line agentbox could wait on; the first answer ends the wait.
PROBE_PAUSES = (0.1, 0.2, 0.5, 1.0)


def pool_launch(raw: Any, config_values: Mapping[str, Any], labels: Mapping[str, str], at: str) -> Launch:
    """The launch of a ``[pool.openhands]`` table; ConfigError (prefixed with ``at``) for anything that
    could never serve a ``/start``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{at}: openhands must be a table (image, command, working_dir, environment)")
    try:
        launch = Launch.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'openhands'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{at}: openhands: {problems}") from None
    if labels:
        raise ConfigError(f"{at}: an OpenHands pool has no labels (its runtimes carry OpenHands' session labels)")
    given = config_values.get("runtime_container_image")
    if given and given != launch.image:
        raise ConfigError(f"{at}: runtime_container_image {given!r} differs from openhands.image {launch.image!r}")
    try:
        config = SandboxConfig.model_validate({**config_values, "runtime_container_image": launch.image})
        # The same checks as a cold start's: a network the service reaches the server on, no egress policy.
        foreign_server_spec(
            spec_from_config(config, image=launch.image, sandbox_id="pool", labels={}),
            image=launch.image, command=launch.command, entrypoint=LAUNCHER, port=OPENHANDS_PORT,
            environment=launch.environment, working_dir=launch.working_dir,
        )
    except (ValidationError, AgentboxError) as exc:
        raise ConfigError(f"{at}: {exc}") from None
    return launch


async def make_pooled_runtime(manager: SandboxManager, pool: str, config: SandboxConfig, launch: Launch) -> None:
    """Make one ready runtime for ``pool`` (no owner yet): started, and counted as ready only once its server
    answers. On failure nothing is left and it raises."""
    labels: dict[str, str] = {LABEL_KIND: kind_of(list(launch.command))}
    row = manager._new_row("", config, labels, pool=pool)
    store = manager.store
    await store.run(store.reserve_sandbox, row, lambda usage: None)
    try:
        endpoint = await launch_container(manager, row, config, launch, labels, {SERVICE_POOL: pool})
        deadline = time.monotonic() + READY_TIMEOUT
        pauses = iter(PROBE_PAUSES)
        while not await probe(endpoint, labels[LABEL_KIND]):
            info = await asyncio.get_running_loop().run_in_executor(None, manager.backend.find, row.id)
            if info.state is not SandboxState.RUNNING:
                raise SandboxStartError(f"pool {pool}: the runtime's server exited before it answered")
            if time.monotonic() > deadline:
                raise SandboxStartError(f"pool {pool}: the runtime's server did not answer in {READY_TIMEOUT:.0f} s")
            await asyncio.sleep(next(pauses, PROBE_PAUSES[-1]))
        await store.run(store.update_sandbox, row.id, state="pooled")
    except BaseException:
        await discard(manager, row)
        raise
