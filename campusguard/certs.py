"""Certificates, broker passwords, the broker ACL and the command-signing key, for installers.

``campusguard certs generate`` makes, in one directory (files 0600, existing files kept, so a
second run only adds what is missing):

* ``ca.crt`` / ``ca.key``: the CA that signs everything below (keep ``ca.key`` offline);
* ``server.crt`` / ``server.key``: the broker's certificate, SANs from ``--dns`` / ``--ip``;
* ``edge-<campus>.crt`` / ``.key``: one client certificate per campus edge, CN ``edge-<campus>``;
* ``gateway-<id>.crt`` / ``.key``: one client certificate per gateway, CN ``gateway-<id>``;
* with ``--passwords``: ``mosquitto.passwd`` (Mosquitto's ``$7$`` PBKDF2-SHA512 format) and
  ``password-<user>.txt``, one random password per user, for brokers using credentials.

The broker maps the certificate CN to the user name (``use_identity_as_username``), and the
ACL (:func:`acl_text`) has one block per user naming its campus explicitly: an edge may write
``cg/v1/<campus>/up/#`` and read ``cg/v1/<campus>/down/#``, nothing else.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from contract import topics

DAYS_CA = 3650
DAYS_LEAF = 825


@dataclass
class Written:
    """What a run wrote and what it kept (the installer sees both)."""

    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"wrote {p}" for p in self.written] + [f"kept  {p} (exists)" for p in self.kept]


def edge_user(campus: str) -> str:
    topics.campus_root(campus)  # validates the campus id
    return f"edge-{campus}"


def gateway_user(gateway_id: str) -> str:
    return f"gateway-{gateway_id}"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{out / 'ca.key'} is not an EC key")  # noqa: TRY004 (bad file)
    return cert, key


def ensure_ca(out: Path, done: Written, name: str = "CampusGuard CA") -> None:
    crt, keyf = out / "ca.crt", out / "ca.key"
    if crt.exists() and keyf.exists():
        done.kept += [crt, keyf]
        return
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=DAYS_CA))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(keyf, _key_pem(key))
    _write_private(crt, cert.public_bytes(serialization.Encoding.PEM))
    done.written += [crt, keyf]


def ensure_leaf(
    out: Path,
    stem: str,
    cn: str,
    done: Written,
    *,
    server: bool = False,
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
) -> None:
    crt, keyf = out / f"{stem}.crt", out / f"{stem}.key"
    if crt.exists() and keyf.exists():
        done.kept += [crt, keyf]
        return
    ca_cert, ca_key = _load_ca(out)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=DAYS_LEAF))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if not names:
            raise ValueError("the server certificate needs at least one --dns or --ip")
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(keyf, _key_pem(key))
    _write_private(crt, cert.public_bytes(serialization.Encoding.PEM))
    done.written += [crt, keyf]


def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = 101) -> str:
    """One password in Mosquitto 2.0's password-file format: ``$7$<iter>$<salt>$<hash>``
    (PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte hash, both base64)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def ensure_passwords(out: Path, users: list[str], done: Written) -> None:
    """Random passwords for ``users`` (kept if already made) and the broker's password file."""
    entries: list[tuple[str, str]] = []
    for user in users:
        pfile = out / f"password-{user}.txt"
        if pfile.exists():
            done.kept.append(pfile)
        else:
            _write_private(pfile, (secrets.token_urlsafe(24) + "\n").encode())
            done.written.append(pfile)
        entries.append((user, pfile.read_text(encoding="utf-8").strip()))
    passwd = out / "mosquitto.passwd"
    tool = shutil.which("mosquitto_passwd")
    _write_private(passwd, b"")
    if tool is not None:
        for user, password in entries:
            subprocess.run(  # noqa: S603 (the distribution's mosquitto_passwd, no shell)
                [tool, "-b", str(passwd), user, password],
                check=True,
                capture_output=True,
                timeout=30,
            )
        os.chmod(passwd, 0o600)
    else:
        text = "".join(f"{user}:{mosquitto_hash(pw)}\n" for user, pw in entries)
        _write_private(passwd, text.encode())
    done.written.append(passwd)


def ensure_signing_key(out: Path, done: Written, stem: str = "command-signing") -> None:
    """The gateway's Ed25519 key for signing commands (private, gateway only) and its public
    half (for every edge's ``command_signing.public_key_file``)."""
    priv, pub = out / f"{stem}.key", out / f"{stem}.pub"
    if priv.exists() and pub.exists():
        done.kept += [priv, pub]
        return
    key = ed25519.Ed25519PrivateKey.generate()
    _write_private(priv, _key_pem(key))
    _write_private(
        pub,
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    done.written += [priv, pub]


def generate(
    out: Path,
    *,
    campuses: list[str],
    gateways: list[str],
    dns: list[str],
    ips: list[str],
    passwords: bool = False,
) -> Written:
    done = Written()
    out.mkdir(parents=True, exist_ok=True)
    ensure_ca(out, done)
    ensure_leaf(out, "server", dns[0] if dns else ips[0], done, server=True, dns=dns, ips=ips)
    users: list[str] = []
    for campus in campuses:
        user = edge_user(campus)
        ensure_leaf(out, user, user, done)
        users.append(user)
    for gw in gateways:
        user = gateway_user(gw)
        ensure_leaf(out, user, user, done)
        users.append(user)
    if passwords:
        ensure_passwords(out, users, done)
    return done


def acl_text(campuses: list[str], gateways: list[str], share_group: str | None = None) -> str:
    """The Mosquitto ACL: one block per user, each naming its subtree explicitly."""
    root = f"{topics.ROOT}/{topics.VERSION}"
    lines = [
        "# CampusGuard broker ACL (Mosquitto), generated by `campusguard certs acl`.",
        "# User = client certificate CN (use_identity_as_username) or password-file user.",
        "# Edges: write their own cg/v1/<campus>/up/#, read their own cg/v1/<campus>/down/#.",
        "# Gateways: read every campus' up/# (also as a shared subscription), write down/#.",
        "# Anything not granted here is denied: a publish outside the grant is dropped",
        "# silently, a subscription outside it receives nothing.",
        "",
    ]
    for campus in campuses:
        user = edge_user(campus)
        lines += [
            f"user {user}",
            f"topic write {root}/{campus}/up/#",
            f"topic read {root}/{campus}/down/#",
            "",
        ]
    for gw in gateways:
        lines += [
            f"user {gateway_user(gw)}",
            f"topic read {root}/+/up/#",
            f"topic write {root}/+/down/#",
            "",
        ]
    del share_group  # Mosquitto checks a $share subscription against the topic after the group
    return "\n".join(lines)
