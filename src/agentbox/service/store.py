"""The service's state in one SQLite file: tokens, sandbox records, the audit log.

The engine is the source of truth for what *exists*; this file is the truth for who owns what, what each
sandbox was asked to be, and the session key that reaches its runtime server. The key has to be kept: the
server deleted its own copy when it read it, and a restarted service must still reach every sandbox. So
``service.db`` (and its ``-wal``/``-shm`` files, which SQLite creates with the same mode) is created 0600
in a 0700 data directory: only the service's user can read it. Tokens are stored as SHA-256 digests only
(they are 256-bit random strings, so a fast hash is enough: there is nothing to brute-force).

All calls are synchronous and made from one thread: the service runs them on a single-worker executor
(:meth:`Store.run`), so SQLite sees one writer and the event loop never blocks on the file. The CLI uses
the same methods directly.

Schema changes are numbered migrations applied in order; ``PRAGMA user_version`` says which have run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from agentbox.errors import ConfigError

__all__ = ["AuditEntry", "SandboxRow", "Store", "TokenRow", "utcnow"]

DB_NAME = "service.db"

P = ParamSpec("P")
T = TypeVar("T")

#: (version, SQL). Append only: a released migration is never edited.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE tokens (
            name TEXT PRIMARY KEY,
            digest TEXT NOT NULL UNIQUE,
            admin INTEGER NOT NULL DEFAULT 0,
            max_sandboxes INTEGER,
            max_cpus REAL,
            max_memory INTEGER,
            created TEXT NOT NULL,
            revoked TEXT
        );
        CREATE TABLE sandboxes (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            pool TEXT,
            container_id TEXT,
            state TEXT NOT NULL,
            reason TEXT,
            config TEXT NOT NULL,
            labels TEXT NOT NULL,
            session_key TEXT NOT NULL,
            cpus REAL,
            memory INTEGER,
            created TEXT NOT NULL,
            last_activity TEXT NOT NULL,
            idle_timeout REAL,
            max_lifetime REAL,
            keep_alive INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX sandboxes_owner ON sandboxes(owner);
        CREATE TABLE audit (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        );
        """,
    ),
)


def utcnow() -> str:
    """Now, as the ISO 8601 UTC text every timestamp in the file uses."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class TokenRow:
    """One API token (its digest only)."""

    name: str
    digest: str = field(repr=False)
    admin: bool
    max_sandboxes: int | None
    max_cpus: float | None
    max_memory: int | None
    created: str
    revoked: str | None = None


@dataclass
class SandboxRow:
    """The service's record of one sandbox."""

    id: str
    owner: str
    container_id: str | None
    state: str
    reason: str | None
    config: dict[str, Any]
    labels: dict[str, str]
    session_key: str = field(repr=False)
    cpus: float | None
    memory: int | None
    created: str
    last_activity: str
    pool: str | None = None
    """The warm pool it was made for (kept after a client took it: where it came from)."""
    idle_timeout: float | None = None
    """Seconds without activity after which the service pauses it (None: never)."""
    max_lifetime: float | None = None
    """Seconds after creation at which the service removes it (None: never)."""
    keep_alive: bool = False
    """Exempt from the idle timeout."""


@dataclass
class AuditEntry:
    """Who did what to what, when."""

    seq: int
    at: str
    actor: str
    action: str
    target: str
    detail: str


@dataclass
class Usage:
    """What a token's live sandboxes hold, for quota checks."""

    sandboxes: int = 0
    cpus: float = 0.0
    memory: int = 0
    unlimited_cpus: int = 0
    unlimited_memory: int = 0


def _sandbox(row: sqlite3.Row) -> SandboxRow:
    return SandboxRow(
        id=row["id"],
        owner=row["owner"],
        container_id=row["container_id"],
        state=row["state"],
        reason=row["reason"],
        config=json.loads(row["config"]),
        labels=json.loads(row["labels"]),
        session_key=row["session_key"],
        cpus=row["cpus"],
        memory=row["memory"],
        created=row["created"],
        last_activity=row["last_activity"],
        pool=row["pool"],
        idle_timeout=row["idle_timeout"],
        max_lifetime=row["max_lifetime"],
        keep_alive=bool(row["keep_alive"]),
    )


