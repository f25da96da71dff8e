"""Alarm evidence at the centre: the picture files, signed verification links, retention.

Pictures live under ``<data_dir>/evidence/<campus>/<day>/<id>.jpg``; each is written and fsynced
before its database row, and the row before the edge's receipt, so a picture the edge let go of
is on the gateway's disk. They are served only through the API (roles from
``evidence.roles``) or through a verification link: a URL signed with HMAC-SHA256 over the alarm
id and an expiry, which the DC-09 relay sends as x-data ``V`` with the alarm itself, before any
picture has arrived; the page it opens shows the pictures as they come.

The link functions are pure (no I/O) and property-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

from contract.config import GatewayEvidenceConfig
from contract.evidence import EvidenceHeader
from contract.files import write_durably
from gateway.store.models import EvidenceRow
from gateway.store.repo import Store, now

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 3600.0
_SIG_HEX = 32  # 128 bits of HMAC-SHA256: plenty against guessing, short in a DC-09 frame


def link_signature(key: bytes, alarm_id: str, expires: int) -> str:
    msg = f"cg-evidence-v1|{alarm_id}|{expires}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:_SIG_HEX]


def verify_link(key: bytes, alarm_id: str, expires: int, sig: str, at: float) -> bool:
    """True if ``sig`` is this alarm's signature and ``expires`` (unix seconds) is not past."""
    if at > expires:
        return False
    return hmac.compare_digest(link_signature(key, alarm_id, expires), sig)


def verification_url(base: str, key: bytes, alarm_id: str, expires: int) -> str:
    """The URL sent to the police: ``<base>/verify/<alarm>?exp=..&sig=..``."""
    query = urlencode({"exp": expires, "sig": link_signature(key, alarm_id, expires)})
    return f"{base.rstrip('/')}/verify/{alarm_id}?{query}"


class EvidenceVault:
    """The picture files of one gateway, and what the relay and the API need of them."""

    def __init__(self, cfg: GatewayEvidenceConfig, directory: Path) -> None:
        self.cfg = cfg
        self.directory = directory
        self.key = cfg.key()

    def link_for(self, alarm_id: str, at: datetime | None = None) -> str | None:
        """The verification URL for an alarm, or None when no public URL is configured."""
        if self.cfg.public_url is None or self.key is None:
            return None
        start = at or datetime.now(UTC)
        expires = int((start + timedelta(hours=self.cfg.link_ttl_hours)).timestamp())
        return verification_url(self.cfg.public_url, self.key, alarm_id, expires)

    def check_link(self, alarm_id: str, expires: int, sig: str) -> bool:
        return self.key is not None and verify_link(self.key, alarm_id, expires, sig, time.time())

    def _relative(self, header: EvidenceHeader) -> str:
        day = header.taken_at.astimezone(UTC).strftime("%Y-%m-%d")
        return f"{header.campus}/{day}/{header.id}.jpg"

    def path(self, relative: str) -> Path:
        p = (self.directory / relative).resolve()
        if not p.is_relative_to(self.directory.resolve()):
            raise ValueError(f"evidence path {relative!r} leaves the evidence directory")
        return p

    async def store(self, store: Store, header: EvidenceHeader, image: bytes) -> bool:
        """File first, then the row; True if new. Raises only if the disk or database fails
        (then the message is not acknowledged and comes again)."""
        relative = self._relative(header) if image else None
        if relative is not None:
            await asyncio.to_thread(write_durably, self.path(relative), image)
        return await store.add_evidence(
            EvidenceRow(
                id=header.id,
                event_id=header.event_id,
                campus=header.campus,
                edge=header.edge,
                camera=header.camera,
                shot=header.shot,
                taken_at=header.taken_at,
                received_at=now(),
                content_type=header.content_type,
                size=header.size,
                sha256=header.sha256,
                path=relative,
                error=header.error,
            )
        )

    async def sweep(self, store: Store, at: datetime | None = None) -> int:
        """Delete pictures older than the retention; returns how many went."""
        cutoff = (at or datetime.now(UTC)) - timedelta(days=self.cfg.retention_days)
        total = 0
        while True:
            rows = await store.expire_evidence(cutoff)
            files = [r.path for r in rows if r.path]

            def delete(files: list[str] = files) -> None:
                for rel in files:
                    with contextlib.suppress(FileNotFoundError, ValueError):
                        self.path(rel).unlink()

            await asyncio.to_thread(delete)
            total += len(rows)
            if len(rows) < 1000:
                break
        if total:
            log.info(
                "evidence retention: deleted %d record(s) older than %g days",
                total,
                self.cfg.retention_days,
            )
        return total

    async def run_sweeper(self, store: Store) -> None:
        while True:
            try:
                await self.sweep(store)
            except Exception:
                log.exception("evidence retention sweep failed; trying again later")
            await asyncio.sleep(SWEEP_EVERY_S)
