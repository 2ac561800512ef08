"""The user-facing sandbox handle: a started container paired with the client for its runtime server.

::

    from agentbox import Sandbox

    with Sandbox(volumes=["./src:/workspace", "/data:/data:ro"]) as sb:
        r = sb.run("python -c 'print(42)'")
        sb.write_file("notes.txt", "hi")

Through a control plane (``agentbox serve``) the same handle works remotely: ``Sandbox(server=URL,
token=...)``, or ``AGENTBOX_SERVER`` and ``AGENTBOX_TOKEN`` in the environment. The service then creates,
pauses and removes the sandbox (:class:`~agentbox.backends.service.ServiceBackend`), and every runtime
call goes through its proxy with the token; this process never sees a container or a session key.

Lifecycle is explicit (:class:`SandboxState`): ``__init__`` does no I/O (the configuration is resolved,
and the engine contacted, by :meth:`Sandbox.start` / ``__enter__``), and nothing is cleaned up in
``__del__``: :meth:`Sandbox.close` (or leaving the ``with`` block) removes the container and what agentbox
created for it, unless ``keep_runtime_alive``. A sandbox outlives its process only on purpose; orphans
of dead processes are removed by :func:`reap`.

:class:`AsyncSandbox` is the same handle for asyncio: lifecycle calls run the one implementation here in a
worker thread, runtime calls go through :class:`~agentbox.client.AsyncRuntimeClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import socket
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from agentbox import __version__
from agentbox.backends import get_backend, get_service_backend
from agentbox.backends.base import Backend, Endpoint, Progress, SandboxInfo, SandboxState
from agentbox.backends.labels import LABELS, check_user_labels
from agentbox.backends.service import RemoteSandbox, ServiceBackend
from agentbox.backends.service.backend import OPERATOR_FIELDS, settings_json
from agentbox.backends.spec import SERVER_PORT, spec_from_config
from agentbox.backends.state import SandboxRecord, StateStore
from agentbox.config import FIELDS, SandboxConfig, resolve_config
from agentbox.errors import (
    AgentboxError,
    ConfigError,
    EngineUnavailableError,
    ImageNotFoundError,
    RuntimeServerError,
    SandboxError,
    SandboxNotFoundError,
)

if TYPE_CHECKING:
    from agentbox.client import AsyncRuntimeClient, RuntimeClient
    from agentbox.protocol import (
        BackgroundInfo,
        BackgroundOutput,
        CommandResult,
        DirListing,
        FileContent,
        FileWritten,
        OutputChunk,
        PythonResult,
        StreamEnd,
        UploadResult,
    )

__all__ = ["AsyncSandbox", "Sandbox", "SandboxInfo", "SandboxState", "reap"]

#: The URL of the agentbox service to use when no ``server`` (or ``backend``) is given.
SERVER_ENV = "AGENTBOX_SERVER"
#: The bearer token for that service when no ``token`` is given.
TOKEN_ENV = "AGENTBOX_TOKEN"

#: Seconds a new sandbox's server gets to report ready (first start of a cold image, gVisor...).
DEFAULT_START_TIMEOUT = 60.0
#: Seconds a liveness probe of a possibly stale server may take (refresh, reconnect).
PROBE_TIMEOUT = 5.0


def _new_id() -> str:
    return secrets.token_hex(6)


def _config_json(config: SandboxConfig) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    data["volumes"] = [m.spec() for m in config.volumes]  # parses back exactly, unlike the dataclass dump
    return data


def _merge(config: SandboxConfig, settings: Mapping[str, Any]) -> SandboxConfig:
    values = {name: getattr(config, name) for name in config.model_fields_set}
    values.update(settings)
    return SandboxConfig.model_validate(values)


def _backend_for(server: str | None, token: str | None) -> Backend:
    """The backend of a service at ``server`` (or ``$AGENTBOX_SERVER``), else the local Docker one."""
    server = server or os.environ.get(SERVER_ENV) or None
    if server is None:
        return get_backend()
    return get_service_backend(server, token or os.environ.get(TOKEN_ENV, ""))


def _env_script(env: Mapping[str, str]) -> bytes:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items()).encode()


class Sandbox:
    """One sandbox: a container on a Docker engine and the client for the runtime server inside.

    Any :class:`~agentbox.config.SandboxConfig` field can be given as a keyword (``volumes``, ``user_id``,
    ``network``...). Without ``config``, settings resolve like everywhere in agentbox: defaults <
    ``config_file`` (or ./config.toml) < ``SANDBOX_*`` environment < these keywords.

    ``labels`` are extra container labels (also put on networks and volumes created for it), e.g.
    ``{"agentbox.test": "1"}``. ``start_timeout`` bounds how long the server may take to get ready.

    ``server`` (default ``$AGENTBOX_SERVER``) and ``token`` (default ``$AGENTBOX_TOKEN``): make and use the
    sandbox through that agentbox service. Only the settings given here, in the config file or in
    ``SANDBOX_*`` variables are sent; the rest take the service's defaults, and :attr:`config` is the
    service's effective configuration once started. The service assigns the id (:attr:`id` changes on
    start), checks the configuration against its policy (a refusal is a ConfigError naming the rule),
    and bounds the start itself (``start_timeout`` is ignored).
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        config_file: str | os.PathLike[str] | None = None,
        labels: Mapping[str, str] | None = None,
        backend: Backend | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        allow_docker_socket: bool = False,
        progress: Progress | None = None,
        server: str | None = None,
        token: str | None = None,
        **settings: Any,
    ) -> None:
        unknown = sorted(set(settings) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown sandbox setting(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")
        if server is not None and backend is not None:
            raise ConfigError("give either server= (an agentbox service) or backend=, not both")
        if backend is None:
            server = server or os.environ.get(SERVER_ENV) or None
        if server is not None and allow_docker_socket:
            raise ConfigError("allow_docker_socket: the engine's socket is never handed out through the service")
        self._server = server
        self._token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        self._given: set[str] = set()
        self._config_arg = config
        self._config_file = config_file
        self._settings = dict(settings)
        self._config: SandboxConfig | None = None
        self._labels = check_user_labels(labels)
        self._backend = backend
        self._start_timeout = start_timeout
        self._allow_docker_socket = allow_docker_socket
        self._progress = progress
        self._id = _new_id()
        self._container_id: str | None = None
        self._key: str | None = None
        self._endpoint: Endpoint | None = None
        self._client: RuntimeClient | None = None
        self._state = SandboxState.NEW
        #: Why the sandbox is lost (the node that went down), once the engine said so.
        self._lost_reason: str | None = None
        self._lock = threading.RLock()

    # -- identity and state --------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The sandbox id (also its ``agentbox.sandbox`` label)."""
        return self._id

    @property
    def state(self) -> SandboxState:
        """Where this handle's sandbox is in its life."""
        return self._state

    @property
    def container_id(self) -> str | None:
        """The Docker container id, once created (through a service: the sandbox id, as clients never
        see containers)."""
        return self._container_id

    @property
    def config(self) -> SandboxConfig:
        """The effective configuration (resolved from file and environment on first use)."""
        if self._config is None:
            if self._config_arg is not None:
                self._config = _merge(self._config_arg, self._settings) if self._settings else self._config_arg
                self._given = set(self._config_arg.model_fields_set) | set(self._settings)
            else:
                resolved = resolve_config(config_file=self._config_file, overrides=self._settings)
                self._config = resolved.config
                # Where this host's swarm is (SANDBOX_SWARM_*, a config file) says nothing to a service,
                # which has its own engines: only an explicit argument for such a key is refused remotely.
                self._given = {
                    name for name, source in resolved.sources.items()
                    if source != "default" and (source == "argument" or name not in OPERATOR_FIELDS)
                }
        return self._config

    @property
    def backend(self) -> Backend:
        """The backend the sandbox runs on (the process-wide Docker backend by default; a
        :class:`~agentbox.backends.service.ServiceBackend` through a service)."""
        if self._backend is None:
            if self._server is not None:
                self._backend = get_service_backend(self._server, self._token)
            else:
                self._backend = get_backend(self.config.backend)
        return self._backend

    @property
    def _service(self) -> ServiceBackend | None:
        """The service this sandbox is made and reached through, or None for a local one."""
        backend = self.backend
        return backend if isinstance(backend, ServiceBackend) else None

    @property
    def url(self) -> str:
        """Base URL of the runtime server, as reachable from this process."""
        if self._endpoint is None:
            raise SandboxError(
                f"sandbox {self.id} is {self._state.value}: it has no server address", sandbox_id=self.id
            )
        return self._endpoint.url

    @property
    def uds(self) -> str | None:
        """Host path of the runtime server's Unix socket (``network="none"``, or ``runtime_binding_address``
        unset on a local engine: :attr:`url` is then only a placeholder, every request goes through this
        socket); None when it is reached over TCP."""
        return self._endpoint.uds if self._endpoint is not None else None

    @property
    def client(self) -> RuntimeClient:
        """The :class:`~agentbox.client.RuntimeClient` of the runtime server (made on first use)."""
        self._check_usable()
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from agentbox.client import RuntimeClient

                    assert self._key is not None
                    self._client = RuntimeClient(
                        self.url, self._key, timeout=self.config.timeout, uds=self.uds, sandbox_id=self.id,
                        auth=self._auth,
                    )
        return self._client

    @property
    def _auth(self) -> Literal["session-key", "bearer"]:
        """How runtime calls authenticate: the session key, or through a service its token (``_key``)."""
        return "bearer" if self._service is not None else "session-key"

    def _check_usable(self) -> None:
        if self._state is SandboxState.RUNNING:
            return
        if self._state is SandboxState.PAUSED:
            raise SandboxError(f"sandbox {self.id} is paused; call resume() first", sandbox_id=self.id)
        if self._state is SandboxState.NEW:
            raise SandboxError(
                f"sandbox {self.id} is not started; call start() or use `with Sandbox(...)`", sandbox_id=self.id
            )
        if self._state is SandboxState.LOST:
            raise SandboxError(f"sandbox {self.id} is lost: {self._lost_reason or 'its node went down'}",
                               sandbox_id=self.id)
        raise SandboxError(f"sandbox {self.id} is {self._state.value}", sandbox_id=self.id)

    def __repr__(self) -> str:
        where = ""
        if self._endpoint is not None:
            where = f" unix:{self._endpoint.uds}" if self._endpoint.uds else f" {self._endpoint.url}"
        return f"<Sandbox {self.id} {self._state.value}{where}>"

    # -- lifecycle -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _about(self) -> Iterator[None]:
        """Mark every agentbox error raised inside as being about this sandbox (traceback and cause kept)."""
        try:
            yield
        except AgentboxError as exc:
            # Through a service the id is the service's, known once it created the sandbox: a refused
            # create is about no sandbox, not about the placeholder id this handle had.
            remote = self._server is not None or isinstance(self._backend, ServiceBackend)
            if not remote or self._container_id is not None:
                exc.with_sandbox(self.id)
            raise

    @contextlib.contextmanager
    def _calling(self) -> Iterator[None]:
        """Around a call to the runtime server: its errors name this sandbox, and a call that lost its
        server is explained (see :meth:`_lost_call`)."""
        try:
            yield
        except AgentboxError as exc:
            replacement = self._lost_call(exc)
            if replacement is None:
                raise
            raise replacement from exc

    def _lost_call(self, exc: AgentboxError) -> AgentboxError | None:
        """After a runtime call failed with ``exc``: the error to raise instead, or None for ``exc`` itself.

        When the server did not answer (a lost connection) or failed as a whole (HTTP 500), the handle
        asks the engine (:meth:`refresh`) instead of staying "running" at a stale address. If the sandbox
        stopped, or the engine itself went away (dockerd restarting), the error says so; :meth:`start`
        recovers. Blocking (engine calls): async callers run it in a thread.
        """
        exc.with_sandbox(self.id)
        lost = type(exc) is SandboxError or (isinstance(exc, RuntimeServerError) and exc.code == "internal")
        if not lost or self._state is not SandboxState.RUNNING:
            return None
        try:
            state = self.refresh()
        except EngineUnavailableError as engine_gone:
            return SandboxError(
                f"the call failed ({exc}) and the Docker engine does not answer ({engine_gone}); once it is "
                "back, start() recovers the sandbox",
                sandbox_id=self.id,
            )
        except AgentboxError:
            return None
        if state is SandboxState.LOST:
            # Its node went down (Swarm): the error names the node, never a vague "stopped".
            why = self._lost_reason or "its node went down, and its processes and files with it"
            remedy = "; replace() gives a new one in its place" if self._service is not None else ""
            return SandboxError(f"the sandbox is lost: {why}{remedy}", sandbox_id=self.id)
        if state is SandboxState.PAUSED:
            # Through a service this is its idle policy (or another client) pausing it between calls.
            return SandboxError(
                f"the sandbox was paused behind this handle's back ({exc}); resume() continues it",
                sandbox_id=self.id,
            )
        if state is not SandboxState.RUNNING:
            return SandboxError(
                f"the sandbox is {state.value}: it stopped or restarted during the call ({exc}); "
                "start() recovers it",
                sandbox_id=self.id,
            )
        return None

    def start(self) -> Sandbox:
        """Create and start the sandbox and wait for its server (or restart a stopped one); returns self.

        On a handle that was running, the engine is asked first (:meth:`refresh`): a sandbox whose server
        went away (killed, container restarted, dockerd restarted) is started again and gets its key anew.
        On failure of a first start everything created for it is removed and the error says what failed.
        """
        with self._lock, self._about():
            if self._state is SandboxState.RUNNING:
                self.refresh()
                if self._state is SandboxState.RUNNING:
                    return self
            if self._state is SandboxState.STOPPED:
                self._restart()
                return self
            if self._state is not SandboxState.NEW:
                raise SandboxError(
                    f"sandbox {self.id} is {self._state.value} and cannot be started", sandbox_id=self.id
                )
            self._state = SandboxState.STARTING
            try:
                self._create_and_start()
            except BaseException:
                self._state = SandboxState.REMOVED
                raise
            self._state = SandboxState.RUNNING
            return self

    def refresh(self) -> SandboxState:
        """Ask the engine where the sandbox is now, and whether its server still answers here; returns the
        handle's state, updated.

        A handle whose container stopped, or whose server no longer answers at the address it had (the
        server was killed, the container was restarted and waits for its key, the engine restarted and
        published another port), becomes STOPPED: :meth:`start` then recovers it. A container removed
        behind the handle's back makes it REMOVED.
        """
        with self._lock, self._about():
            if self._container_id is None or self._state in (
                SandboxState.NEW, SandboxState.REMOVED, SandboxState.CLOSED
            ):
                return self._state
            try:
                info = self.backend.find(self.id)
            except SandboxNotFoundError:
                self._close_client()
                self._endpoint = None
                self._state = SandboxState.REMOVED
                return self._state
            engine_state = info.state
            self._lost_reason = info.reason if engine_state is SandboxState.LOST else None
            if engine_state is SandboxState.LOST:
                self._close_client()
                self._endpoint = None
                self._state = SandboxState.LOST
            elif engine_state is SandboxState.PAUSED:
                self._state = SandboxState.PAUSED
            elif engine_state is SandboxState.RUNNING and self._server_answers():
                self._state = SandboxState.RUNNING
            else:
                self._close_client()
                self._endpoint = None
                self._state = SandboxState.STOPPED
            return self._state

    def _server_answers(self) -> bool:
        """True when the runtime server answers, with this handle's key, where the engine says it is now."""
        from agentbox.client import RuntimeClient

        assert self._container_id is not None and self._key is not None
        try:
            endpoint = self.backend.endpoint(self._container_id)
        except AgentboxError:
            return False
        if self._endpoint is not None and endpoint != self._endpoint:
            self._close_client()  # e.g. another host port after an engine restart
        try:
            with RuntimeClient(
                endpoint.url, self._key, timeout=PROBE_TIMEOUT, uds=endpoint.uds, auth=self._auth
            ) as probe:
                probe.alive()
        except AgentboxError:
            return False
        self._endpoint = endpoint
        return True

    def _identity_labels(self, config: SandboxConfig) -> dict[str, str]:
        return {
            **self._labels,
            LABELS.SANDBOX: self.id,
            LABELS.OWNER_PID: str(os.getpid()),
            LABELS.OWNER_HOST: socket.gethostname(),
            LABELS.CREATED: datetime.now(timezone.utc).isoformat(timespec="seconds"),
            LABELS.VERSION: __version__,
            LABELS.KEEP_ALIVE: "1" if config.keep_runtime_alive else "0",
            LABELS.SERVER_PORT: str(SERVER_PORT),
        }

    def _secret_files(self, config: SandboxConfig) -> dict[str, tuple[bytes, int]]:
        assert self._key is not None
        # env.sh first: a container already waiting for its key (a restart) goes on as soon as the key
        # is there, and the archive is written in this order.
        files: dict[str, tuple[bytes, int]] = {}
        if config.env:
            files["env.sh"] = (_env_script(config.env), 0o600)
        files["session-key"] = (self._key.encode(), 0o600)
        return files

    def _create_and_start(self) -> None:
        config = self.config
        backend = self.backend
        if isinstance(backend, ServiceBackend):
            # The service creates, starts and cleans up after a failure; it assigns the id.
            settings = settings_json(config, sorted(self._given))
            self._adopt(backend.create_sandbox(settings, self._labels, self._progress), backend)
            return
        image = backend.resolve_image(config, self._progress)
        self._key = secrets.token_urlsafe(32)
        spec = spec_from_config(
            config,
            image=image,
            sandbox_id=self.id,
            labels=self._identity_labels(config),
            allow_docker_socket=self._allow_docker_socket,
        )
        store = self._store()
        try:
            try:
                self._container_id = backend.create(spec)
            except ImageNotFoundError:
                if config.runtime_container_image:
                    raise
                # The image cached for this process was removed meanwhile: make it again, once.
                image = backend.resolve_image(config, self._progress, refresh=True)
                self._container_id = backend.create(replace(spec, image=image))
            record = SandboxRecord(
                id=self.id,
                key=self._key,
                container_id=self._container_id,
                owner_pid=os.getpid(),
                owner_host=socket.gethostname(),
                config=_config_json(config),
            )
            store.save(record)
            self._endpoint = backend.start(self._container_id, self._secret_files(config), timeout=self._start_timeout)
            if self._endpoint.via == "host":
                record.url = self._endpoint.url
                store.save(record)
        except BaseException as exc:
            # Say which sandbox failed (its id is in the labels of anything that might be left over).
            if isinstance(exc, AgentboxError):
                exc.with_sandbox(self.id)
            with contextlib.suppress(AgentboxError):  # the original error matters more than a cleanup one
                self._discard(purge_volumes=True)
            raise

    def _adopt(self, remote: RemoteSandbox, service: ServiceBackend) -> None:
        """Become the handle of ``remote``: its id, its effective configuration, the service's proxy."""
        info = remote.info
        self._id = info.id
        self._container_id = info.id
        self._config = remote.config
        self._key = service.token
        reachable = info.state in (SandboxState.RUNNING, SandboxState.PAUSED)
        self._endpoint = service.endpoint(info.id) if reachable else None

    def _restart(self) -> None:
        assert self._container_id is not None
        self._close_client()
        self._state = SandboxState.STARTING
        service = self._service
        if service is not None:
            try:
                service.resume(self._container_id)  # starts a stopped one, the service hands its key over
            except BaseException:
                self._state = SandboxState.STOPPED
                raise
            self._endpoint = service.endpoint(self._container_id)
            self._state = SandboxState.RUNNING
            return
        try:
            # The server deleted its key file when it first read it: hand the key over again.
            self._endpoint = self.backend.start(
                self._container_id, self._secret_files(self.config), timeout=self._start_timeout, restart=True
            )
        except BaseException:
            self._state = SandboxState.STOPPED
            raise
        self._state = SandboxState.RUNNING

    def _store(self) -> StateStore:
        return self.backend.store

    def _discard(self, *, purge_volumes: bool = False) -> None:
        """Remove the container, what agentbox created for it, and the state file."""
        self._close_client()
        if self._container_id is not None:
            self.backend.remove(self._container_id, purge_volumes=purge_volumes)
        if self._service is None:
            self._store().delete(self.id)
        self._endpoint = None

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def pause(self) -> None:
        """Freeze the sandbox (``docker pause``): running processes and shell state survive resume()."""
        with self._lock, self._about():
            self._check_usable()
            assert self._container_id is not None
            self.backend.pause(self._container_id)
            self._state = SandboxState.PAUSED

    def resume(self) -> None:
        """Thaw a paused sandbox."""
        with self._lock, self._about():
            if self._state is not SandboxState.PAUSED:
                raise SandboxError(f"sandbox {self.id} is {self._state.value}, not paused", sandbox_id=self.id)
            assert self._container_id is not None
            self.backend.resume(self._container_id)
            self._state = SandboxState.RUNNING

    def stop(self, *, timeout: float = 5) -> None:
        """Stop the container (its processes end; files stay); start() runs it again."""
        with self._lock, self._about():
            if self._state not in (SandboxState.RUNNING, SandboxState.PAUSED):
                raise SandboxError(f"sandbox {self.id} is {self._state.value}", sandbox_id=self.id)
            assert self._container_id is not None
            self._close_client()
            self.backend.stop(self._container_id, timeout=timeout)
            self._endpoint = None
            self._state = SandboxState.STOPPED

    def remove(self) -> None:
        """Remove the container and everything agentbox created for it (idempotent)."""
        with self._lock, self._about():
            if self._state is SandboxState.REMOVED:
                return
            self._discard()
            self._state = SandboxState.REMOVED

    def close(self) -> None:
        """Remove the sandbox, or with ``keep_runtime_alive`` just let go of it (idempotent)."""
        with self._lock, self._about():
            if self._state in (SandboxState.REMOVED, SandboxState.CLOSED):
                return
            if self._state is SandboxState.NEW:
                self._state = SandboxState.CLOSED
                return
            if self.config.keep_runtime_alive:
                self._close_client()
                self._state = SandboxState.CLOSED
                return
            self.remove()

    def replace(self) -> None:
        """Through a service: a new sandbox in place of this lost one (its node went down), from the same
        configuration and labels, placed anew; the lost one is removed and this handle becomes the new
        one's (a new id). A SandboxError when the sandbox is not lost: a live one would lose its state."""
        with self._lock, self._about():
            service = self._service
            if service is None:
                raise ConfigError(
                    "replace() is done by an agentbox service (server=...); here, remove() the lost sandbox "
                    "and start a new one"
                )
            if self._container_id is None:
                raise SandboxError(f"sandbox {self.id} is not started", sandbox_id=self.id)
            remote = service.replace_sandbox(self._container_id)
            self._close_client()
            self._adopt(remote, service)
            self._lost_reason = None
            self._state = SandboxState.RUNNING

    def detach(self) -> None:
        """Let go of this handle and leave the sandbox as it is (reattach later with :meth:`connect`)."""
        with self._lock:
            if self._state not in (SandboxState.REMOVED, SandboxState.CLOSED):
                self._close_client()
                self._state = SandboxState.CLOSED

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def logs(self, tail: int | None = None) -> str:
        """The container's log (the runtime server's own output), the last ``tail`` lines if given."""
        if self._container_id is None:
            raise SandboxError(f"sandbox {self.id} has no container", sandbox_id=self.id)
        with self._about():
            return self.backend.logs(self._container_id, tail=tail)

    # -- finding sandboxes ---------------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        backend: Backend | None = None,
        take_ownership: bool = True,
        server: str | None = None,
        token: str | None = None,
    ) -> Sandbox:
        """Reattach to a running (or paused, or stopped) sandbox by id, e.g. after this process restarted.

        Needs the state file the starting process wrote (same user, same host). With ``take_ownership``
        (the default) the handle then owns the sandbox: :func:`reap` spares it while this process lives,
        and close() removes it unless it is keep-alive. Tools that only act on someone else's sandbox
        (``agentbox exec``) pass False and let go with :meth:`detach`.

        Through a service (``server``/``token``, or ``$AGENTBOX_SERVER``/``$AGENTBOX_TOKEN``) any process
        holding the token that created the sandbox (or an admin token) reattaches; there is no state file.
        """
        if server is not None and backend is not None:
            raise ConfigError("give either server= (an agentbox service) or backend=, not both")
        backend = backend or _backend_for(server, token)
        if isinstance(backend, ServiceBackend):
            return cls._connect_remote(sandbox_id, backend)
        try:
            info = backend.find(sandbox_id)
        except AgentboxError as exc:
            exc.with_sandbox(sandbox_id)
            raise
        store = backend.store
        record = store.load(info.id)
        if record is None:
            raise SandboxError(
                f"sandbox {info.id} exists but its session key is not here ({store.path(info.id)} is missing): "
                "only the user who started it, on the host that started it, can reattach",
                sandbox_id=info.id,
            )
        config = SandboxConfig.model_validate(record.config)
        sandbox = cls(config, backend=backend)
        sandbox._id = info.id
        sandbox._container_id = info.container_id
        sandbox._key = record.key
        sandbox._state = info.state if info.state is not SandboxState.NEW else SandboxState.STOPPED
        with sandbox._about():
            if sandbox._state is SandboxState.PAUSED:
                sandbox._endpoint = backend.endpoint(info.container_id)
            elif sandbox._state is SandboxState.RUNNING and not sandbox._server_answers():
                # Running, but no server answers: restarted behind our back (`docker restart`, an engine
                # restart) and waiting for its key, or its server died. Hand the key over again.
                sandbox._state = SandboxState.STOPPED
                sandbox._restart()
            if take_ownership:
                record.owner_pid = os.getpid()
                record.owner_host = socket.gethostname()
                store.save(record)
        return sandbox

    @classmethod
    def _connect_remote(cls, sandbox_id: str, service: ServiceBackend) -> Sandbox:
        try:
            remote = service.describe(sandbox_id)
        except AgentboxError as exc:
            exc.with_sandbox(sandbox_id)
            raise
        state = remote.info.state
        if state is SandboxState.STARTING:
            raise SandboxError(f"sandbox {remote.info.id} is still being created", sandbox_id=remote.info.id)
        if state is SandboxState.REMOVED:
            raise SandboxNotFoundError(f"sandbox {remote.info.id} is being removed", sandbox_id=remote.info.id)
        sandbox = cls(remote.config, backend=service)
        sandbox._adopt(remote, service)
        sandbox._state = state
        sandbox._lost_reason = remote.info.reason if state is SandboxState.LOST else None
        return sandbox

    @classmethod
    def list(
        cls,
        all_owners: bool = True,
        *,
        backend: Backend | None = None,
        server: str | None = None,
        token: str | None = None,
    ) -> list[SandboxInfo]:
        """Sandboxes on the engine; ``all_owners=False``: only those this user can reattach to from here.

        Through a service: the sandboxes the token may see (its own; every one for an admin token), which
        are the ones it can reattach to, whatever ``all_owners`` says."""
        if server is not None and backend is not None:
            raise ConfigError("give either server= (an agentbox service) or backend=, not both")
        backend = backend or _backend_for(server, token)
        if all_owners or isinstance(backend, ServiceBackend):
            return backend.list()
        mine = set(backend.store.ids())
        return [info for info in backend.list(owner_host=socket.gethostname()) if info.id in mine]

    # -- acting inside (thin forwards to the runtime client) -----------------------------------------------
    # The everyday calls; every other runtime call is on .client. Signatures are the client's own
    # (tests/unit/test_parity.py pins them, and the async twins below).

    def _forwarding(self) -> contextlib.AbstractContextManager[None]:
        """The one guard around every forward below: a call that lost its server makes the handle ask the
        engine (:meth:`_calling`)."""
        return self._calling()

    def _forwarding_each(self, events: Iterator[OutputChunk | StreamEnd]) -> Iterator[OutputChunk | StreamEnd]:
        with self._forwarding():
            yield from events

    def run(
        self,
        command: str,
        *,
        session: str = "default",
        timeout: float | None = None,
        no_output_timeout: float | None = None,
        max_output_chars: int | None = None,
    ) -> CommandResult:
        """Run ``command`` in a persistent bash session (cwd, env and venv carry over between commands).

        ``timeout`` interrupts it (partial output kept, session usable); ``no_output_timeout`` hands control
        back while it keeps running. Returns exit_code, output, cwd, timed_out...
        """
        with self._forwarding():
            return self.client.run(
                command, session=session, timeout=timeout, no_output_timeout=no_output_timeout,
                max_output_chars=max_output_chars,
            )

    def stream(
        self,
        command: str,
        *,
        session: str = "default",
        timeout: float | None = None,
        no_output_timeout: float | None = None,
    ) -> Iterator[OutputChunk | StreamEnd]:
        """Run ``command``, yielding output chunks as they come, then the result (a StreamEnd)."""
        events = self.client.stream(command, session=session, timeout=timeout, no_output_timeout=no_output_timeout)
        return self._forwarding_each(events)

    def read_file(
        self,
        path: str,
        *,
        start_line: int | None = None,
        end_line: int | None = None,
        binary: bool = False,
        session: str = "default",
    ) -> FileContent:
        """Read a text file (relative paths: from the session's cwd, initially the work dir).

        For bytes use :meth:`read_bytes` (``binary=True`` is deprecated: it returns base64 text).
        """
        with self._forwarding():
            return self.client.read_file(path, start_line=start_line, end_line=end_line, binary=binary, session=session)

    def read_bytes(self, path: str, *, session: str = "default") -> bytes:
        """The exact bytes of a file in the sandbox."""
        with self._forwarding():
            return self.client.read_bytes(path, session=session)

    def write_file(
        self,
        path: str,
        content: str | bytes,
        *,
        append: bool = False,
        mode: int | None = None,
        session: str = "default",
    ) -> FileWritten:
        """Write text or bytes to a file as the sandbox user (so it is owned by ``user_id`` in a bind mount)."""
        with self._forwarding():
            return self.client.write_file(path, content, append=append, mode=mode, session=session)

    def list_dir(self, path: str = ".", *, include_hidden: bool = True, session: str = "default") -> DirListing:
        """List a directory in the sandbox."""
        with self._forwarding():
            return self.client.list_dir(path, include_hidden=include_hidden, session=session)

    def upload(self, local_path: str | os.PathLike[str], remote_path: str, *, session: str = "default") -> UploadResult:
        """Copy a local file or directory tree into the sandbox (owned by the sandbox user)."""
        with self._forwarding():
            return self.client.upload(local_path, remote_path, session=session)

    def download(self, remote_path: str, local_path: str | os.PathLike[str], *, session: str = "default") -> str:
        """Copy a file or directory tree out of the sandbox; returns the local path written.

        The sandbox is not trusted: a tree with links or names leading outside ``local_path``, or with
        special files, is refused (:class:`~agentbox.client.UnsafeDownloadError`) and nothing is written.
        """
        with self._forwarding():
            return self.client.download(remote_path, local_path, session=session)

    def run_python(self, code: str, timeout: float | None = None) -> PythonResult:
        """Run ``code`` in the sandbox's stateful Python kernel (variables persist between calls)."""
        with self._forwarding():
            return self.client.run_python(code, timeout)

    def start_background(
        self, command: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None, session: str = "default"
    ) -> BackgroundInfo:
        """Start a detached command (a server, a watcher...); read its output with :meth:`read_background`."""
        with self._forwarding():
            return self.client.start_background(command, cwd=cwd, env=env, session=session)

    def read_background(self, bg_id: str, *, offset: int = 0, max_bytes: int = 1_000_000) -> BackgroundOutput:
        """Output of a background command from byte ``offset``."""
        with self._forwarding():
            return self.client.read_background(bg_id, offset=offset, max_bytes=max_bytes)

    def kill_background(self, bg_id: str) -> BackgroundInfo:
        """Kill a background command and everything it started."""
        with self._forwarding():
            return self.client.kill_background(bg_id)

def reap(
    dry_run: bool = False, *, backend: Backend | None = None, labels: Mapping[str, str] | None = None
) -> list[str]:
    """Remove this host's sandboxes whose owner process is gone (not keep-alive ones); returns their ids.

    ``labels``: only sandboxes carrying all of them (reap what you made, not other processes' orphans).
    """
    return (backend or get_backend()).reap(dry_run=dry_run, labels=labels)


class AsyncSandbox:
    """:class:`Sandbox` for asyncio: the same lifecycle (run in a worker thread), async runtime calls."""

    def __init__(self, config: SandboxConfig | None = None, **kwargs: Any) -> None:
        self._core = Sandbox(config, **kwargs)
        self._aclient: AsyncRuntimeClient | None = None

    @classmethod
    def _wrap(cls, core: Sandbox) -> AsyncSandbox:
        sandbox = cls.__new__(cls)
        sandbox._core = core
        sandbox._aclient = None
        return sandbox

    @property
    def id(self) -> str:
        """The sandbox id."""
        return self._core.id

    @property
    def state(self) -> SandboxState:
        """Where the sandbox is in its life."""
        return self._core.state

    @property
    def config(self) -> SandboxConfig:
        """The effective configuration."""
        return self._core.config

    @property
    def url(self) -> str:
        """Base URL of the runtime server."""
        return self._core.url

    @property
    def uds(self) -> str | None:
        """Host path of the runtime server's Unix socket (``network="none"``), else None."""
        return self._core.uds

    @property
    def sync(self) -> Sandbox:
        """The synchronous handle underneath (same sandbox)."""
        return self._core

    @property
    def client(self) -> AsyncRuntimeClient:
        """The :class:`~agentbox.client.AsyncRuntimeClient` of the runtime server."""
        core_client = self._core.client  # checks the sandbox is usable
        if self._aclient is None:
            from agentbox.client import AsyncRuntimeClient

            self._aclient = AsyncRuntimeClient.like(core_client)
        return self._aclient

    async def _drop_client(self) -> None:
        client, self._aclient = self._aclient, None
        if client is not None:
            await client.aclose()

    async def start(self) -> AsyncSandbox:
        """Create and start the sandbox, or recover a stale one (see :meth:`Sandbox.start`)."""
        before = self._core._endpoint
        await asyncio.to_thread(self._core.start)
        if self._core._endpoint != before:
            await self._drop_client()
        return self

    async def __aenter__(self) -> AsyncSandbox:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def refresh(self) -> SandboxState:
        """Ask the engine where the sandbox is now (see :meth:`Sandbox.refresh`)."""
        before = self._core._endpoint
        state = await asyncio.to_thread(self._core.refresh)
        if self._core._endpoint != before:
            await self._drop_client()
        return state

    async def pause(self) -> None:
        """Freeze the sandbox."""
        await asyncio.to_thread(self._core.pause)

    async def replace(self) -> None:
        """A new sandbox in place of this lost one, through a service (see :meth:`Sandbox.replace`)."""
        await self._drop_client()
        await asyncio.to_thread(self._core.replace)

    async def resume(self) -> None:
        """Thaw the sandbox."""
        await asyncio.to_thread(self._core.resume)

    async def stop(self, *, timeout: float = 5) -> None:
        """Stop the container."""
        await self._drop_client()
        await asyncio.to_thread(self._core.stop, timeout=timeout)

    async def remove(self) -> None:
        """Remove the sandbox and what agentbox created for it."""
        await self._drop_client()
        await asyncio.to_thread(self._core.remove)

    async def close(self) -> None:
        """Remove the sandbox, or keep it alive if configured so."""
        await self._drop_client()
        await asyncio.to_thread(self._core.close)

    async def detach(self) -> None:
        """Let go of this handle and leave the sandbox as it is (see :meth:`Sandbox.detach`)."""
        await self._drop_client()
        self._core.detach()

    async def logs(self, tail: int | None = None) -> str:
        """The container's log."""
        return await asyncio.to_thread(self._core.logs, tail)

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        *,
        backend: Backend | None = None,
        take_ownership: bool = True,
        server: str | None = None,
        token: str | None = None,
    ) -> AsyncSandbox:
        """Reattach by id (see :meth:`Sandbox.connect`)."""
        core = await asyncio.to_thread(
            Sandbox.connect, sandbox_id, backend=backend, take_ownership=take_ownership, server=server, token=token
        )
        return cls._wrap(core)

    @classmethod
    async def list(
        cls,
        all_owners: bool = True,
        *,
        backend: Backend | None = None,
        server: str | None = None,
        token: str | None = None,
    ) -> list[SandboxInfo]:
        """Sandboxes on the engine (see :meth:`Sandbox.list`)."""
        return await asyncio.to_thread(Sandbox.list, all_owners, backend=backend, server=server, token=token)

    # -- acting inside (the same forwards as Sandbox, awaitable) -------------------------------------------

    @contextlib.asynccontextmanager
    async def _forwarding(self) -> AsyncIterator[None]:
        """The one guard around every forward below (see :meth:`Sandbox._calling`); the engine is asked in
        a worker thread, never on the event loop."""
        try:
            yield
        except AgentboxError as exc:
            replacement = await asyncio.to_thread(self._core._lost_call, exc)
            if replacement is None:
                raise
            raise replacement from exc

    async def _forwarding_each(
        self, events: AsyncIterator[OutputChunk | StreamEnd]
    ) -> AsyncIterator[OutputChunk | StreamEnd]:
        async with self._forwarding():
            async for event in events:
                yield event

    async def run(
        self,
        command: str,
        *,
        session: str = "default",
        timeout: float | None = None,
        no_output_timeout: float | None = None,
        max_output_chars: int | None = None,
    ) -> CommandResult:
        """Run ``command`` in a persistent bash session (see :meth:`Sandbox.run`)."""
        async with self._forwarding():
            return await self.client.run(
                command, session=session, timeout=timeout, no_output_timeout=no_output_timeout,
                max_output_chars=max_output_chars,
            )

    def stream(
        self,
        command: str,
        *,
        session: str = "default",
        timeout: float | None = None,
        no_output_timeout: float | None = None,
    ) -> AsyncIterator[OutputChunk | StreamEnd]:
        """Run ``command``, yielding output chunks as they come, then the result."""
        events = self.client.stream(command, session=session, timeout=timeout, no_output_timeout=no_output_timeout)
        return self._forwarding_each(events)

    async def read_file(
        self,
        path: str,
        *,
        start_line: int | None = None,
        end_line: int | None = None,
        binary: bool = False,
        session: str = "default",
    ) -> FileContent:
        """Read a text file in the sandbox (see :meth:`Sandbox.read_file`)."""
        async with self._forwarding():
            return await self.client.read_file(
                path, start_line=start_line, end_line=end_line, binary=binary, session=session
            )

    async def read_bytes(self, path: str, *, session: str = "default") -> bytes:
        """The exact bytes of a file in the sandbox."""
        async with self._forwarding():
            return await self.client.read_bytes(path, session=session)

    async def write_file(
        self,
        path: str,
        content: str | bytes,
        *,
        append: bool = False,
        mode: int | None = None,
        session: str = "default",
    ) -> FileWritten:
        """Write text or bytes to a file as the sandbox user."""
        async with self._forwarding():
            return await self.client.write_file(path, content, append=append, mode=mode, session=session)

    async def list_dir(self, path: str = ".", *, include_hidden: bool = True, session: str = "default") -> DirListing:
        """List a directory in the sandbox."""
        async with self._forwarding():
            return await self.client.list_dir(path, include_hidden=include_hidden, session=session)

    async def upload(
        self, local_path: str | os.PathLike[str], remote_path: str, *, session: str = "default"
    ) -> UploadResult:
        """Copy a local file or tree into the sandbox."""
        async with self._forwarding():
            return await self.client.upload(local_path, remote_path, session=session)

    async def download(self, remote_path: str, local_path: str | os.PathLike[str], *, session: str = "default") -> str:
        """Copy a file or tree out of the sandbox (see :meth:`Sandbox.download`)."""
        async with self._forwarding():
            return await self.client.download(remote_path, local_path, session=session)

    async def run_python(self, code: str, timeout: float | None = None) -> PythonResult:
        """Run ``code`` in the stateful Python kernel."""
        async with self._forwarding():
            return await self.client.run_python(code, timeout)

    async def start_background(
        self, command: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None, session: str = "default"
    ) -> BackgroundInfo:
        """Start a detached command."""
        async with self._forwarding():
            return await self.client.start_background(command, cwd=cwd, env=env, session=session)

    async def read_background(self, bg_id: str, *, offset: int = 0, max_bytes: int = 1_000_000) -> BackgroundOutput:
        """Output of a background command from byte ``offset``."""
        async with self._forwarding():
            return await self.client.read_background(bg_id, offset=offset, max_bytes=max_bytes)

    async def kill_background(self, bg_id: str) -> BackgroundInfo:
        """Kill a background command and everything it started."""
        async with self._forwarding():
            return await self.client.kill_background(bg_id)
