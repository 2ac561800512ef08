"""Stateful Python: one Jupyter kernel (ipykernel via jupyter_client), started on first use.

jupyter_client is imported only then, in a worker thread, so servers that never run Python never pay its
~0.3 s import. Messages are read with the async client (zmq poll on the event loop), not by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import queue
import re
import time
from collections.abc import Mapping
from typing import Any, Literal

from agentbox.errors import ConflictError, KernelUnavailableError
from agentbox.protocol import ErrorOutput, KernelStatus, PythonResult, RichOutput, StreamOutput

__all__ = ["PythonKernel"]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_START_TIMEOUT_S = 60.0
_INTERRUPT_GRACE_S = 5.0
# While a cell runs with no timeout, check this often that the kernel is still alive: a dead kernel
# would otherwise leave the request waiting forever. Only during execution; an idle kernel costs nothing.
_LIVENESS_CHECK_S = 5.0
_MIME_FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/svg+xml": "svg",
}


class PythonKernel:
    """The sandbox's Jupyter kernel: lazily started, one cell at a time, interruptible, restartable."""

    def __init__(self, cwd: str, state_dir: str, env: Mapping[str, str]) -> None:
        self._cwd = cwd
        self._state_dir = state_dir
        self._env = dict(env)
        self._km: Any = None
        self._kc: Any = None
        self._lock = asyncio.Lock()
        self._busy = False

    @property
    def running(self) -> bool:
        """True once a kernel was started (and not shut down)."""
        return self._km is not None

    async def _ensure_started(self) -> None:
        if self._km is not None:
            if await self._km.is_alive():
                return
            await self._discard()
        if importlib.util.find_spec("ipykernel") is None or importlib.util.find_spec("jupyter_client") is None:
            raise KernelUnavailableError(
                "stateful Python needs the 'jupyter_client' and 'ipykernel' packages next to the runtime "
                "server (pip install 'agentbox[server]'); use the shell to run python instead"
            )
        manager = await asyncio.to_thread(importlib.import_module, "jupyter_client.manager")
        km = manager.AsyncKernelManager(kernel_name="python3")
        km.connection_file = os.path.join(self._state_dir, f"kernel-{os.getpid()}.json")
        # Unix sockets in the private state dir rather than TCP ports any sandbox process could reach.
        km.transport = "ipc"
        km.ip = os.path.join(self._state_dir, "kernel-ipc")
        try:
            await km.start_kernel(cwd=self._cwd, env=self._env)
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=_START_TIMEOUT_S)
        except Exception as exc:  # any failure to launch means the same thing to the caller
            with contextlib.suppress(Exception):
                await km.shutdown_kernel(now=True)
            raise KernelUnavailableError(f"the Python kernel did not start: {type(exc).__name__}: {exc}") from exc
        pid = getattr(km.provisioner, "pid", None)
        if pid:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/oom_score_adj", "w") as f:
                f.write("1000")
        self._km, self._kc = km, kc

    async def _discard(self) -> None:
        km, kc, self._km, self._kc = self._km, self._kc, None, None
        if kc is not None:
            kc.stop_channels()
        if km is not None:
            with contextlib.suppress(Exception):  # already dead is fine: we are throwing it away
                await km.shutdown_kernel(now=True)

    async def run(self, code: str, timeout: float | None) -> PythonResult:
        """Run ``code``; on ``timeout`` interrupt the kernel and return what it produced."""
        if self._busy:
            raise ConflictError("the Python kernel is still running another cell; wait or restart it")
        async with self._lock:
            self._busy = True
            try:
                await self._ensure_started()
                return await self._execute(code, timeout)
            finally:
                self._busy = False

    async def _execute(self, code: str, timeout: float | None) -> PythonResult:
        kc = self._kc
        msg_id = kc.execute(code, store_history=True, allow_stdin=False)
        outputs: list[StreamOutput | RichOutput | ErrorOutput] = []
        status = "ok"
        deadline = time.monotonic() + timeout if timeout is not None else None
        interrupted = False
        while True:
            wait = _LIVENESS_CHECK_S if deadline is None else min(deadline - time.monotonic(), _LIVENESS_CHECK_S)
            try:
                msg = await kc.get_iopub_msg(timeout=max(wait, 0.0))
            except queue.Empty:
                if not await self._km.is_alive():
                    await self._discard()
                    raise KernelUnavailableError(
                        "the Python kernel died while running the cell; its state is lost and a new "
                        "kernel starts on the next call"
                    ) from None
                if deadline is None or time.monotonic() < deadline:
                    continue
                if interrupted:  # it ignored the interrupt: only a restart frees it
                    await self._discard()
                    outputs.append(StreamOutput(name="stderr", text="kernel did not stop on interrupt; restarted\n"))
                    return PythonResult(status="timeout", execution_count=None, outputs=outputs)
                await self._km.interrupt_kernel()
                interrupted, status = True, "timeout"
                deadline = time.monotonic() + _INTERRUPT_GRACE_S
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content.get("execution_state") == "idle":
                break
            output = _convert(kind, content)
            if output is None:
                continue
            last = outputs[-1] if outputs else None
            if isinstance(output, StreamOutput) and isinstance(last, StreamOutput) and last.name == output.name:
                last.text += output.text
            else:
                outputs.append(output)
            if isinstance(output, ErrorOutput) and status == "ok":
                status = "error"
        count = None
        with contextlib.suppress(queue.Empty):
            reply = await kc.get_shell_msg(timeout=_INTERRUPT_GRACE_S)
            while reply.get("parent_header", {}).get("msg_id") != msg_id:
                reply = await kc.get_shell_msg(timeout=_INTERRUPT_GRACE_S)
            count = reply["content"].get("execution_count")
        return PythonResult(status=status, execution_count=count, outputs=outputs)

    async def restart(self) -> KernelStatus:
        """Throw the kernel (and all its state) away and start a fresh one."""
        if self._busy:
            await self._km.interrupt_kernel()
        async with self._lock:
            await self._discard()
            await self._ensure_started()
            return self.status()

    def status(self) -> KernelStatus:
        """Whether a kernel runs, and its pid."""
        if self._km is None:
            return KernelStatus(running=False)
        return KernelStatus(running=True, pid=getattr(self._km.provisioner, "pid", None))

    async def close(self) -> None:
        """Shut the kernel down (server shutdown)."""
        await self._discard()


def _convert(kind: str, content: dict[str, Any]) -> StreamOutput | RichOutput | ErrorOutput | None:
    if kind == "stream":
        name: Literal["stdout", "stderr"] = "stderr" if content.get("name") == "stderr" else "stdout"
        return StreamOutput(name=name, text=content.get("text", ""))
    if kind in ("execute_result", "display_data"):
        data = content.get("data", {})
        fields = {field: data[mime] for mime, field in _MIME_FIELDS.items() if isinstance(data.get(mime), str)}
        return RichOutput(type="result" if kind == "execute_result" else "display", **fields)
    if kind == "error":
        return ErrorOutput(
            ename=content.get("ename", ""),
            evalue=content.get("evalue", ""),
            traceback=[_ANSI.sub("", line) for line in content.get("traceback", [])],
        )
    return None
