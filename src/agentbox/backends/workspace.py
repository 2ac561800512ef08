"""Can the sandbox user write a host folder it gets mounted? Asked before the first command.

A workspace owned by another uid (a root-owned checkout with ``user_id=1000``, or the other way round)
otherwise shows up as ``Permission denied`` on the agent's first write, long after start, with no hint
why. agentbox never chowns a user's tree to fix it: it says who owns the folder, its mode, and the two
fixes. Read-only mounts are left alone (not writing is what they are for).

The backend refuses an unwritable *workspace* (the mount at ``work_dir``: every agent writes there) with
a ConfigError before anything is created, and only warns about other read-write mounts (``rw`` is the
default mode, so many are mounted to be read). It judges only where host uids are sandbox uids: a local
engine without user-namespace remapping or rootless mode.
"""

from __future__ import annotations

import os
import stat

from agentbox.volumes import Mount

__all__ = ["unwritable_reason"]

_ACL_XATTR = "system.posix_acl_access"


def _has_acl(path: str) -> bool:
    try:
        return _ACL_XATTR in os.listxattr(path)
    except OSError:  # no xattr support here: no ACL either
        return False


def unwritable_reason(mount: Mount, uid: int, *, root_bypasses: bool = True) -> str | None:
    """Why ``uid`` cannot write the host side of ``mount``, or None (writable, read-only, or unknown).

    Decided from POSIX mode bits only (inside the sandbox the user's primary group has gid == uid); a
    folder with an ACL is not judged. ``root_bypasses``: uid 0 keeps CAP_DAC_OVERRIDE (not hardened).
    """
    if mount.kind != "bind" or mount.read_only:
        return None
    if uid == 0 and root_bypasses:
        return None
    try:
        st = os.stat(mount.source)
    except OSError:
        return None  # missing: the engine's own error says so
    if _has_acl(mount.source):
        return None
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == uid:
        writable = bool(mode & stat.S_IWUSR)
    elif st.st_gid == uid:
        writable = bool(mode & stat.S_IWGRP)
    else:
        writable = bool(mode & stat.S_IWOTH)
    if writable:
        return None
    what = "folder" if stat.S_ISDIR(st.st_mode) else "file"
    return (
        f"the sandbox user (uid {uid}) cannot write {mount.source} (mounted at {mount.target}): the {what} is "
        f"owned by uid {st.st_uid} (gid {st.st_gid}) with mode {mode:04o}. Fix it on the host with "
        f"`sudo chown -R {uid} {mount.source}`, or run the sandbox as its owner (SANDBOX_USER_ID={st.st_uid}, "
        f"user_id={st.st_uid}), or mount it read-only (`{mount.source}:{mount.target}:ro`) if the sandbox "
        "should not write it"
    )
