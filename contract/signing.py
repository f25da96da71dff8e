"""Signed commands: the gateway signs every downlink command, the edge verifies before acting.

A command (``BollardCommandMessage`` on ``.../down/command``, ``DrillCommand`` on
``.../down/drill``, ``SelftestRequest`` on ``.../down/selftest``) travels as its usual JSON
object with one more member, ``sig``: the base64 Ed25519 signature of

    b"campusguard-command-v1\\n" + <topic kind> + b"\\n" + canonical JSON of the object without sig

Canonical JSON: keys sorted, no insignificant white space, UTF-8 (``ensure_ascii=False``). The
topic kind is inside the signed bytes so a drill signature cannot pass as a command's. The
campus, the id and the expiry are fields of the object, so they are signed too; the edge refuses
a command for another campus, an expired one and one whose id it has seen (replay).

Pure functions, no I/O except the two key loaders.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNED_KINDS = frozenset({"command", "drill", "selftest"})
"""Downlink topic kinds that carry commands (what the edge acts on)."""
SIG_FIELD = "sig"
DOMAIN = b"campusguard-command-v1\n"


class SignatureError(ValueError):
    """A command is unsigned, malformed or its signature does not verify; ``reason`` is short."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _signed_bytes(kind: str, obj: dict[str, Any]) -> bytes:
    return DOMAIN + kind.encode() + b"\n" + canonical(obj)


def _object(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise SignatureError("not JSON") from None
    if not isinstance(obj, dict):
        raise SignatureError("not a JSON object")
    return obj


def sign(key: Ed25519PrivateKey, kind: str, payload: bytes) -> bytes:
    """``payload`` (a command's JSON) with its ``sig`` member added (any old one replaced)."""
    obj = _object(payload)
    obj.pop(SIG_FIELD, None)
    sig = base64.b64encode(key.sign(_signed_bytes(kind, obj))).decode()
    return canonical({**obj, SIG_FIELD: sig})


def split(payload: bytes) -> tuple[bytes, str | None]:
    """The payload without ``sig`` (for the model, which does not know it) and the signature.

    A payload that is not a JSON object comes back unchanged (the model rejects it)."""
    try:
        obj = _object(payload)
    except SignatureError:
        return payload, None
    sig = obj.pop(SIG_FIELD, None)
    if sig is None:
        return payload, None
    return canonical(obj), sig if isinstance(sig, str) else ""


def verify(key: Ed25519PublicKey, kind: str, payload: bytes) -> bytes:
    """Check the signature; return the payload without ``sig``.

    Raises:
        SignatureError: ``unsigned``, ``malformed signature`` or ``bad signature``.
    """
    obj = _object(payload)
    sig = obj.pop(SIG_FIELD, None)
    if sig is None:
        raise SignatureError("unsigned")
    if not isinstance(sig, str):
        raise SignatureError("malformed signature")
    try:
        raw = base64.b64decode(sig.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("malformed signature") from None
    if len(raw) != 64:
        raise SignatureError("malformed signature")
    try:
        key.verify(raw, _signed_bytes(kind, obj))
    except InvalidSignature:
        raise SignatureError("bad signature") from None
    return canonical(obj)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")  # noqa: TRY004 (bad file)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")  # noqa: TRY004 (bad file)
    return key
