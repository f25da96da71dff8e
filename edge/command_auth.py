"""The edge's gate for commands from the centre: signature, expiry, replay (issue 11).

With ``command_signing`` configured, a bollard command, drill command or self-test request is
acted on only if the gateway's Ed25519 signature verifies (:mod:`contract.signing`), it has not
expired (its ``expires_at``, or ``issued_at`` + ``max_age`` for drills) and its id (with its step
or action) was not seen before. The seen-set is a small JSON file in the data dir, written
durably (temp file, fsync, rename, fsync folder) in the executor, not on the event loop, so a
replay after a restart, or after a crash once :meth:`CommandGuard.persisted` returned, is refused
too; entries leave it when their command expires (after that it is refused as expired anyway).
Every refusal is logged with its reason and counted by reason.

Without ``command_signing`` the edge behaves as before (the bollard policy still refuses a
replayed command id); it says once at start that commands are not verified.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from contract import signing
from contract.config import ConfigError, EdgeSigningConfig
from contract.files import write_durably
from contract.models import BollardCommandMessage, DrillCommand, SelftestRequest

log = logging.getLogger(__name__)

Command = BollardCommandMessage | DrillCommand | SelftestRequest
FUTURE_SKEW = timedelta(minutes=5)
"""A command issued further in the future than this is refused (clocks are NTP-synced)."""


class CommandGuard:
    def __init__(self, cfg: EdgeSigningConfig | None, data_dir: Path) -> None:
        self.cfg = cfg
        self.refused: Counter[str] = Counter()
        self._seen_file = data_dir / "command-seen.json"
        self._seen: dict[str, float] = {}
        self._key = None
        self._write_lock = threading.Lock()
        self._version = 0
        """Bumped for every change of the seen-set; each save carries the version it wrote."""
        self._written = 0
        """The newest version on disk (guarded by ``_write_lock``)."""
        self._last_save: asyncio.Future[None] | None = None
        if cfg is None:
            log.warning(
                "commands from the centre are NOT signature-checked: set command_signing."
                "public_key_file (the gateway's command-signing.pub) in the edge config"
            )
            return
        try:
            self._key = signing.load_public_key(cfg.public_key_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"command_signing.public_key_file: {exc}") from None
        try:
            loaded = json.loads(self._seen_file.read_text(encoding="utf-8"))
            self._seen = {str(k): float(v) for k, v in loaded.items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("command seen-set %s unreadable (%s): starting empty", self._seen_file, exc)

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def _refuse(self, topic: str, reason: str, what: str = "") -> None:
        self.refused[reason] += 1
        log.warning("refused command on %s: %s%s", topic, reason, f" ({what})" if what else "")

    def unwrap(self, topic: str, kind: str, payload: bytes) -> bytes | None:
        """The command's JSON without ``sig`` if its signature is acceptable, else ``None``."""
        if self._key is None:
            return signing.split(payload)[0]
        assert self.cfg is not None
        try:
            return signing.verify(self._key, kind, payload)
        except signing.SignatureError as exc:
            if exc.reason == "unsigned" and not self.cfg.required:
                log.warning(
                    "accepted an unsigned command on %s (command_signing.required off)", topic
                )
                return payload
            self._refuse(topic, exc.reason)
            return None

    def admit(self, topic: str, kind: str, msg: Command, now: datetime | None = None) -> bool:
        """Expiry and replay; records the command as seen when it is admitted."""
        if self._key is None:
            return True
        assert self.cfg is not None
        now = now or datetime.now(UTC)
        expires = getattr(msg, "expires_at", None) or msg.issued_at + timedelta(
            seconds=self.cfg.max_age
        )
        if now > expires:
            self._refuse(topic, "expired", f"{msg.id} expired at {expires.isoformat()}")
            return False
        if msg.issued_at > now + FUTURE_SKEW:
            self._refuse(topic, "from the future", f"{msg.id} issued {msg.issued_at.isoformat()}")
            return False
        step = getattr(msg, "step", None) or getattr(msg, "action", None) or ""
        key = f"{kind}:{msg.id}:{step}"
        ts = now.timestamp()
        self._seen = {k: v for k, v in self._seen.items() if v >= ts}
        if key in self._seen:
            self._refuse(topic, "replay", f"{msg.id} {step} already seen")
            return False
        self._seen[key] = expires.timestamp()
        self._save()
        return True

    def _save(self) -> None:
        """Persist the seen-set durably (temp file, fsync, rename, fsync folder), off the loop.

        The snapshot is taken now, in admission order; the write runs in the loop's executor.
        Writes may start out of order in the pool, so each carries its version and one older
        than what is already on disk is skipped: the file only ever moves forward.
        Without a running loop (a plain call) the write happens before returning.
        """
        self._version += 1
        version, data = self._version, json.dumps(self._seen).encode()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write(version, data)
            return
        self._last_save = loop.run_in_executor(None, self._write, version, data)

    def _write(self, version: int, data: bytes) -> None:
        with self._write_lock:
            if version <= self._written:
                return  # a newer snapshot is already on disk
            try:
                write_durably(self._seen_file, data)
            except OSError as exc:
                log.error("cannot persist the command seen-set %s: %s", self._seen_file, exc)
                return
            self._written = version

    async def persisted(self) -> None:
        """Wait until every command admitted so far is on disk (or its write failed, logged)."""
        if self._last_save is not None:
            await asyncio.shield(self._last_save)
