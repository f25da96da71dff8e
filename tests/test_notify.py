"""People told of alarms (issue 13, part 4): a real SMTP server in-process (aiosmtpd), a real HTTP
receiver for the SMS gateway and the messaging webhook, retries and channel fallback with the
failure visible, and escalation to the next person unless someone acknowledges."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from email import message_from_bytes
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from pydantic import SecretStr

from contract.config import ApiToken, GatewayConfig, GatewayNotifyConfig
from gateway.service import GatewayRuntime, run_gateway
from tests.gwkit import CAMPUS, gateway_config, make_event
from tests.helpers import Mosquitto, free_port, wait_for

PUBLIC = "https://cg.district.example"


class Mailbox:
    def __init__(self) -> None:
        self.mails: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.mails.append((list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@contextlib.contextmanager
def smtp_server() -> Any:
    box = Mailbox()
    port = free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield box, port
    finally:
        ctl.stop()


class Receiver:
    """A real HTTP server recording every request (SMS gateway and webhooks)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.method, request.path_qs, dict(request.headers), body))
        return web.json_response({"ok": True})

    def on(self, prefix: str) -> list[tuple[str, str, dict[str, str], bytes]]:
        return [r for r in self.requests if r[1].startswith(prefix)]


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield rec
    finally:
        await runner.cleanup()


ADMIN = "admin-token-0123456789abcdef"


def gw_cfg(tmp: Path, broker: int, notify: dict[str, Any]) -> GatewayConfig:
    cfg = gateway_config(tmp, broker, None, http=True)
    ev = cfg.evidence.model_copy(
        update={"public_url": PUBLIC, "link_key": SecretStr("link-key-0123456789abcdef-xyz")}
    )
    base = {"public_url": PUBLIC, "poll_interval": 0.1, "retry_delay": 0.1}
    n = GatewayNotifyConfig.model_validate({**base, **notify})
    tok = ApiToken(user="admin", role="admin", campuses=["*"], token=SecretStr(ADMIN))
    return cfg.model_copy(update={"notify": n, "evidence": ev, "api_tokens": [tok]})


async def alarm(gw: GatewayRuntime, **kw: Any) -> str:
    ev = make_event(seq=0, **kw)
    await gw.ingest.submit_local(ev)
    assert gw.notifier is not None
    gw.notifier.wake.set()
    return ev.id


