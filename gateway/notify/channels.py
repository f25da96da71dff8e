"""The channels: e-mail (SMTP, stdlib smtplib in a thread), an SMS gateway's HTTP API, webhooks."""

from __future__ import annotations

import asyncio
import json
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import quote

import httpx

from contract.config import SmsGatewayConfig, SmtpConfig


class ChannelError(Exception):
    """A channel did not take the message (the text is recorded on the job)."""


@dataclass(frozen=True)
class Message:
    """What a person is told of one alarm."""

    alarm_id: str
    campus: str
    campus_name: str
    kind: str
    what: str
    where: str
    when: str
    snapshot_link: str | None
    alarm_link: str | None
    ack_link: str | None
    recipient: str

    @property
    def subject(self) -> str:
        return f"[CampusGuard] ALARM {self.kind} - {self.campus_name or self.campus}"

    def text(self) -> str:
        lines = [
            f"What:  {self.what}",
            f"Where: {self.campus_name or self.campus} - {self.where}",
            f"When:  {self.when}",
        ]
        if self.snapshot_link:
            lines.append(f"Snapshot: {self.snapshot_link}")
        if self.alarm_link:
            lines.append(f"Alarm: {self.alarm_link}")
        if self.ack_link:
            lines.append(f"Acknowledge: {self.ack_link}")
        lines.append(f"Alarm id: {self.alarm_id}")
        return "\n".join(lines)

    def short(self) -> str:
        """One SMS: what, where, when and the acknowledgement link."""
        ack = f" ACK: {self.ack_link}" if self.ack_link else ""
        return f"[CampusGuard] {self.what} @ {self.campus_name or self.campus} {self.when}{ack}"

    def document(self) -> dict[str, str | None]:
        return {
            "type": "campusguard.alarm",
            "alarm_id": self.alarm_id,
            "campus": self.campus,
            "campus_name": self.campus_name,
            "kind": self.kind,
            "what": self.what,
            "where": self.where,
            "when": self.when,
            "snapshot": self.snapshot_link,
            "link": self.alarm_link,
            "ack": self.ack_link,
            "recipient": self.recipient,
            "text": self.text(),
        }


def _send_mail_blocking(cfg: SmtpConfig, to: str, msg: Message) -> None:
    mail = EmailMessage()
    mail["From"] = cfg.sender
    mail["To"] = to
    mail["Subject"] = msg.subject
    mail.set_content(msg.text())
    context = cfg.tls_context()
    smtp: smtplib.SMTP
    if cfg.security == "tls":
        smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=context)
    else:
        smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
    with smtp:
        if cfg.security == "starttls":
            smtp.starttls(context=context)
        if cfg.username:
            smtp.login(cfg.username, cfg.secret())
        smtp.send_message(mail)


async def send_email(cfg: SmtpConfig, to: str, msg: Message) -> None:
    try:
        async with asyncio.timeout(cfg.timeout + 1):
            await asyncio.to_thread(_send_mail_blocking, cfg, to, msg)
    except (OSError, smtplib.SMTPException, TimeoutError) as exc:
        raise ChannelError(f"smtp {cfg.host}:{cfg.port}: {exc or type(exc).__name__}") from None


def _fill(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


async def send_sms(cfg: SmsGatewayConfig, to: str, msg: Message) -> None:
    text = msg.short()
    url = _fill(cfg.url, {"to": quote(to), "text": quote(text)})
    headers = {"Content-Type": cfg.content_type}
    if cfg.auth_header:
        headers[cfg.auth_header] = cfg.secret()
    body = _fill(
        cfg.body,
        {"to": to, "text": text, "to_json": json.dumps(to), "text_json": json.dumps(text)},
    )
    try:
        async with httpx.AsyncClient(timeout=cfg.timeout) as http:
            if cfg.method == "GET":
                r = await http.get(url, headers=headers)
            else:
                r = await http.post(url, content=body.encode(), headers=headers)
    except httpx.HTTPError as exc:
        raise ChannelError(f"sms gateway: {exc or type(exc).__name__}") from None
    if r.status_code >= 300:
        raise ChannelError(f"sms gateway answered {r.status_code}: {r.text[:100]}")


async def send_webhook(url: str, limit_s: float, msg: Message) -> None:
    try:
        async with httpx.AsyncClient(timeout=limit_s) as http:
            r = await http.post(url, json=msg.document())
    except httpx.HTTPError as exc:
        raise ChannelError(f"webhook: {exc or type(exc).__name__}") from None
    if r.status_code >= 300:
        raise ChannelError(f"webhook answered {r.status_code}: {r.text[:100]}")
