"""Alarm evidence at the centre: the picture files, signed verification links, retention.

Pictures live under ``<data_dir>/evidence/<campus>/<day>/<id>.jpg``; each is written and fsynced
before its database row, and the row before the edge's receipt, so a picture the edge let go of
is on the gateway's disk. They are served only through the API (roles from
``evidence.roles``) or through a verification link: a URL signed with HMAC-SHA256 over the alarm
id and an expiry, which the DC-09 relay sends as x-data ``V`` with the alarm itself, before any
picture has arrived; the page it opens shows the pictures as they come.

Alarm video clips (issue 13) come in chunks (:mod:`contract.evidence`): each chunk is written
and fsynced under ``.parts/<clip>/`` before its receipt; the chunk that completes the clip has it
joined, checked against the clip's SHA-256, written as ``<campus>/<day>/<clip>.mp4`` and recorded
(with the interval it covers and its gaps) before *its* receipt. Clips are kept
``clip_retention_days`` (key points ``key_point_retention_days``) and never deleted while their
alarm is open; alarm and fault records go after ``records_days``, never an open alarm.
A gateway cluster must share ``data_dir`` (the chunks of one clip may reach different members).

The link functions are pure (no I/O) and property-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

from contract import evidence as wire
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
        self._clip_locks: dict[str, asyncio.Lock] = {}
        self.clips_stored = 0

    @property
    def message_limit(self) -> int:
        """The largest image part of one evidence message: a picture or a clip's chunk."""
        return max(self.cfg.max_bytes, wire.MAX_CHUNK_BYTES)

    def refuse(self, header: EvidenceHeader) -> str | None:
        """Why a well-formed message is too big for this gateway, or None."""
        if header.clip is None:
            if header.size > self.cfg.max_bytes:
                return f"picture of {header.size} bytes exceeds evidence.max_bytes"
            return None
        if header.clip.total_size > self.cfg.max_clip_mb * 1024 * 1024:
            return f"clip of {header.clip.total_size} bytes exceeds evidence.max_clip_mb"
        return None

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
        if header.clip is not None:
            return await self._store_clip(store, header, image)
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

    async def _store_clip(self, store: Store, header: EvidenceHeader, piece: bytes) -> bool:
        """A clip's chunk: on disk; the last one assembles, checks and records the clip."""
        clip = header.clip
        assert clip is not None
        lock = self._clip_locks.setdefault(clip.clip_id, asyncio.Lock())
        try:
            async with lock:
                if await store.evidence(clip.clip_id) is not None:
                    return False  # the clip is complete: a resent chunk
                if header.error is not None or not piece:
                    return await self._clip_row(store, header, None, clip.total_sha256)
                parts = self.directory / ".parts" / clip.clip_id
                part = parts / f"{clip.part:05d}"
                new = not part.exists()
                if new:
                    await asyncio.to_thread(write_durably, part, piece)
                have = await asyncio.to_thread(
                    lambda: sum(1 for p in parts.iterdir() if p.name.isdigit())
                )
                if have < clip.parts:
                    return new
                ext = "mp4" if header.content_type == "video/mp4" else "mkv"
                day = clip.start.astimezone(UTC).strftime("%Y-%m-%d")
                relative = f"{header.campus}/{day}/{clip.clip_id}.{ext}"
                digest = await asyncio.to_thread(
                    _join_parts, parts, clip.parts, self.path(relative)
                )
                if digest != clip.total_sha256:
                    self.path(relative).unlink(missing_ok=True)
                    log.error(
                        "clip %s of alarm %s: assembled clip does not match its sha256",
                        clip.clip_id,
                        header.event_id,
                    )
                    broken = header.model_copy(
                        update={"error": "clip damaged on the way (sha256 mismatch)"}
                    )
                    await self._clip_row(store, broken, None, None)
                else:
                    await self._clip_row(store, header, relative, digest)
                    self.clips_stored += 1
                await asyncio.to_thread(shutil.rmtree, parts, True)
                return True
        finally:
            if not lock.locked():
                self._clip_locks.pop(clip.clip_id, None)

    async def _clip_row(
        self, store: Store, header: EvidenceHeader, relative: str | None, sha: str | None
    ) -> bool:
        clip = header.clip
        assert clip is not None
        return await store.add_evidence(
            EvidenceRow(
                id=clip.clip_id,
                event_id=header.event_id,
                campus=header.campus,
                edge=header.edge,
                camera=header.camera,
                shot=header.shot,
                taken_at=clip.start,
                received_at=now(),
                content_type=header.content_type if relative else None,
                size=clip.total_size if relative else 0,
                sha256=sha if relative else None,
                path=relative,
                error=header.error,
                clip_start=clip.covered_start or clip.start,
                clip_end=clip.covered_end or clip.end,
                gaps=[g.model_dump(mode="json") for g in clip.gaps],
                key_point=clip.key_point,
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
        return total + await self.sweep_clips(store, at)

    def _delete_files(self, rows: list[EvidenceRow]) -> None:
        for r in rows:
            if r.path:
                with contextlib.suppress(FileNotFoundError, ValueError):
                    self.path(r.path).unlink()

    async def sweep_clips(self, store: Store, at: datetime | None = None) -> int:
        """Delete clips past their retention, never those of an open alarm."""
        t = at or datetime.now(UTC)
        total = 0
        while True:
            rows = await store.expire_clips(
                t - timedelta(days=self.cfg.clip_retention_days),
                t - timedelta(days=self.cfg.key_point_retention_days),
            )
            await asyncio.to_thread(self._delete_files, rows)
            total += len(rows)
            if len(rows) < 1000:
                break
        # Chunks of clips that never completed (an edge that died mid-clip) go after a day.
        parts = self.directory / ".parts"

        def stale() -> None:
            if parts.is_dir():
                for d in parts.iterdir():
                    with contextlib.suppress(OSError):
                        if d.stat().st_mtime < t.timestamp() - 86400:
                            shutil.rmtree(d, True)

        await asyncio.to_thread(stale)
        if total:
            log.info("clip retention: deleted %d clip(s)", total)
        return total

    async def sweep_records(self, store: Store, at: datetime | None = None) -> tuple[int, int]:
        """Delete alarm and fault records past ``records_days`` (never an open alarm); returns
        (alarms, events) deleted."""
        cutoff = (at or datetime.now(UTC)) - timedelta(days=self.cfg.records_days)
        alarms = events = 0
        while True:
            a, e, rows = await store.expire_records(cutoff)
            await asyncio.to_thread(self._delete_files, rows)
            alarms, events = alarms + a, events + e
            if a < 1000 and e < 1000:
                break
        if alarms or events:
            log.info(
                "record retention: deleted %d closed alarm(s) and %d event(s) older than %g days",
                alarms,
                events,
                self.cfg.records_days,
            )
        return alarms, events

    async def run_sweeper(self, store: Store) -> None:
        while True:
            try:
                await self.sweep(store)
                await self.sweep_records(store)
            except Exception:
                log.exception("evidence retention sweep failed; trying again later")
            await asyncio.sleep(SWEEP_EVERY_S)


def _join_parts(parts: Path, count: int, out: Path) -> str:
    """Concatenate ``00000..`` into ``out`` (durably); returns the SHA-256 of the whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    h = hashlib.sha256()
    with open(tmp, "wb") as dst:
        for n in range(count):
            data = (parts / f"{n:05d}").read_bytes()
            h.update(data)
            dst.write(data)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, out)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return h.hexdigest()