def _token(row: sqlite3.Row) -> TokenRow:
    return TokenRow(
        name=row["name"],
        digest=row["digest"],
        admin=bool(row["admin"]),
        max_sandboxes=row["max_sandboxes"],
        max_cpus=row["max_cpus"],
        max_memory=row["max_memory"],
        created=row["created"],
        revoked=row["revoked"],
    )


#: Record states that hold engine resources (count against quotas).
LIVE_STATES = ("creating", "running", "paused", "stopped", "removing")


class Store:
    """The SQLite file of one service data directory."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # Bumped after every commit of this process; with signature() (other processes' writes) it says
        # whether a cached listing still holds.
        self._generation = 0
        self._listings: dict[str | None, tuple[tuple[int, ...], list[SandboxRow]]] = {}
        #: True when :meth:`open` created the schema from nothing (a first start).
        self.fresh = False

    # -- lifecycle -----------------------------------------------------------------------------------------

    def open(self) -> Store:
        """Create the data directory and file if needed (0700 / 0600) and apply pending migrations."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                # Created 0600 before SQLite touches it: the session keys are never readable by others.
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        except OSError as exc:
            raise ConfigError(f"cannot use the service data directory {str(self.data_dir)!r}: {exc}") from None
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the service database {str(self.path)!r}: {exc}") from None
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        self._conn = conn
        self._migrate()
        return self

    def close(self) -> None:
        """Close the file (and the worker thread, if the async side used one)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _migrate(self) -> None:
        conn = self._db
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        self.fresh = current == 0
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            with self._tx() as c:
                # Statement by statement: executescript() would commit outside this transaction.
                for statement in (s.strip() for s in sql.split(";")):
                    if statement:
                        c.execute(statement)
                c.execute(f"PRAGMA user_version = {version}")
        latest = MIGRATIONS[-1][0]
        if current > latest:
            raise ConfigError(
                f"{self.path} was written by a newer agentbox (schema {current}, this one knows {latest}); upgrade"
            )

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: the write lock is taken up front, no upgrade deadlock)."""
        conn = self._db
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self._generation += 1

    def signature(self) -> tuple[int, ...]:
        """Changes whenever anyone (this process or the CLI) writes the file: the mtime and size of the
        database and its WAL. Cheap enough for the event loop (two stats of local files, no query), so
        read caches can be checked against it on every request."""
        out: list[int] = []
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                out += [0, 0]
                continue
            out += [st.st_mtime_ns, st.st_size]
        return tuple(out)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` (a method of this store) on the store's single worker thread."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentbox-db")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    # -- meta ----------------------------------------------------------------------------------------------

    def meta(self, key: str, default: Callable[[], str]) -> str:
        """The stored value of ``key``, set to ``default()`` on first use."""
        with self._tx() as c:
            row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return str(row["value"])
            value = default()
            c.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            return value

    # -- tokens --------------------------------------------------------------------------------------------

    def add_token(self, row: TokenRow) -> bool:
        """Insert a token; False when the name is taken (also by a revoked token: names are never reused,
        so a new token can never inherit an old one's sandboxes)."""
        try:
            with self._tx() as c:
                c.execute(
                    "INSERT INTO tokens (name, digest, admin, max_sandboxes, max_cpus, max_memory, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row.name, row.digest, int(row.admin), row.max_sandboxes, row.max_cpus, row.max_memory,
                     row.created),
                )
        except sqlite3.IntegrityError:
            return False
        return True

    def token_by_digest(self, digest: str) -> TokenRow | None:
        """The live (not revoked) token with this digest."""
        row = self._db.execute("SELECT * FROM tokens WHERE digest = ? AND revoked IS NULL", (digest,)).fetchone()
        return _token(row) if row is not None else None

    def token(self, name: str) -> TokenRow | None:
        """The token called ``name`` (revoked or not)."""
        row = self._db.execute("SELECT * FROM tokens WHERE name = ?", (name,)).fetchone()
        return _token(row) if row is not None else None

    def tokens(self, *, include_revoked: bool = False) -> list[TokenRow]:
        """Every token, oldest first."""
        sql = "SELECT * FROM tokens" + ("" if include_revoked else " WHERE revoked IS NULL") + " ORDER BY created"
        return [_token(r) for r in self._db.execute(sql)]

    def revoke_token(self, name: str) -> bool:
        """Revoke a live token; False when there is none by that name."""
        with self._tx() as c:
            cur = c.execute("UPDATE tokens SET revoked = ? WHERE name = ? AND revoked IS NULL", (utcnow(), name))
            return cur.rowcount == 1

    def has_admin(self, *, ever: bool = False) -> bool:
        """Whether a live admin token exists (``ever``: whether one was ever made, revoked or not)."""
        sql = "SELECT 1 FROM tokens WHERE admin = 1" + ("" if ever else " AND revoked IS NULL")
        return self._db.execute(sql).fetchone() is not None

    # -- sandboxes -----------------------------------------------------------------------------------------

    def reserve_sandbox(self, row: SandboxRow, check: Callable[[Usage], None]) -> None:
        """Insert ``row`` (state ``creating``) after ``check(usage of its owner)`` passes, atomically: two
        concurrent creates cannot both squeeze under one quota. ``check`` raises to refuse."""
        with self._tx() as c:
            usage = self._usage(c, row.owner)
            check(usage)
            c.execute(
                "INSERT INTO sandboxes (id, owner, container_id, state, reason, config, labels, session_key, "
                "cpus, memory, created, last_activity, pool, idle_timeout, max_lifetime, keep_alive) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.id, row.owner, row.container_id, row.state, row.reason, json.dumps(row.config),
                 json.dumps(row.labels), row.session_key, row.cpus, row.memory, row.created, row.last_activity,
                 row.pool, row.idle_timeout, row.max_lifetime, int(row.keep_alive)),
            )

    @staticmethod
    def _usage(c: sqlite3.Connection, owner: str) -> Usage:
        marks = ",".join("?" * len(LIVE_STATES))
        r = c.execute(
            f"SELECT COUNT(*) AS n, COALESCE(SUM(cpus), 0) AS cpus, COALESCE(SUM(memory), 0) AS memory, "
            f"SUM(cpus IS NULL) AS ucpus, SUM(memory IS NULL) AS umem "
            f"FROM sandboxes WHERE owner = ? AND state IN ({marks})",
            (owner, *LIVE_STATES),
        ).fetchone()
        return Usage(r["n"], float(r["cpus"]), int(r["memory"]), int(r["ucpus"] or 0), int(r["umem"] or 0))

    def usage(self, owner: str) -> Usage:
        """What ``owner``'s live sandboxes hold."""
        return self._usage(self._db, owner)

    def sandbox(self, sandbox_id: str) -> SandboxRow | None:
        """One record."""
        row = self._db.execute("SELECT * FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
        return _sandbox(row) if row is not None else None

    def sandboxes(self, owner: str | None = None, *, pooled: bool = False) -> list[SandboxRow]:
        """Every record (of ``owner`` only, if given), oldest first; with ``pooled``, also the warm pool's
        (which have no owner yet)."""
        where = "" if pooled else "WHERE owner != ''"
        if owner is None:
            rows = self._db.execute(f"SELECT * FROM sandboxes {where} ORDER BY created, id")
        else:
            rows = self._db.execute("SELECT * FROM sandboxes WHERE owner = ? ORDER BY created, id", (owner,))
        return [_sandbox(r) for r in rows]

    def listing(self, owner: str | None) -> list[SandboxRow]:
        """:meth:`sandboxes` of ``owner`` (None: everyone's), remembered for :meth:`cached_listing`.

        The rows are shared with later callers of :meth:`cached_listing`: treat them as read-only."""
        key = (self._generation, *self.signature())  # before the query: a write during it makes it stale
        rows = self.sandboxes(owner)
        if len(self._listings) >= 1000:
            self._listings.clear()
        self._listings[owner] = (key, rows)
        return rows

    def cached_listing(self, owner: str | None) -> list[SandboxRow] | None:
        """The last :meth:`listing` of ``owner`` if nothing was written since (by this process or any
        other), else None. Cheap enough for the event loop (two stats, no query): under many clients
        listing at once, the query runs once per change instead of once per request."""
        hit = self._listings.get(owner)
        if hit is not None and hit[0] == (self._generation, *self.signature()):
            return hit[1]
        return None

    def pool_counts(self) -> dict[str, tuple[int, int]]:
        """Per pool: (ready, being made) sandboxes waiting for an owner."""
        out: dict[str, tuple[int, int]] = {}
        for r in self._db.execute(
            "SELECT pool, SUM(state = 'pooled') AS ready, SUM(state = 'creating') AS making FROM sandboxes "
            "WHERE owner = '' AND pool IS NOT NULL GROUP BY pool"
        ):
            out[r["pool"]] = (int(r["ready"] or 0), int(r["making"] or 0))
        return out

    def acquire_pooled(
        self,
        pool: str,
        owner: str,
        labels: dict[str, str],
        check: Callable[[Usage], None],
        lifecycle: tuple[float | None, float | None, bool] = (None, None, False),
    ) -> SandboxRow | None:
        """Give ``owner`` a ready sandbox of ``pool`` (after ``check(usage)`` passes), atomically: two
        creates never get the same one. None when the pool is empty."""
        with self._tx() as c:
            check(self._usage(c, owner))
            row = c.execute(
                "SELECT id FROM sandboxes WHERE owner = '' AND pool = ? AND state = 'pooled' ORDER BY created LIMIT 1",
                (pool,),
            ).fetchone()
            if row is None:
                return None
            now = utcnow()
            c.execute(
                "UPDATE sandboxes SET owner = ?, state = 'running', labels = ?, created = ?, last_activity = ?, "
                "idle_timeout = ?, max_lifetime = ?, keep_alive = ? WHERE id = ?",
                (owner, json.dumps(labels), now, now, lifecycle[0], lifecycle[1], int(lifecycle[2]), row["id"]),
            )
            got = c.execute("SELECT * FROM sandboxes WHERE id = ?", (row["id"],)).fetchone()
            return _sandbox(got)

    def update_sandbox(self, sandbox_id: str, **values: Any) -> None:
        """Set some columns of one record (``state``, ``reason``, ``container_id``, ``last_activity``)."""
        allowed = {"state", "reason", "container_id", "last_activity"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        if not values:
            return
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._tx() as c:
            c.execute(f"UPDATE sandboxes SET {sets} WHERE id = ?", (*values.values(), sandbox_id))

    def delete_sandbox(self, sandbox_id: str) -> None:
        """Forget one record."""
        with self._tx() as c:
            c.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))

    def count_by_state(self) -> dict[str, int]:
        """How many records are in each state."""
        rows = self._db.execute("SELECT state, COUNT(*) AS n FROM sandboxes GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    # -- audit ---------------------------------------------------------------------------------------------

    def audit(self, actor: str, action: str, target: str, detail: str = "") -> None:
        """Append one audit entry."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                (utcnow(), actor, action, target, detail),
            )

    def audit_log(self, *, limit: int = 100, actor: str | None = None) -> list[AuditEntry]:
        """The latest ``limit`` entries (of ``actor`` only, if given), newest first."""
        if actor is None:
            rows = self._db.execute("SELECT * FROM audit ORDER BY seq DESC LIMIT ?", (limit,))
        else:
            rows = self._db.execute("SELECT * FROM audit WHERE actor = ? ORDER BY seq DESC LIMIT ?", (actor, limit))
        return [AuditEntry(r["seq"], r["at"], r["actor"], r["action"], r["target"], r["detail"]) for r in rows]