async def jobs(gw: GatewayRuntime, alarm_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
        r = await http.get(f"/api/notify/{alarm_id}", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200, r.text
        out: list[dict[str, Any]] = r.json()
        return out


async def test_principal_gets_the_mail_with_what_where_and_links(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    with smtp_server() as (box, port):
        notify = {
            "smtp": {
                "host": "127.0.0.1",
                "port": port,
                "security": "none",
                "sender": "cg@district.example",
            },
            "recipients": [
                {
                    "name": "principal",
                    "role": "principal",
                    "channels": [{"type": "email", "to": "principal@school.example"}],
                }
            ],
        }
        async with run_gateway(gw_cfg(tmp_path, mosquitto.port, notify)) as gw:
            t0 = time.monotonic()
            alarm_id = await alarm(gw, location="south gate guard booth")
            await wait_for(lambda: len(box.mails) == 1, timeout=5, what="mail")
            assert time.monotonic() - t0 < 3
            rcpt, raw = box.mails[0]
            assert rcpt == ["principal@school.example"]
            mail = message_from_bytes(raw)
            assert "panic" in mail["Subject"] and "Test school" in mail["Subject"]
            body = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
            assert "What:  panic button pressed" in body
            assert "south gate guard booth" in body
            assert f"{PUBLIC}/verify/{alarm_id}" in body  # the snapshot (verification) link
            assert f"{PUBLIC}/api/alarms/{alarm_id}" in body
            assert f"{PUBLIC}/api/notify/ack/" in body
            done = await jobs(gw, alarm_id)
            assert [(j["recipient"], j["state"], j["via"]) for j in done] == [
                ("principal", "sent", "email")
            ]
            # The alarm's own record says who was told, and how.
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
                r = await http.get(
                    f"/api/alarms/{alarm_id}", headers={"Authorization": f"Bearer {ADMIN}"}
                )
            [told] = r.json()["notified"]
            assert (told["recipient"], told["state"], told["via"]) == ("principal", "sent", "email")
            assert told["sent_at"] and told["acked_at"] is None
            # A restore and a drill are not alarms to tell people of.
            await alarm(gw, restore=True, severity="info")
            await alarm(gw, drill=True)
            await asyncio.sleep(0.5)
            assert len(box.mails) == 1


async def test_smtp_down_retries_then_the_sms_gateway_failure_visible(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    dead = free_port()  # nothing listens: the mail server is down
    async with receiver() as rec:
        notify = {
            "attempts": 2,
            "smtp": {"host": "127.0.0.1", "port": dead, "sender": "cg@district.example"},
            "sms": {
                "url": f"http://127.0.0.1:{rec.port}/sms/send?to={{to}}",
                "auth_header": "X-Api-Key",
                "auth_value": "sms-key-123",
            },
            "recipients": [
                {
                    "name": "lead",
                    "role": "security lead",
                    "channels": [
                        {"type": "email", "to": "lead@school.example"},
                        {"type": "sms", "to": "+8613800000000"},
                    ],
                }
            ],
        }
        async with run_gateway(gw_cfg(tmp_path, mosquitto.port, notify)) as gw:
            alarm_id = await alarm(gw)
            await wait_for(lambda: len(rec.on("/sms/")) == 1, timeout=10, what="sms")
            method, path, headers, body = rec.on("/sms/")[0]
            assert method == "POST" and "to=%2B8613800000000" in path
            assert headers["X-Api-Key"] == "sms-key-123"
            doc = json.loads(body)
            assert doc["to"] == "+8613800000000" and "panic button pressed" in doc["text"]
            assert "/api/notify/ack/" in doc["text"]

            async def sent() -> list[dict[str, Any]]:
                return [j for j in await jobs(gw, alarm_id) if j["state"] == "sent"]

            deadline = time.monotonic() + 5
            while not await sent() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            (job,) = await jobs(gw, alarm_id)
            assert (job["state"], job["via"], job["channel"]) == ("sent", "sms", 1)
            assert len(job["errors"]) == 2  # two tries of the mail server, both visible
            assert all("email lead@school.example: smtp 127.0.0.1" in e for e in job["errors"])


async def test_escalation_unless_acknowledged(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with receiver() as rec:
        url = f"http://127.0.0.1:{rec.port}"
        notify = {
            "escalate_after": 0.8,
            "recipients": [
                {"name": "principal", "channels": [{"type": "webhook", "to": f"{url}/p"}]},
                {"name": "lead", "channels": [{"type": "webhook", "to": f"{url}/l"}]},
            ],
        }
        async with run_gateway(gw_cfg(tmp_path, mosquitto.port, notify)) as gw:

            def told(prefix: str, alarm_id: str) -> list[dict[str, Any]]:
                docs = [json.loads(r[3]) for r in rec.on(prefix)]
                return [d for d in docs if d["alarm_id"] == alarm_id]

            # Nobody acknowledges: the lead is told after escalate_after.
            a1 = await alarm(gw)
            await wait_for(lambda: len(told("/p", a1)) == 1, timeout=5, what="principal")
            t0 = time.monotonic()
            await wait_for(lambda: len(told("/l", a1)) == 1, timeout=5, what="lead")
            assert time.monotonic() - t0 >= 0.5
            doc = told("/p", a1)[0]
            assert doc["type"] == "campusguard.alarm" and doc["campus"] == CAMPUS
            assert doc["snapshot"].startswith(f"{PUBLIC}/verify/{a1}")

            # The guard acknowledges at the console: nobody else is called.
            a2 = await alarm(gw)
            await wait_for(lambda: len(told("/p", a2)) == 1, timeout=5, what="principal")
            await gw.store.set_alarm_state(a2, "guard_acknowledged", note="guard zhang")

            # The principal clicks the ack link: nobody else is called.
            a3 = await alarm(gw)
            await wait_for(lambda: len(told("/p", a3)) == 1, timeout=5, what="principal")
            link = urlsplit(told("/p", a3)[0]["ack"])
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
                r = await http.get(link.path)
                assert r.status_code == 200 and "acknowledged by principal" in r.text
                bad = await http.get(link.path[:-3] + "xyz")
                assert bad.status_code == 404
            await asyncio.sleep(1.5)
            assert told("/l", a2) == [] and told("/l", a3) == []
            assert [j["acked_at"] is not None for j in await jobs(gw, a3)] == [True]


async def test_mail_over_starttls_with_login_and_a_wrong_password_visible(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """What a district mail server asks: STARTTLS (its certificate checked against the CA in
    ``ca_file``), then AUTH LOGIN; a wrong password is a failure the technician can read."""
    import ssl
    import subprocess
    import sys

    from aiosmtpd.smtp import AuthResult, LoginPassword

    certs = tmp_path / "certs"
    subprocess.run(
        [
            *(sys.executable, "-m", "campusguard.cli", "certs", "generate"),
            *("--out", str(certs), "--ip", "127.0.0.1", "--campus", CAMPUS),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs / "server.crt", certs / "server.key")

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"cg-mailer",
            b"mail-secret-1",
        )
        return AuthResult(success=ok, handled=False)  # a failure answers 535

    box = Mailbox()
    ctl = Controller(
        box,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=tls,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticator,
    )
    ctl.start()
    try:
        smtp = {
            "host": "127.0.0.1",
            "port": ctl.port,
            "security": "starttls",
            "username": "cg-mailer",
            "password": "mail-secret-1",
            "ca_file": str(certs / "ca.crt"),
            "sender": "cg@district.example",
        }
        people = [{"name": "lead", "channels": [{"type": "email", "to": "lead@school.example"}]}]
        notify = {"smtp": smtp, "recipients": people}
        async with run_gateway(gw_cfg(tmp_path, mosquitto.port, notify)) as gw:
            await alarm(gw)
            await wait_for(lambda: len(box.mails) == 1, timeout=10, what="mail over STARTTLS")
            assert box.mails[0][0] == ["lead@school.example"]
        wrong = {**notify, "smtp": {**smtp, "password": "not-the-password"}}
        async with run_gateway(gw_cfg(tmp_path / "b", mosquitto.port, wrong)) as gw:
            alarm_id = await alarm(gw)
            found: list[dict[str, Any]] = []

            async def failed() -> bool:
                found[:] = await jobs(gw, alarm_id)
                return bool(found and found[0]["errors"])

            deadline = time.monotonic() + 10
            while not await failed():
                assert time.monotonic() < deadline, "no failure recorded"
                await asyncio.sleep(0.1)
            assert "535" in found[0]["errors"][0], found[0]["errors"]
            assert "not-the-password" not in str(found)
            assert len(box.mails) == 1
    finally:
        ctl.stop()
