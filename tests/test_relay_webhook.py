"""The signed webhook sink end to end (real Mosquitto, the gateway, the receiver simulator over
real HTTP(S)), its pure document / signature module, routing and the worker's campus lanes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import ssl
import time
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import jsonschema
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from contract import topics
from contract.config import CampusAccount, GatewayConfig, RoutingRule, parse_config
from contract.models import AlarmStatus, Event
from drivers.webhook import doc
from gateway.relay.base import Delivery
from gateway.relay.routing import RoutedSink
from gateway.service import run_gateway
from gateway.store.models import RelayJob
from simulators.police import PoliceReceiver
from simulators.webhook_receiver import WebhookReceiver
from tests.gwkit import CAMPUS, client, gateway_config, make_event, publish_event
from tests.helpers import Mosquitto, wait_for

ROOT = Path(__file__).resolve().parent.parent
SECRET = "webhook-shared-secret-0123456789"
ADMIN = "admin-token-0123456789abcdef"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
CAMPUS_B = "campus-b"


def config_with(
    tmp: Path,
    broker: int,
    *,
    police_port: int | None = None,
    db_url: str | None = None,
    two_campuses: bool = False,
    more_campuses: tuple[str, ...] = (),
    **sections: Any,
) -> GatewayConfig:
    """The test gateway config plus sections (webhook:, cap:, gb28181:, routing:, ...)."""
    base = gateway_config(tmp, broker, police_port, http=True, db_url=db_url)
    data = base.model_dump(mode="json")
    if two_campuses:
        data["campuses"].append(
            {
                "id": CAMPUS_B,
                "name": "School B",
                "account": "5678",
                "geo": {"lat": 39.8, "lon": 116.4},
            }
        )
    for i, extra in enumerate(more_campuses):
        data["campuses"].append({"id": extra, "name": extra, "account": f"{7000 + i}"})
    data["api_tokens"] = [{"user": "admin", "role": "admin", "campuses": ["*"], "token": ADMIN}]
    data.update(sections)
    return parse_config(data, GatewayConfig, "test")


def webhook_section(url: str, **kw: Any) -> dict[str, Any]:
    return {"url": url, "secret": SECRET, "timeout": 5.0, **kw}


async def state_of(gw: Any, alarm_id: str) -> str | None:
    found = await gw.store.alarm(alarm_id)
    return None if found is None else found[0].state


async def job_state(gw: Any, alarm_id: str, sink: str) -> str | None:
    async with gw.store.session() as s:
        row = (
            await s.execute(
                select(RelayJob).where(RelayJob.alarm_id == alarm_id, RelayJob.sink == sink)
            )
        ).scalar_one_or_none()
        return None if row is None else row.state


async def collect_status(c: aiomqtt.Client, into: list[AlarmStatus]) -> None:
    async for m in c.messages:
        into.append(AlarmStatus.model_validate_json(bytes(m.payload)))  # type: ignore[arg-type]


# --- end to end -------------------------------------------------------------------------------


async def test_500_then_200_delivered_exactly_once(
    mosquitto: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    async with WebhookReceiver(SECRET.encode()) as rx:
        rx.fail_next = 2
        cfg = config_with(tmp_path, mosquitto.port, db_url=db_url, webhook=webhook_section(rx.url))
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set, what="gateway connected")
            ev = make_event()
            await publish_event(campus, ev)
            await publish_event(campus, ev)  # a repeat from the campus changes nothing
            await wait_for(
                lambda: _is(gw, ev.id, "police_received"), timeout=15, what="after the 500s"
            )
            assert rx.counters.faults_answered == 2
            assert rx.counters.bad_signatures == 0
            [got] = rx.received
            assert got.key == ev.id
            body = got.json()
            schema = json.loads((ROOT / "docs/schemas/police-alarm-v1.schema.json").read_text())
            jsonschema.validate(body, schema)
            assert (body["alarm_id"], body["kind"], body["campus"]["id"]) == (
                ev.id,
                "panic",
                CAMPUS,
            )
            assert body["geo"] == {"lat": 39.7, "lon": 116.3}
            found = await gw.store.alarm(ev.id)
            assert found is not None
            steps = [s.state for s in found[1]]
            assert steps == ["received", "delivery_failed", "police_received"]
            assert found[0].police_path == "webhook"
            assert await job_state(gw, ev.id, "webhook") == "done"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
                health = (await http.get("/api/health", headers=ADMIN_AUTH)).json()
            sink = health["police_sinks"]["webhook"]
            assert sink["ok"] is True and sink["delivered"] == 1 and sink["retried"] == 2


async def _is(gw: Any, alarm_id: str, state: str) -> bool:
    return await state_of(gw, alarm_id) == state


async def test_retry_after_honoured_on_429(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with WebhookReceiver(SECRET.encode()) as rx:
        rx.fail_next, rx.fail_status, rx.fail_retry_after = 1, 429, "2"
        cfg = config_with(tmp_path, mosquitto.port, webhook=webhook_section(rx.url))
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            ev = make_event()
            started = time.monotonic()
            await publish_event(campus, ev)
            await wait_for(lambda: _is(gw, ev.id, "police_received"), timeout=15)
            # The default back-off after one failure is 1 s; the receiver asked for 2 s.
            assert time.monotonic() - started >= 2.0
            assert len(rx.received) == 1


async def test_400_not_retried_and_surfaced(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.relay.worker")
    async with WebhookReceiver(SECRET.encode()) as rx:
        rx.reject_next = 1
        cfg = config_with(tmp_path, mosquitto.port, webhook=webhook_section(rx.url))
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await campus.subscribe(topics.alarm_status_topic(CAMPUS), qos=1)
            statuses: list[AlarmStatus] = []
            listener = asyncio.create_task(collect_status(campus, statuses))
            await wait_for(gw.mqtt.connected.is_set)
            ev = make_event()
            await publish_event(campus, ev)
            await wait_for(lambda: _is(gw, ev.id, "police_rejected"), what="rejected")
            # Finished for good: the job is closed, so nothing will ever send it again.
            assert await job_state(gw, ev.id, "webhook") == "rejected"
            assert rx.counters.requests == 1 and rx.received == []
            found = await gw.store.alarm(ev.id)
            assert found is not None
            [rejected] = [s for s in found[1] if s.state == "police_rejected"]
            assert "HTTP 400" in rejected.note and "unknown account" in rejected.note
            await wait_for(lambda: any(s.state == "police_rejected" for s in statuses))
            assert "unknown account" in next(
                s.note for s in statuses if s.state == "police_rejected"
            )
            assert any(
                "refused alarm" in r.getMessage() and "HTTP 400" in r.getMessage()
                for r in caplog.records
            )
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await listener


async def test_slow_receiver_for_one_campus_does_not_delay_another(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with WebhookReceiver(SECRET.encode()) as rx:
        rx.delay_if = {f'"id":"{CAMPUS}"': 20.0}  # campus A's alarms hang at the receiver
        cfg = config_with(
            tmp_path,
            mosquitto.port,
            two_campuses=True,
            webhook=webhook_section(rx.url, timeout=25.0),
        )
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            a1, a2 = make_event(seq=1), make_event(seq=2, zone_no=16)
            b = make_event(campus=CAMPUS_B, seq=1)
            await publish_event(campus, a1)
            await publish_event(campus, a2)
            await wait_for(lambda: rx.counters.requests >= 1, what="A's alarm at the receiver")
            await publish_event(campus, b)
            await wait_for(lambda: [r.key for r in rx.received] == [b.id], what="B delivered")
            assert await state_of(gw, a1.id) == "received"  # A's is still stuck
            assert rx.counters.requests == 2  # A's second alarm waits behind its first
            rx.release()
            await wait_for(lambda: len(rx.received) == 3, what="A's alarms after the release")
            # Per campus, in order.
            assert [r.key for r in rx.received] == [b.id, a1.id, a2.id]


async def test_concurrency_is_bounded(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """relay_concurrency 2: three campuses' alarms, all held by the receiver: two in flight,
    the third waits for a slot; all three go out once the receiver answers."""
    async with WebhookReceiver(SECRET.encode()) as rx:
        rx.delay = 20.0
        cfg = config_with(
            tmp_path,
            mosquitto.port,
            two_campuses=True,
            more_campuses=("campus-c",),
            relay_concurrency=2,
            webhook=webhook_section(rx.url, timeout=25.0),
        )
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            events = [make_event(campus=c) for c in (CAMPUS, CAMPUS_B, "campus-c")]
            for ev in events:
                await publish_event(campus, ev)
            worker = gw.workers["webhook"]
            await wait_for(lambda: rx.counters.in_progress == 2, what="two in flight")
            await wait_for(lambda: len(worker.lanes()) == 3, what="three campuses queued")
            assert worker.in_flight == 2 and rx.counters.requests == 2
            rx.release()
            await wait_for(lambda: len(rx.received) == 3, what="all three delivered")
            assert rx.counters.max_in_progress == 2
            assert sorted(r.key for r in rx.received) == sorted(ev.id for ev in events)


async def test_inbound_status_moves_the_alarm_and_reaches_the_campus(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with WebhookReceiver(SECRET.encode()) as rx:
        cfg = config_with(tmp_path, mosquitto.port, webhook=webhook_section(rx.url))
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            rx.status_url = f"http://127.0.0.1:{gw.http_port}/api/police/webhook/status"
            await campus.subscribe(topics.alarm_status_topic(CAMPUS), qos=1)
            statuses: list[AlarmStatus] = []
            listener = asyncio.create_task(collect_status(campus, statuses))
            await wait_for(gw.mqtt.connected.is_set)
            ev = make_event()
            await publish_event(campus, ev)
            await wait_for(lambda: _is(gw, ev.id, "police_received"))
            # "received" is the receiver's own ACK: the alarm already shows it, nothing new.
            r = await rx.post_status(ev.id, "received")
            assert r.status_code == 200 and r.json()["changed"] is False
            r = await rx.post_status(ev.id, "dispatched", "car 12 on its way")
            assert r.status_code == 200 and r.json()["changed"] is True
            r = await rx.post_status(ev.id, "on_scene", "officers at the south gate")
            assert r.status_code == 200
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
                detail = (await http.get(f"/api/alarms/{ev.id}", headers=ADMIN_AUTH)).json()
                assert detail["state"] == "on_scene"
                assert [s["state"] for s in detail["timeline"]] == [
                    "received",
                    "police_received",
                    "dispatched",
                    "on_scene",
                ]
                assert detail["timeline"][2]["note"] == "car 12 on its way"
                await wait_for(
                    lambda: {"dispatched", "on_scene"} <= {s.state for s in statuses},
                    what="steps at the campus",
                )
                # Refused: a forged signature, a stale timestamp, a replayed request.
                bad = await rx.post_status(ev.id, "closed", signature="sha256=" + "0" * 64)
                assert bad.status_code == 401
                stale = await rx.post_status(ev.id, "closed", timestamp=int(time.time()) - 900)
                assert stale.status_code == 403
                body = doc.status_body(ev.id, "closed", "all clear")
                ts = int(time.time())
                headers = {
                    "Content-Type": "application/json",
                    **doc.signed_headers(SECRET.encode(), ts, body),
                }
                url = "/api/police/webhook/status"
                first = await http.post(url, content=body, headers=headers)
                assert first.status_code == 200
                again = await http.post(url, content=body, headers=headers)
                assert again.status_code == 403
                unsigned = await http.post(url, content=body)
                assert unsigned.status_code == 401
                assert await state_of(gw, ev.id) == "closed"
                health = (await http.get("/api/health", headers=ADMIN_AUTH)).json()
                inbound = health["police_sinks"]["webhook"]["inbound"]
                assert inbound["bad_signature"] == 1
                assert inbound["stale"] == 1
                assert inbound["replayed"] == 1
                assert inbound["unsigned"] == 1
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await listener


async def test_routing_puts_each_kind_where_configured(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with PoliceReceiver(udp=False) as police, WebhookReceiver(SECRET.encode()) as rx:
        cfg = config_with(
            tmp_path,
            mosquitto.port,
            police_port=police.tcp_port,
            two_campuses=True,
            webhook=webhook_section(rx.url),
            routing=[
                {"sinks": ["dc09"], "kinds": ["panic", "bollard_impact"]},
                {"sinks": ["webhook"], "kinds": ["camera_tamper"], "campuses": [CAMPUS]},
            ],
        )
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            panic = make_event(seq=1)
            impact = make_event(kind="bollard_impact", zone_no=22, seq=2)
            tamper = make_event(kind="camera_tamper", severity="medium", seq=3)
            tamper_b = make_event(campus=CAMPUS_B, kind="camera_tamper", severity="medium")
            fire = make_event(kind="fire", seq=4)  # no rule: goes nowhere
            for ev in (panic, impact, tamper, tamper_b, fire):
                await publish_event(campus, ev)
            await police.wait_for(lambda: len(police.alarms) >= 2)
            await wait_for(lambda: len(rx.received) >= 1)
            await wait_for(lambda: gw.ingest.accepted["event"] == 5)
            assert [m.contact_id.code for m in police.alarms if m.contact_id] == [120, 150]
            assert [r.key for r in rx.received] == [tamper.id]
            for ev in (tamper_b, fire):
                assert await job_state(gw, ev.id, "webhook") is None
                assert await job_state(gw, ev.id, "dc09") is None


# --- mutual TLS -------------------------------------------------------------------------------


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usage: Any = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


async def test_mutual_tls(mosquitto: Mosquitto, tmp_path: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test police CA", ca_key, None, ca=True)
    srv_key, cli_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    srv = _cert(
        "localhost", srv_key, ("test police CA", ca_key), usage=ExtendedKeyUsageOID.SERVER_AUTH
    )
    cli = _cert(
        "gw-test", cli_key, ("test police CA", ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write(pki / "server", srv, srv_key)
    _write(pki / "client", cli, cli_key)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    server_ctx.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    async with WebhookReceiver(SECRET.encode(), ssl_context=server_ctx) as rx:
        url = f"https://localhost:{rx.port}/alarms"
        tls = {"ca_file": str(pki / "ca.crt")}
        # Without a client certificate the receiver refuses the handshake: retried, not lost.
        cfg = config_with(tmp_path, mosquitto.port, webhook=webhook_section(url, tls=tls))
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            ev = make_event()
            await publish_event(campus, ev)
            await wait_for(lambda: _is(gw, ev.id, "delivery_failed"))
            assert rx.received == []
        tls |= {"cert_file": str(pki / "client.crt"), "key_file": str(pki / "client.key")}
        cfg = config_with(tmp_path, mosquitto.port, webhook=webhook_section(url, tls=tls))
        async with run_gateway(cfg) as gw:
            await wait_for(lambda: _is(gw, ev.id, "police_received"), timeout=15)
            assert [r.key for r in rx.received] == [ev.id]
            assert rx.client_certs, "the receiver saw the gateway's certificate"


# --- pure: document, signature, replay guard, answers, routing ------------------------------

secrets_ = st.binary(min_size=16, max_size=64)
bodies = st.binary(max_size=2048)
stamps = st.integers(min_value=1_600_000_000, max_value=2_000_000_000)


@given(secrets_, stamps, bodies)
def test_signature_verifies_once_and_only_unchanged(secret: bytes, ts: int, body: bytes) -> None:
    headers = doc.signed_headers(secret, ts, body)
    sig = headers[doc.SIGNATURE_HEADER]
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    guard = doc.ReplayGuard(secret, window=300)
    assert guard.check(headers[doc.TIMESTAMP_HEADER], sig, body, ts + 10) == "ok"
    assert guard.check(headers[doc.TIMESTAMP_HEADER], sig, body, ts + 20) == "replayed"
    assert guard.check(str(ts), sig, body + b"x", ts) == "bad_signature"
    assert guard.check(str(ts + 1), sig, body, ts) == "bad_signature"
    assert doc.ReplayGuard(secret + b"!", 300).check(str(ts), sig, body, ts) == "bad_signature"
    assert doc.ReplayGuard(secret, 300).check(str(ts), sig, body, ts + 301) == "stale"
    assert doc.ReplayGuard(secret, 300).check(str(ts), sig, body, ts - 301) == "stale"
    assert guard.check(None, sig, body, ts) == "unsigned"
    assert guard.check("soon", sig, body, ts) == "unsigned"


def test_replay_guard_forgets_after_the_window() -> None:
    guard = doc.ReplayGuard(b"k" * 16, window=300)
    sigs = [doc.signature(b"k" * 16, 1000 + i, b"{}") for i in range(3)]
    for i, s in enumerate(sigs):
        assert guard.check(str(1000 + i), s, b"{}", 1000) == "ok"
    assert guard.check(str(1000), sigs[0], b"{}", 2000) == "stale"
    guard.check(str(2000), doc.signature(b"k" * 16, 2000, b"{}"), b"{}", 2000)
    assert len(guard._seen) == 1


@given(st.integers(min_value=100, max_value=599))
def test_classify(status: int) -> None:
    answer = doc.classify(status)
    if 200 <= status < 300:
        assert answer == "delivered"
    elif status >= 500 or status in (408, 429):
        assert answer == "retry"
    else:
        assert answer == "rejected"


def test_retry_after() -> None:
    now = dt.datetime(2026, 11, 29, 8, 0, 0, tzinfo=dt.UTC)
    assert doc.retry_after("120") == 120.0
    assert doc.retry_after("Sun, 29 Nov 2026 08:00:30 GMT", now) == 30.0
    assert doc.retry_after("Sun, 29 Nov 2026 07:00:00 GMT", now) == 0.0
    assert doc.retry_after("soon") is None
    assert doc.retry_after(None) is None


_campus = CampusAccount(id=CAMPUS, name='学校 "A"', account="1234", address="路 1")
_kinds = st.sampled_from(["panic", "fire", "camera_tamper", "bollard_impact", "test"])


@given(
    kind=_kinds,
    restore=st.booleans(),
    drill=st.booleans(),
    text=st.text(max_size=500),
    location=st.none() | st.text(max_size=200),
    zone_no=st.none() | st.integers(0, 999),
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
)
def test_document_is_valid_stable_and_round_trips(
    kind: str,
    restore: bool,
    drill: bool,
    text: str,
    location: str | None,
    zone_no: int | None,
    lat: float,
    lon: float,
) -> None:
    ev = make_event(
        kind=kind,
        restore=restore,
        drill=drill,
        text=text,
        location=location,
        zone_no=zone_no,
        geo={"lat": lat, "lon": lon},
    )
    d = doc.alarm_document(ev, _campus, gateway="gw", verification_url=None)
    jsonschema.validate(d, _SCHEMA)
    body = doc.encode(d)
    assert doc.encode(doc.alarm_document(ev, _campus, gateway="gw")) == body  # deterministic
    back = json.loads(body)
    assert back == d
    assert back["alarm_id"] == ev.id and back["drill"] is drill and back["restore"] is restore
    assert dt.datetime.fromisoformat(back["ts"].replace("Z", "+00:00")) == ev.ts.replace(
        microsecond=ev.ts.microsecond // 1000 * 1000
    )


_SCHEMA = json.loads((ROOT / "docs/schemas/police-alarm-v1.schema.json").read_text())


def test_published_examples_are_valid() -> None:
    status_schema = json.loads((ROOT / "docs/schemas/police-status-v1.schema.json").read_text())
    jsonschema.validate(
        json.loads((ROOT / "docs/schemas/police-alarm-v1.example.json").read_text()), _SCHEMA
    )
    example = (ROOT / "docs/schemas/police-status-v1.example.json").read_bytes()
    jsonschema.validate(json.loads(example), status_schema)
    assert doc.parse_status(example).state == "dispatched"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"alarm_id":"short","state":"dispatched"}',
        b'{"alarm_id":"01KB5TQ8ZJ8V5V4M6M0W3Y7F2C","state":"lost"}',
        b'{"alarm_id":"01KB5TQ8ZJ8V5V4M6M0W3Y7F2C","state":"closed","extra":1}',
        b'{"alarm_id":"01KB5TQ8ZJ8V5V4M6M0W3Y7F2C","state":"closed","at":"yesterday"}',
    ],
)
def test_bad_status_bodies(body: bytes) -> None:
    with pytest.raises(doc.StatusError):
        doc.parse_status(body)


class _Fake:
    def __init__(self, name: str, kinds: set[str]) -> None:
        self.name = name
        self.kinds = kinds

    def wants(self, event: Event) -> bool:
        return event.kind in self.kinds

    def accepts(self, event: Event) -> bool:
        return True

    async def deliver(self, event: Event, seq: int | None) -> Delivery:
        return Delivery("delivered")


def test_routing_rules() -> None:
    rules = [
        RoutingRule(sinks=["dc09", "gb28181"], kinds=["panic", "bollard_impact"]),
        RoutingRule(sinks=["webhook"], kinds=["camera_tamper"], campuses=[CAMPUS]),
        RoutingRule(sinks=["gb28181"], kinds="*", campuses=[CAMPUS_B]),
    ]
    dc09 = RoutedSink(_Fake("dc09", {"panic", "fire"}), rules)
    web = RoutedSink(_Fake("webhook", {"panic"}), rules)
    gb = RoutedSink(_Fake("gb28181", set()), rules)
    cap = RoutedSink(_Fake("cap", {"fire"}), rules)  # named by no rule: its own choice

    def where(**kw: Any) -> set[str]:
        ev = make_event(**kw)
        return {s.name for s in (dc09, web, gb, cap) if s.wants(ev)}

    assert where(kind="panic") == {"dc09", "gb28181"}
    assert where(kind="bollard_impact") == {"dc09", "gb28181"}
    assert where(kind="camera_tamper") == {"webhook"}
    assert where(kind="camera_tamper", campus=CAMPUS_B) == {"gb28181"}
    assert where(kind="fire") == {"cap"}
    # Without rules every sink keeps its own choice.
    assert RoutedSink(_Fake("dc09", {"fire"}), []).wants(make_event(kind="fire"))


def test_routing_config_is_checked(tmp_path: Path) -> None:
    from contract.config import ConfigError

    with pytest.raises(ConfigError, match="not configured"):
        config_with(tmp_path, 1883, routing=[{"sinks": ["webhook"]}])
    with pytest.raises(ConfigError, match="unknown campus"):
        config_with(
            tmp_path,
            1883,
            webhook=webhook_section("https://police.example/alarms"),
            routing=[{"sinks": ["webhook"], "campuses": ["nowhere"]}],
        )
    with pytest.raises(ConfigError, match="secret"):
        config_with(tmp_path, 1883, webhook={"url": "https://police.example/alarms"})


async def test_gateway_stopped_mid_delivery_resends_same_key_receiver_keeps_one(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The gateway stops while the receiver holds the POST (the answer is lost); after the
    restart the job goes out again with the same Idempotency-Key and body, and the receiver
    keeps the alarm once."""
    async with WebhookReceiver(SECRET.encode()) as rx:
        rx.delay = 30.0
        cfg = config_with(tmp_path, mosquitto.port, webhook=webhook_section(rx.url))
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            ev = make_event()
            await publish_event(campus, ev)
            await wait_for(lambda: rx.counters.requests == 1, what="the POST in flight")
        rx.release()  # the first POST is taken now; its answer has nobody to go to
        await wait_for(lambda: rx.counters.accepted == 1)
        async with run_gateway(cfg) as gw:
            await wait_for(lambda: _is(gw, ev.id, "police_received"), timeout=15)
        assert rx.counters.duplicates == 1
        assert [r.key for r in rx.received] == [ev.id]
