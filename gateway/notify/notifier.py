"""Durable notification jobs: one per (alarm, person), retries, channel fallback, escalation.

Every ``poll_interval`` the notifier

1. creates a job for the first person of the campus' list for each new alarm of the configured
   kinds (a row in ``notifications``; an alarm that already has one is not told twice, also after
   a restart);
2. sends the jobs that are due: the person's channels in order, each tried ``attempts`` times
   ``retry_delay`` apart, then the next channel; when every channel failed the job is ``failed``
   (each error kept on the row) and the next person is told at once;
3. escalates: a job sent ``escalate_after`` seconds ago whose alarm nobody acknowledged (the guard
   at the console - ``guard_acknowledged`` or later - or any recipient's ack link) makes a job for
   the next person.

Quiet hours never apply to alarms.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import exists, select

from contract.config import GatewayConfig, GatewayNotifyConfig, NotifyChannelConfig
from gateway.evidence import EvidenceVault
from gateway.notify.channels import (
    ChannelError,
    Message,
    send_email,
    send_sms,
    send_webhook,
)
from gateway.store.models import AlarmRow, NotificationRow
from gateway.store.repo import Store

log = logging.getLogger(__name__)

ACKED_STATES = frozenset({"guard_acknowledged", "dispatched", "on_scene", "closed"})
"""Alarm states that mean someone at the school has taken it on."""

LOOKBACK = timedelta(hours=1)
"""At start, alarms this old without a notification job still get one (a restart mid-alarm)."""


def _now() -> datetime:
    return datetime.now(UTC)


class Notifier:
    """Tells the people of ``notify.recipients`` of alarms; run :meth:`run` as a task."""

    def __init__(self, cfg: GatewayConfig, store: Store, vault: EvidenceVault) -> None:
        assert cfg.notify is not None
        self.cfg: GatewayNotifyConfig = cfg.notify
        self._store = store
        self._vault = vault
        self._campus_names = {c.id: c.name for c in cfg.campuses}
        key = self.cfg.ack_secret()
        # Without a configured key, ack links work until the gateway restarts.
        self._key = key or secrets.token_bytes(32)
        self._since = _now() - LOOKBACK
        self.wake = asyncio.Event()
        self.sent = 0
        self.failed_attempts = 0
        self.escalations = 0

    # --- people ------------------------------------------------------------------------------

    def recipients(self, campus: str) -> list[str]:
        return [r.name for r in self.cfg.recipients if r.campuses == "*" or campus in r.campuses]

    def _recipient(self, campus: str, step: int) -> list[NotifyChannelConfig] | None:
        mine = [r for r in self.cfg.recipients if r.campuses == "*" or campus in r.campuses]
        return mine[step].channels if step < len(mine) else None

    # --- ack links ---------------------------------------------------------------------------

    def token(self, job_id: int, alarm_id: str) -> str:
        mac = hmac.new(self._key, f"{job_id}:{alarm_id}".encode(), hashlib.sha256).digest()
        sig = base64.urlsafe_b64encode(mac[:18]).decode().rstrip("=")
        return f"{job_id}.{alarm_id}.{sig}"

    def check_token(self, token: str) -> tuple[int, str] | None:
        parts = token.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return None
        job_id, alarm_id = int(parts[0]), parts[1]
        if not hmac.compare_digest(self.token(job_id, alarm_id), token):
            return None
        return job_id, alarm_id

    def ack_link(self, job_id: int, alarm_id: str) -> str | None:
        if self.cfg.public_url is None:
            return None
        return f"{self.cfg.public_url.rstrip('/')}/api/notify/ack/{self.token(job_id, alarm_id)}"

    async def acknowledge(self, token: str) -> NotificationRow | None:
        """A recipient clicked the ack link: stops the escalation of that alarm."""
        found = self.check_token(token)
        if found is None:
            return None
        job_id, alarm_id = found
        async with self._store.session() as s, s.begin():
            row = await s.get(NotificationRow, job_id)
            if row is None or row.alarm_id != alarm_id:
                return None
            if row.acked_at is None:
                row.acked_at = _now()
                log.info("alarm %s acknowledged by %s (ack link)", alarm_id, row.recipient)
        return row

    async def jobs(self, alarm_id: str) -> list[NotificationRow]:
        async with self._store.session() as s:
            q = (
                select(NotificationRow)
                .where(NotificationRow.alarm_id == alarm_id)
                .order_by(NotificationRow.id)
            )
            return list((await s.execute(q)).scalars())

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notifier: one round failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.cfg.poll_interval)
            self.wake.clear()

    async def tick(self) -> None:
        await self._new_alarms()
        await self._send_due()
        await self._escalate()

    async def _new_alarms(self) -> None:
        q = select(AlarmRow).where(
            AlarmRow.received_at >= self._since,
            AlarmRow.kind.in_(list(self.cfg.kinds)),
            AlarmRow.restore.is_(False),
            ~exists().where(NotificationRow.alarm_id == AlarmRow.id),
        )
        if not self.cfg.drills:
            q = q.where(AlarmRow.drill.is_(False))
        async with self._store.session() as s, s.begin():
            for alarm in (await s.execute(q)).scalars():
                if not self.recipients(alarm.campus):
                    continue
                s.add(self._job(alarm.id, alarm.campus, 0))

    def _job(self, alarm_id: str, campus: str, step: int) -> NotificationRow:
        now = _now()
        return NotificationRow(
            alarm_id=alarm_id,
            campus=campus,
            step=step,
            recipient=self.recipients(campus)[step],
            channel=0,
            via=None,
            state="pending",
            attempts=0,
            next_at=now,
            created_at=now,
            escalated=False,
            errors="",
        )

    async def _send_due(self) -> None:
        async with self._store.session() as s:
            q = select(NotificationRow).where(
                NotificationRow.state == "pending", NotificationRow.next_at <= _now()
            )
            due = list((await s.execute(q)).scalars())
        if due:
            await asyncio.gather(*(self._deliver(job) for job in due))

    async def _message(self, job: NotificationRow) -> Message:
        async with self._store.session() as s:
            alarm = await s.get(AlarmRow, job.alarm_id)
        assert alarm is not None
        edge_ts = alarm.edge_ts if alarm.edge_ts.tzinfo else alarm.edge_ts.replace(tzinfo=UTC)
        base = self.cfg.public_url.rstrip("/") if self.cfg.public_url else None
        return Message(
            alarm_id=alarm.id,
            campus=alarm.campus,
            campus_name=self._campus_names.get(alarm.campus, ""),
            kind=alarm.kind,
            what=alarm.text or alarm.kind,
            where=alarm.location or alarm.zone or "",
            when=edge_ts.isoformat(timespec="seconds"),
            snapshot_link=self._vault.link_for(alarm.id, edge_ts),
            alarm_link=f"{base}/api/alarms/{alarm.id}" if base else None,
            ack_link=self.ack_link(job.id, alarm.id),
            recipient=job.recipient,
        )

    async def _send(self, channel: NotifyChannelConfig, msg: Message) -> None:
        if channel.type == "email":
            assert self.cfg.smtp is not None
            await send_email(self.cfg.smtp, channel.to, msg)
        elif channel.type == "sms":
            assert self.cfg.sms is not None
            await send_sms(self.cfg.sms, channel.to, msg)
        else:
            await send_webhook(channel.to, self.cfg.webhook_timeout, msg)

    async def _deliver(self, job: NotificationRow) -> None:
        channels = self._recipient(job.campus, job.step)
        error: str | None = None
        channel: NotifyChannelConfig | None = None
        if channels is None or job.channel >= len(channels):
            error = "recipient or channel no longer configured"
        else:
            channel = channels[job.channel]
            try:
                await self._send(channel, await self._message(job))
            except ChannelError as exc:
                error = str(exc)
            except Exception as exc:  # a bug in one channel must not stop the others
                log.exception("notify: %s via %s", job.recipient, channel.type)
                error = f"{type(exc).__name__}: {exc}"
        now = _now()
        async with self._store.session() as s, s.begin():
            row = await s.get(NotificationRow, job.id)
            if row is None or row.state != "pending":
                return
            if error is None and channel is not None:
                row.state, row.via, row.sent_at = "sent", channel.type, now
                row.escalate_at = now + timedelta(seconds=self.cfg.escalate_after)
                self.sent += 1
                log.info("alarm %s: %s told by %s", row.alarm_id, row.recipient, channel.type)
                return
            self.failed_attempts += 1
            what = f"{channel.type} {channel.to}" if channel else "-"
            row.errors += f"{now.isoformat(timespec='seconds')} {what}: {error}\n"
            row.attempts += 1
            log.warning(
                "alarm %s: telling %s by %s failed: %s", row.alarm_id, row.recipient, what, error
            )
            if channels is not None and row.attempts < self.cfg.attempts:
                row.next_at = now + timedelta(seconds=self.cfg.retry_delay)
            elif channels is not None and row.channel + 1 < len(channels):
                row.channel, row.attempts, row.next_at = row.channel + 1, 0, now
            else:
                # Nobody reached this way: the next person at once.
                row.state, row.escalate_at = "failed", now
        self.wake.set()

    async def _acknowledged(self, alarm_id: str) -> bool:
        async with self._store.session() as s:
            alarm = await s.get(AlarmRow, alarm_id)
            if alarm is None or alarm.guard_ack_at is not None or alarm.state in ACKED_STATES:
                return True
            q = select(NotificationRow.id).where(
                NotificationRow.alarm_id == alarm_id, NotificationRow.acked_at.is_not(None)
            )
            return (await s.execute(q.limit(1))).first() is not None

    async def _escalate(self) -> None:
        async with self._store.session() as s:
            q = select(NotificationRow).where(
                NotificationRow.state.in_(["sent", "failed"]),
                NotificationRow.escalated.is_(False),
                NotificationRow.escalate_at <= _now(),
            )
            due = list((await s.execute(q)).scalars())
        for job in due:
            acked = await self._acknowledged(job.alarm_id)
            async with self._store.session() as s, s.begin():
                row = await s.get(NotificationRow, job.id)
                if row is None or row.escalated:
                    continue
                row.escalated = True
                nxt = row.step + 1
                if acked or nxt >= len(self.recipients(row.campus)):
                    continue
                s.add(self._job(row.alarm_id, row.campus, nxt))
                self.escalations += 1
                log.warning(
                    "alarm %s: not acknowledged; telling %s next",
                    row.alarm_id,
                    self.recipients(row.campus)[nxt],
                )
            self.wake.set()
