"""HTTP digest authentication as SIP uses it (RFC 2617 / RFC 7616 with MD5), pure.

:func:`parse_challenge` reads ``WWW-Authenticate: Digest realm=..., nonce=..., qop=...``;
:func:`authorization` answers it (with ``qop=auth`` when offered, else the RFC 2069 form);
:func:`parse_credentials` and :func:`check` are the server side (tests and simulators).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


class DigestError(ValueError):
    pass


def _params(value: str, scheme: str = "Digest") -> dict[str, str]:
    text = value.strip()
    if not text.lower().startswith(scheme.lower() + " "):
        raise DigestError(f"not a {scheme} value: {value[:40]!r}")
    text = text[len(scheme) + 1 :]
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _PARAM.match(text, pos)
        if m is None or m.end() == pos:
            raise DigestError(f"cannot read {text[pos : pos + 30]!r}")
        raw = m.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        out[m.group(1).lower()] = raw
        pos = m.end()
    return out


@dataclass(frozen=True, slots=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False


def parse_challenge(value: str) -> Challenge:
    p = _params(value)
    if "realm" not in p or "nonce" not in p:
        raise DigestError("a digest challenge needs realm and nonce")
    algorithm = p.get("algorithm", "MD5")
    if algorithm.upper() not in ("MD5", "MD5-SESS"):
        raise DigestError(f"algorithm {algorithm} is not supported (MD5 only)")
    qop = tuple(q.strip() for q in p.get("qop", "").split(",") if q.strip())
    return Challenge(
        realm=p["realm"],
        nonce=p["nonce"],
        algorithm=algorithm.upper(),
        qop=qop,
        opaque=p.get("opaque"),
        stale=p.get("stale", "").lower() == "true",
    )


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def response_hash(
    *,
    username: str,
    password: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    algorithm: str = "MD5",
    qop: str | None = None,
    nc: str = "00000001",
    cnonce: str = "",
) -> str:
    ha1 = _md5(f"{username}:{realm}:{password}")
    if algorithm.upper() == "MD5-SESS":
        ha1 = _md5(f"{ha1}:{nonce}:{cnonce}")
    ha2 = _md5(f"{method}:{uri}")
    if qop:
        return _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _md5(f"{ha1}:{nonce}:{ha2}")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization(
    challenge: Challenge,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """The ``Authorization`` value answering ``challenge`` for this request."""
    qop = "auth" if "auth" in challenge.qop else None
    if challenge.qop and qop is None:
        raise DigestError(f"qop {','.join(challenge.qop)} is not supported (auth only)")
    cn = cnonce or secrets.token_hex(8)
    ncs = f"{nc:08x}"
    resp = response_hash(
        username=username,
        password=password,
        realm=challenge.realm,
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        algorithm=challenge.algorithm,
        qop=qop,
        nc=ncs,
        cnonce=cn,
    )
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(resp)}",
        f"algorithm={challenge.algorithm}",
    ]
    if qop:
        parts += [f"qop={qop}", f"nc={ncs}", f"cnonce={_quote(cn)}"]
    elif challenge.algorithm == "MD5-SESS":
        parts.append(f"cnonce={_quote(cn)}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    return "Digest " + ", ".join(parts)


def challenge_header(
    realm: str, nonce: str, *, qop: bool = False, opaque: str | None = None
) -> str:
    out = f"Digest realm={_quote(realm)}, nonce={_quote(nonce)}, algorithm=MD5"
    if qop:
        out += ', qop="auth"'
    if opaque is not None:
        out += f", opaque={_quote(opaque)}"
    return out


def parse_credentials(value: str) -> dict[str, str]:
    p = _params(value)
    for key in ("username", "realm", "nonce", "uri", "response"):
        if key not in p:
            raise DigestError(f"credentials without {key}")
    return p


def check(credentials: str, *, method: str, password: str) -> bool:
    """Server side: whether ``credentials`` (an Authorization value) are right."""
    try:
        p = parse_credentials(credentials)
    except DigestError:
        return False
    expected = response_hash(
        username=p["username"],
        password=password,
        realm=p["realm"],
        nonce=p["nonce"],
        method=method,
        uri=p["uri"],
        algorithm=p.get("algorithm", "MD5"),
        qop=p.get("qop"),
        nc=p.get("nc", "00000001"),
        cnonce=p.get("cnonce", ""),
    )
    return secrets.compare_digest(expected, p["response"].lower())
