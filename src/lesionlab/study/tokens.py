"""Invite and admin tokens, and the opaque ids of everything a participant sees.

Tokens are 256 random bits (``secrets.token_urlsafe(32)``); only their SHA-256 is stored, so a copy of the
database lets nobody join as a participant or act as the admin. A salted slow hash is not needed: the token is
random, not a password a person chose, so the hash cannot be reversed by guessing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_BYTES = 32


def new_token() -> str:
    """A fresh unguessable token (43 URL-safe characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_hash(token: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented token with a stored hash."""
    return hmac.compare_digest(hash_token(token), stored_hash)


def new_key(nbytes: int = 16) -> str:
    """A random opaque id (case, image, heatmap, item, participant): carries no information about its content."""
    return secrets.token_urlsafe(nbytes)
