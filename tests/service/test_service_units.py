"""Pure parts of the service: policy, store, settings, wire models (no engine, no HTTP)."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from agentbox.config import FIELDS, SandboxConfig
from agentbox.errors import ConfigError
from agentbox.service.app import bootstrap_admin, create_token
from agentbox.service.auth import bearer, digest
from agentbox.service.errors import ApiError
from agentbox.service.models import OPERATOR_ONLY, SandboxSettings
from agentbox.service.policy import Policy, Quota, check_config, check_labels, check_quota
from agentbox.service.settings import load_settings
from agentbox.service.store import MIGRATIONS, SandboxRow, Store, Usage, utcnow


def _rule(exc: pytest.ExceptionInfo[ApiError]) -> str | None:
    assert exc.value.status == 403
    return exc.value.rule


def test_wire_config_has_every_sandbox_config_key() -> None:
    assert set(SandboxSettings.model_fields) | OPERATOR_ONLY == set(FIELDS)
    assert not set(SandboxSettings.model_fields) & OPERATOR_ONLY


def test_given_keeps_only_what_the_client_set() -> None:
    assert SandboxSettings.model_validate({"cpus": 1, "network": None}).given() == {"cpus": 1}


def test_volume_roots_follow_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "out").symlink_to("/etc")
    policy = Policy(volume_roots=(str(root),))
    check_config(SandboxConfig(volumes=[f"{root}/sub:/w"]), [f"{root}/sub:/w"], policy)
    check_config(SandboxConfig(volumes=[f"{root}:/w"]), [f"{root}:/w"], policy)
    for spec in (f"{root}/out:/w", f"{root}x:/w", "/etc:/w"):
        with pytest.raises(ApiError) as exc:
            check_config(SandboxConfig(volumes=[spec]), [spec], policy)
        assert _rule(exc) == "volume_roots"


def test_relative_host_paths_are_refused_before_parsing() -> None:
    with pytest.raises(ApiError) as exc:
        check_config(SandboxConfig(volumes=["/tmp/x:/w"]), ["./x:/w"], Policy(volume_roots=("/",)))
    assert exc.value.code == "validation_error"


def test_networks_only_from_the_allow_list() -> None:
    policy = Policy(networks=frozenset({"side"}))
    check_config(SandboxConfig(network="none"), [], policy)
    check_config(SandboxConfig(additional_networks=["side"]), [], policy)
    with pytest.raises(ApiError) as exc:
        check_config(SandboxConfig(additional_networks=["side", "other"]), [], policy)
    assert _rule(exc) == "networks" and "'other'" in str(exc.value)


def test_reserved_labels_are_refused() -> None:
    assert check_labels({"team": "a", "agentbox.test": "1"}) == {"team": "a", "agentbox.test": "1"}
    for key in ("agentbox.sandbox", "agentbox.keep-alive", "agentbox.service", "agentbox.service-x"):
        with pytest.raises(ApiError) as exc:
            check_labels({key: "1"})
        assert _rule(exc) == "labels"


def test_quota_counts_live_sandboxes() -> None:
    quota = Quota(max_sandboxes=2, max_cpus=2, max_memory=1024**3)
    config = SandboxConfig(cpus=1, memory="512m")
    check_quota(config, quota, Usage(sandboxes=1, cpus=1, memory=512 * 1024**2), "t")
    for usage, rule in [
        (Usage(sandboxes=2), "quota.sandboxes"),
        (Usage(sandboxes=1, cpus=1.5), "quota.cpus"),
        (Usage(sandboxes=1, cpus=0.5, unlimited_cpus=1), "quota.cpus"),
        (Usage(sandboxes=1, memory=600 * 1024**2), "quota.memory"),
    ]:
        with pytest.raises(ApiError) as exc:
            check_quota(config, quota, usage, "t")
        assert _rule(exc) == rule


def _row(owner: str, cpus: float | None = 1.0, state: str = "creating") -> SandboxRow:
    now = utcnow()
    return SandboxRow(os.urandom(6).hex(), owner, None, state, None, {}, {}, "key", cpus, None, now, now)


def test_store_is_private_migrated_and_keeps_only_digests(tmp_path: Path) -> None:
    store = Store(tmp_path / "data").open()
    assert store.fresh
    secret = bootstrap_admin(store, store.data_dir)
    assert secret is not None and bootstrap_admin(store, store.data_dir) is None
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.data_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.data_dir / "admin.token").st_mode) == 0o600
    row = store.token_by_digest(digest(secret))
    assert row is not None and row.admin
    wal = tmp_path / "data" / "service.db-wal"
    assert stat.S_IMODE(os.stat(wal).st_mode) == 0o600  # SQLite gives the WAL the database's mode
    assert secret.encode() not in store.path.read_bytes() + wal.read_bytes()
    store.close()
    again = Store(tmp_path / "data").open()
    assert not again.fresh
    version = sqlite3.connect(again.path).execute("PRAGMA user_version").fetchone()[0]
    assert version == MIGRATIONS[-1][0]
    again.close()


def test_first_start_makes_an_admin_token_even_after_cli_tokens(tmp_path: Path) -> None:
    cli = Store(tmp_path / "data").open()
    create_token(cli, "early")  # `agentbox token create` before the first `agentbox serve`...
    cli.close()
    store = Store(tmp_path / "data").open()  # ...which then finds a database that is not new
    secret = bootstrap_admin(store, store.data_dir)
    assert secret is not None and (store.data_dir / "admin.token").read_text().strip() == secret
    store.revoke_token("admin")
    assert bootstrap_admin(store, store.data_dir) is None  # revoked on purpose: not made again
    store.close()


def test_quota_reservation_is_atomic(tmp_path: Path) -> None:
    """Many threads race to reserve under a 3-sandbox quota: exactly 3 win."""
    store = Store(tmp_path / "data").open()
    create_token(store, "t", max_sandboxes=3)
    quota = Quota(max_sandboxes=3)
    wins: list[str] = []
    refusals: list[str] = []

    def attempt() -> None:
        row = _row("t", cpus=None)
        try:
            store.reserve_sandbox(row, lambda usage: check_quota(SandboxConfig(), quota, usage, "t"))
            wins.append(row.id)
        except ApiError as exc:
            refusals.append(exc.rule or "")

    threads = [threading.Thread(target=attempt) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 3 and refusals == ["quota.sandboxes"] * 9
    # Dead records do not count.
    store.update_sandbox(wins[0], state="dead")
    assert store.usage("t").sandboxes == 2
    store.close()


def test_settings_from_the_service_config(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    path = tmp_path / "s.toml"
    path.write_text(f'[sandbox]\ncpus = 1\nmemory = "1g"\n[policy]\nnetworks = ["n1"]\nvolume_roots = ["{root}"]\n')
    settings = load_settings(config_file=path, allow_volume_roots=["/srv"], data_dir=tmp_path / "d")
    assert settings.sandbox_defaults == {"cpus": 1.0, "memory": 1024**3}
    assert settings.policy.networks == {"n1"} and settings.policy.volume_roots == ("/srv", str(root))
    for text, words in [
        ("[pools]\n", "unknown table"),
        ("[policy]\nnets = []\n", "unknown key"),
        ("[sandbox]\ncpu = 1\n", "did you mean 'cpus'"),
        ("[policy]\nvolume_roots = ['rel']\n", "absolute"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=words):
            load_settings(config_file=path)


def test_bearer_header_forms() -> None:
    assert bearer("Bearer abc") == "abc" and bearer("bearer  abc ") == "abc"
    for header in (None, "", "Basic abc", "Bearer "):
        with pytest.raises(ApiError) as exc:
            bearer(header)
        assert exc.value.status == 401


def test_lifecycle_within_the_policy() -> None:
    from agentbox.service.policy import check_lifecycle

    policy = Policy(idle_timeout=60, max_lifetime=600, allow_keep_alive=False)
    assert check_lifecycle(None, None, False, policy) == (60, 600, False)
    assert check_lifecycle(5, 10, False, policy) == (5, 10, False)
    assert check_lifecycle(None, None, False, Policy()) == (None, None, False)
    for args in ((61, None, False), (None, 601, False), (None, None, True)):
        with pytest.raises(ApiError) as exc:
            check_lifecycle(args[0], args[1], bool(args[2]), policy)
        assert _rule(exc) == "lifecycle"


def test_host_ports_only_from_the_allow_list() -> None:
    with pytest.raises(ApiError) as exc:
        check_config(SandboxConfig(host_ports=[11434]), [], Policy())
    assert _rule(exc) == "host_ports"
    check_config(SandboxConfig(host_ports=[11434]), [], Policy(host_ports=frozenset({11434})))


def _record(owner: str, state: str = "running") -> SandboxRow:
    now = utcnow()
    return SandboxRow(os.urandom(6).hex(), owner, None, state, None, {}, {}, "key", None, None, now, now)


def test_cached_listing_holds_until_any_process_writes(tmp_path: Path) -> None:
    store = Store(tmp_path / "data").open()
    first = _record("alice")
    store.reserve_sandbox(first, lambda usage: None)
    assert store.cached_listing("alice") is None  # nothing listed yet
    listed = store.listing("alice")
    assert [r.id for r in listed] == [first.id]
    assert store.cached_listing("alice") is listed
    assert store.cached_listing(None) is None  # each scope is its own listing
    store.update_sandbox(first.id, state="paused")  # a write of this process
    assert store.cached_listing("alice") is None
    assert store.listing("alice")[0].state == "paused"
    # A write of another process (the CLI, or a second store on the file) is seen too.
    other = Store(tmp_path / "data").open()
    relisted = store.listing("alice")
    other.reserve_sandbox(_record("alice"), lambda usage: None)
    other.close()
    assert store.cached_listing("alice") is not relisted
    assert len(store.listing("alice")) == 2
    store.close()
