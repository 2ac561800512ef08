"""OpenHands' own V0 client driving a runtime on agentbox: run with OpenHands' Python, configured only by
environment (RUNTIME=remote, SANDBOX_REMOTE_RUNTIME_API_URL, SANDBOX_API_KEY, the runtime image).

``python client_scenario.py STEP`` runs one step and prints one JSON line of what it saw (prefixed with
``RESULT ``); the test asserts on it. Steps: ``main`` (connect, echo, cd state, exit code, timeout + C-c,
files, IPython, copy in and out, wrong session key, close = pause), ``reattach`` (the same session id:
resumed, shell state kept, then closed with keep-alive off = stopped), ``wrong-key`` (connect refused),
``bench`` (connect to first echo, then echo round trips; bench/bench_openhands.py), ``launch`` (what
``RemoteRuntime`` would post to ``/start``, computed by its own code: the test's pool profile), ``pooled``
(connect, echo, and a web app on a work port reached through ``work_hosts``), ``docker-bench`` (the bench
step on OpenHands' own local ``DockerRuntime``, for comparison; needs the engine's socket).
This file is not a test module: it needs openhands-ai, which only the OpenHands image has.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import zipfile

from openhands.core.config import load_openhands_config
from openhands.events import EventStream
from openhands.events.action import (
    CmdRunAction,
    FileEditAction,
    FileReadAction,
    FileWriteAction,
    IPythonRunCellAction,
)
from openhands.events.event import FileEditSource
from openhands.llm.llm_registry import LLMRegistry
from openhands.runtime.impl.remote.remote_runtime import RemoteRuntime
from openhands.runtime.plugins import AgentSkillsRequirement, JupyterRequirement
from openhands.storage import get_file_store
from openhands.utils.async_utils import call_async_from_sync


def runtime(sid: str) -> RemoteRuntime:
    config = load_openhands_config(set_logging_levels=False)
    store = get_file_store("memory")
    rt = RemoteRuntime(
        config=config, event_stream=EventStream(sid, store), llm_registry=LLMRegistry(config), sid=sid,
        plugins=[AgentSkillsRequirement(), JupyterRequirement()], headless_mode=True,
    )
    call_async_from_sync(rt.connect)
    return rt


def run(rt: RemoteRuntime, command: str, timeout: float | None = 60, **kwargs: object) -> dict[str, object]:
    action = CmdRunAction(command=command, **kwargs)
    if timeout is not None:
        action.set_hard_timeout(timeout)
    obs = rt.run_action(action)
    meta = getattr(obs, "metadata", None)
    return {"content": obs.content, "exit_code": getattr(meta, "exit_code", None),
            "cwd": getattr(meta, "working_dir", None), "suffix": getattr(meta, "suffix", ""),
            "type": type(obs).__name__}


def main_step(sid: str) -> dict[str, object]:
    rt = runtime(sid)
    out: dict[str, object] = {"runtime_id": rt.runtime_id, "url": rt.runtime_url}
    out["echo"] = run(rt, "echo hello-from-openhands")
    run(rt, "mkdir -p /workspace/sub && cd /workspace/sub")
    out["pwd"] = run(rt, "pwd")
    out["exit"] = run(rt, "bash -c 'exit 3'")
    out["timeout"] = run(rt, "sleep 120", timeout=3)
    out["ctrl_c"] = run(rt, "C-c", timeout=10, is_input=True)
    out["after"] = run(rt, "echo recovered")
    rt.run_action(FileWriteAction(path="/workspace/a.txt", content="hello world\n"))
    out["read"] = rt.run_action(FileReadAction(path="/workspace/a.txt")).content
    edit = FileEditAction(path="/workspace/a.txt", command="str_replace", old_str="hello", new_str="bye",
                          impl_source=FileEditSource.OH_ACI)
    out["edit"] = rt.run_action(edit).content
    out["edited"] = run(rt, "cat /workspace/a.txt")["content"]
    out["ipython"] = rt.run_action(IPythonRunCellAction(code="x = 41 + 1\nprint(x)")).content
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "payload.txt")
        with open(src, "w") as f:
            f.write("copied in\n")
        rt.copy_to(src, "/workspace/in")
        out["copied"] = run(rt, "cat /workspace/in/payload.txt")["content"]
        out["listed"] = rt.list_files("/workspace")
        archive = rt.copy_from("/workspace/in")
        with zipfile.ZipFile(archive) as z:
            out["copied_out"] = {n: z.read(n).decode() for n in z.namelist() if not n.endswith("/")}
    # A wrong session key is refused by the sandbox URL (the client sees an error, not a result).
    right = rt.session.headers["X-Session-API-Key"]
    rt.session.headers["X-Session-API-Key"] = "wrong"
    try:
        run(rt, "echo should-not-run")
        out["wrong_session_key"] = "accepted"
    except Exception as exc:
        out["wrong_session_key"] = f"{type(exc).__name__}: {exc}"[:300]
    rt.session.headers["X-Session-API-Key"] = right
    rt.close()  # keep_runtime_alive + pause_closed_runtimes: /pause
    return out


def reattach_step(sid: str) -> dict[str, object]:
    rt = runtime(sid)  # /sessions/{sid} says paused: /resume, then the readiness poll
    out: dict[str, object] = {"runtime_id": rt.runtime_id, "pwd": run(rt, "pwd"), "echo": run(rt, "echo again")}
    rt.config.sandbox.keep_runtime_alive = False
    rt.close()  # /stop
    return out


def bench_step(sid: str) -> dict[str, object]:
    """connect() -> first echo (a cold start: nothing exists for ``sid``), then echo round trips."""
    started = time.perf_counter()
    rt = runtime(sid)
    run(rt, "echo first")
    cold = time.perf_counter() - started
    rounds = []
    for _ in range(int(os.environ.get("BENCH_ROUNDS", "20"))):
        t = time.perf_counter()
        run(rt, "echo hi")
        rounds.append(time.perf_counter() - t)
    rt.config.sandbox.keep_runtime_alive = False
    rt.close()
    return {"connect_to_first_echo_s": cold, "echo_round_trip_s": rounds}


def launch_step(sid: str) -> dict[str, object]:
    """The launch part of the ``/start`` body RemoteRuntime posts (remote_runtime.py ``_start_runtime``)."""
    config = load_openhands_config(set_logging_levels=False)
    rt = RemoteRuntime(
        config=config, event_stream=EventStream(sid, get_file_store("memory")), llm_registry=LLMRegistry(config),
        sid=sid, plugins=[AgentSkillsRequirement(), JupyterRequirement()], headless_mode=True,
    )  # not connected: nothing is posted
    environment: dict[str, str] = {}
    if config.debug or os.environ.get("DEBUG", "false").lower() == "true":
        environment["DEBUG"] = "true"
    environment.update(config.sandbox.runtime_startup_env_vars)
    return {"image": config.sandbox.runtime_container_image, "working_dir": "/openhands/code/",
            "command": rt.get_action_execution_server_startup_command(), "environment": environment}


def pooled_step(sid: str) -> dict[str, object]:
    """connect() and a first echo, then a web app on the first work port, fetched through its work_hosts URL
    (with the token, as a user with it would), then stop."""
    import httpx

    started = time.perf_counter()
    rt = runtime(sid)
    out: dict[str, object] = {"echo": run(rt, "echo from-the-pool"), "runtime_id": rt.runtime_id}
    out["connect_to_first_echo_s"] = time.perf_counter() - started
    hosts = {port: url for url, port in rt.web_hosts.items()}
    out["web_hosts"] = rt.web_hosts
    port = min(hosts)
    run(rt, "mkdir -p /tmp/site && echo served-from-a-work-port > /tmp/site/hello.txt")
    run(rt, f"cd /tmp/site && nohup python3.13 -m http.server {port} --bind 0.0.0.0 > /tmp/web.log 2>&1 &")
    token = os.environ["SANDBOX_API_KEY"]
    answer = None
    for _ in range(100):  # until the app listens (bounded by count)
        answer = httpx.get(hosts[port] + "hello.txt", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        if answer.status_code == 200:
            break
        time.sleep(0.2)
    assert answer is not None
    out["work_port"] = {"status": answer.status_code, "body": answer.text[:300]}
    rt.config.sandbox.keep_runtime_alive = False
    rt.close()
    return out


def docker_bench_step(sid: str) -> dict[str, object]:
    """The bench step on OpenHands' own DockerRuntime: the same image (SANDBOX_RUNTIME_CONTAINER_IMAGE, so
    nothing is built), its containers labelled with BENCH_LABELS (JSON) through docker_runtime_kwargs."""
    from openhands.runtime.impl.docker.docker_runtime import DockerRuntime

    config = load_openhands_config(set_logging_levels=False)
    config.sandbox.docker_runtime_kwargs = {"labels": json.loads(os.environ["BENCH_LABELS"])}
    started = time.perf_counter()
    rt = DockerRuntime(
        config=config, event_stream=EventStream(sid, get_file_store("memory")), llm_registry=LLMRegistry(config),
        sid=sid, plugins=[AgentSkillsRequirement(), JupyterRequirement()], headless_mode=True,
    )
    try:
        call_async_from_sync(rt.connect)
        run(rt, "echo first")
        cold = time.perf_counter() - started
        rounds = []
        for _ in range(int(os.environ.get("BENCH_ROUNDS", "20"))):
            t = time.perf_counter()
            run(rt, "echo hi")
            rounds.append(time.perf_counter() - t)
    finally:
        rt.close()
    return {"connect_to_first_echo_s": cold, "echo_round_trip_s": rounds}


def wrong_key_step(sid: str) -> dict[str, object]:
    try:
        runtime(sid)
    except Exception as exc:
        return {"refused": f"{type(exc).__name__}: {exc}"[:300]}
    return {"refused": None}


if __name__ == "__main__":
    step, sid = sys.argv[1], sys.argv[2]
    steps = {"main": main_step, "reattach": reattach_step, "wrong-key": wrong_key_step, "bench": bench_step,
             "launch": launch_step, "pooled": pooled_step, "docker-bench": docker_bench_step}
    result = steps[step](sid)
    print("RESULT " + json.dumps(result), flush=True)
