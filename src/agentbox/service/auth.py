"""Bearer tokens: how they are made, stored (a digest only) and checked.

A token is ``abx_`` + 32 random bytes (URL-safe base64). Only its SHA-256 digest is stored; a request's
token is hashed and looked up by digest, so the secret is never compared byte by byte against anything
an attacker could time.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from agentbox.service.errors import ApiError
from agentbox.service.policy import Quota
from agentbox.service.store import TokenRow

__all__ = ["PREFIX", "Principal", "bearer", "digest", "new_token"]

PREFIX = "abx_"


def new_token() -> str:
    """A fresh secret token."""
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """What the store keeps of ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a live token."""

    name: str
    admin: bool
    quota: Quota

    @classmethod
    def of(cls, row: TokenRow) -> Principal:
        """The principal of a token row."""
        return cls(row.name, row.admin, Quota(row.max_sandboxes, row.max_cpus, row.max_memory))

    def require_admin(self) -> None:
        """Refuse (403) unless this is an admin token."""
        if not self.admin:
            raise ApiError("forbidden", f"token {self.name!r} is not an admin token")


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; 401 when absent or malformed."""
    if not header:
        raise ApiError("unauthorized", "missing Authorization header: send 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError("unauthorized", "Authorization must be 'Bearer <token>'")
    return token.strip()
