"""Passwords only as argon2id hashes, verified in the same time whether or not the user exists."""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters

DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))
"""Verified against when the user name is unknown, so a wrong name costs the same time as a
wrong password and the answer time does not tell which names exist."""


def hash_password(password: str) -> str:
    """An argon2id hash (``$argon2id$...``) of ``password``."""
    return _HASHER.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; an unknown user (``None``) costs the same time."""
    try:
        return _HASHER.verify(stored_hash or DUMMY_HASH, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """The hash was made with weaker parameters than today's: re-hash at the next login."""
    try:
        return _HASHER.check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return False
