"""The SANDBOX_VOLUMES parser: grammar, errors, and that no input escapes as a foreign exception."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentbox.errors import AgentboxError, VolumeSpecError
from agentbox.volumes import Mount, format_volumes, parse_volume, parse_volumes, workspace_mount


def test_bind_mounts_default_to_rw() -> None:
    mounts = parse_volumes("/tmp/a:/workspace,/tmp/ref:/data:ro")
    assert mounts == [
        Mount("/tmp/a", "/workspace", read_only=False, kind="bind"),
        Mount("/tmp/ref", "/data", read_only=True, kind="bind"),
    ]
    assert [m.mode for m in mounts] == ["rw", "ro"]


def test_explicit_rw_mode() -> None:
    assert parse_volume("/src:/workspace:rw").read_only is False


@pytest.mark.parametrize("mode", ["rwx", "RO", "z", ""])
def test_unknown_mode_is_rejected_by_name(mode: str) -> None:
    with pytest.raises(VolumeSpecError) as info:
        parse_volumes(f"/src:/workspace:{mode}")
    assert f"unknown mode {mode!r}" in str(info.value)


def test_docker_mount_options_after_a_comma_are_a_separate_bad_entry() -> None:
    # `ro,z` is Docker's option list; here ',' separates entries, so `z` is an entry without a container path.
    with pytest.raises(VolumeSpecError, match=r"volume 'z' has no container path"):
        parse_volumes("/src:/workspace:ro,z")


def test_rwx_message_names_the_mode() -> None:
    with pytest.raises(VolumeSpecError, match=r"unknown mode 'rwx'"):
        parse_volume("/tmp/a:/workspace:rwx")


def test_relative_and_home_paths_resolve(tmp_path: os.PathLike[str]) -> None:
    cwd = str(tmp_path)
    assert parse_volume("./src:/workspace", cwd=cwd).source == os.path.join(cwd, "src")
    assert parse_volume(".:/workspace", cwd=cwd).source == cwd
    assert parse_volume("../up:/up", cwd=cwd).source == os.path.dirname(cwd) + "/up"
    assert parse_volume("sub/dir:/w", cwd=cwd).source == os.path.join(cwd, "sub/dir")
    assert parse_volume("~/proj:/w").source == os.path.expanduser("~/proj")


def test_bare_name_is_a_named_volume() -> None:
    mount = parse_volume("cache:/root/.cache")
    assert (mount.kind, mount.source) == ("volume", "cache")


@pytest.mark.parametrize(
    ("spec", "source"),
    [("C:\\src:/workspace", "C:\\src"), ("C:/src:/workspace:ro", "C:/src"), ("d:\\a b:/w", "d:\\a b")],
)
def test_windows_drive_paths(spec: str, source: str) -> None:
    mount = parse_volume(spec)
    assert (mount.source, mount.kind) == (source, "bind")
    assert mount.target in ("/workspace", "/w")


@pytest.mark.parametrize("spec", ["/src:workspace", "/src:relative/path", "/src:C:/x"])
def test_container_path_must_be_absolute(spec: str) -> None:
    with pytest.raises(VolumeSpecError):
        parse_volume(spec)


@pytest.mark.parametrize("spec", ["/only-one-part", "a:b:c:d", ":/workspace", "/src:/", "bad name!:/x"])
def test_malformed_entries(spec: str) -> None:
    with pytest.raises(VolumeSpecError):
        parse_volume(spec)


def test_same_container_path_twice_is_an_error() -> None:
    with pytest.raises(VolumeSpecError, match="/workspace"):
        parse_volumes("/a:/workspace,/b:/workspace/")


def test_same_host_path_twice_is_allowed() -> None:
    mounts = parse_volumes("/repo:/workspace,/repo:/reference:ro")
    assert [(m.source, m.read_only) for m in mounts] == [("/repo", False), ("/repo", True)]


def test_container_path_is_normalised() -> None:
    assert parse_volume("/a://data/./x/").target == "/data/x"


def test_empty_spec_gives_no_mounts_but_empty_entry_is_an_error() -> None:
    assert parse_volumes("") == []
    assert parse_volumes("  ") == []
    with pytest.raises(VolumeSpecError, match="empty"):
        parse_volumes("/a:/w,,/b:/d")


def test_workspace_mount() -> None:
    mounts = parse_volumes("/a:/workspace,/b:/data:ro")
    found = workspace_mount(mounts)
    assert found is not None and found.source == "/a"
    assert workspace_mount(mounts, "/data") == mounts[1]
    assert workspace_mount(parse_volumes("/b:/data")) is None


def test_format_round_trips() -> None:
    mounts = parse_volumes("/a:/workspace,cache:/c:ro,C:\\x:/win")
    assert parse_volumes(format_volumes(mounts)) == mounts


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_any_string_gives_mounts_or_our_error(spec: str) -> None:
    try:
        mounts = parse_volumes(spec, cwd="/base")
    except VolumeSpecError:
        return
    for mount in mounts:
        assert mount.target.startswith("/")
        assert mount.kind in ("bind", "volume")


_piece = st.sampled_from(["/", ":", "\\", "C", "a", ".", "~", ",", "ro", "rw", "/workspace", " ", "x:"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_piece, max_size=12).map("".join))
def test_spec_like_strings_never_raise_foreign_errors(spec: str) -> None:
    try:
        parse_volumes(spec, cwd="/base")
    except AgentboxError as exc:
        assert isinstance(exc, VolumeSpecError)


def test_parsed_mounts_pass_through_and_still_clash() -> None:
    mounts = parse_volumes("/a:/workspace,cache:/c:ro")
    assert parse_volumes(mounts) == mounts
    with pytest.raises(VolumeSpecError, match="/workspace"):
        parse_volumes([*mounts, "/b:/workspace"])


# --- the runtime server's read-only mount -----------------------------------------------------------------


def test_server_volume_is_mounted_read_only_at_opt_agentbox() -> None:
    from agentbox.backends.spec import SERVER_DIR, spec_from_config, to_docker_args, with_server_volume
    from agentbox.config import SandboxConfig

    spec = spec_from_config(SandboxConfig(volumes="/src:/workspace"), image="img", sandbox_id="abc123", labels={})
    assert with_server_volume(spec, None) is spec  # not an agentbox image: nothing to mount
    mounted = with_server_volume(spec, "agentbox-server-0123456789ab")
    assert mounted.mounts[-1] == Mount("agentbox-server-0123456789ab", SERVER_DIR, read_only=True, kind="volume")
    assert dict(to_docker_args(mounted)["mounts"][-1]) == {
        "Target": "/opt/agentbox",
        "Source": "agentbox-server-0123456789ab",
        "Type": "volume",
        "ReadOnly": True,
    }


def test_a_configured_mount_over_the_server_is_refused() -> None:
    from agentbox.backends.spec import spec_from_config, with_server_volume
    from agentbox.config import SandboxConfig

    spec = spec_from_config(SandboxConfig(volumes="/mine:/opt/agentbox"), image="i", sandbox_id="abc123", labels={})
    with pytest.raises(VolumeSpecError, match="runtime server"):
        with_server_volume(spec, "agentbox-server-0123456789ab")
