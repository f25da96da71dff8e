"""The gateway composed: store, sinks, relay workers, MQTT, HTTP — started and stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

from contract import signing
from contract.aio import cancel_and_wait
from contract.config import Dc09Path, GatewayConfig
from contract.models import Event, new_id, utcnow
from drivers.dc09.crypto import key_from_config
from drivers.dc09.sender import DC09Sender, HealthCallback, PathConfig, SenderConfig
from gateway.drills import Drills
from gateway.evidence import EvidenceVault
from gateway.ingest import Ingest
from gateway.mqtt import GatewayMqtt
from gateway.notify import Notifier
from gateway.relay.base import Sink
from gateway.relay.build import extra_sinks, routed
from gateway.relay.dc09 import Dc09Sink
from gateway.relay.worker import RelayWorker
from gateway.selftest import SelftestService
from gateway.store.db import make_engine, migrate
from gateway.store.repo import ClaimedJob, Store
from gateway.telemetry.sink import EmbeddedSink, InfluxSink, TelemetrySink
from gateway.telemetry.writer import TelemetryWriter
from gateway.testsignals import TestSignalWatch

log = logging.getLogger(__name__)


@dataclass
class PathHealth:
    ok: bool = True
    since: datetime = field(default_factory=utcnow)
    reason: str = ""


@dataclass
class GatewayRuntime:
    cfg: GatewayConfig
    store: Store
    ingest: Ingest
    mqtt: GatewayMqtt
    workers: dict[str, RelayWorker]
    vault: EvidenceVault
    telemetry: TelemetrySink
    telemetry_mqtt: GatewayMqtt
    paths: dict[str, PathHealth] = field(default_factory=dict)
    http_port: int | None = None
    drills: Drills | None = None
    selftests: SelftestService | None = None
    testsignals: TestSignalWatch | None = None
    notifier: Notifier | None = None


def _dc09_sender(cfg: GatewayConfig, on_health: HealthCallback) -> DC09Sender | None:
    d = cfg.dc09
    if d is None:
        return None
    key_text = d.key_text()
    key = key_from_config(key_text, d.key_encoding) if key_text else None

    def path(p: Dc09Path | None) -> PathConfig | None:
        return None if p is None else PathConfig(host=p.host, port=p.port, transport=p.transport)

    return DC09Sender(
        SenderConfig(
            protocol=d.protocol,
            receiver=d.receiver,
            prefix=d.prefix,
            primary=path(d.primary),
            backup=path(d.backup),
            key=key,
            ack_timeout=d.ack_timeout,
            attempts=d.attempts,
            connections=d.connections,
            supervision_interval=d.supervision_interval,
            supervision_account=d.supervision_account or cfg.campuses[0].account,
        ),
        on_health=on_health,
    )


@contextlib.asynccontextmanager
async def run_gateway(cfg: GatewayConfig) -> AsyncIterator[GatewayRuntime]:
    cfg.gateway.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.database.connect_url())
    store: Store | None = None
    try:
        await migrate(engine)
        store = Store(engine)
        orphans = await store.release_claims(cfg.gateway.id)
        if orphans:
            log.warning("resuming %d relay job(s) left unfinished by the last run", orphans)
        campuses = {c.id: c for c in cfg.campuses}
        async with contextlib.AsyncExitStack() as stack:
            sinks: list[Sink] = []
            rt_ref: list[GatewayRuntime] = []

            def on_health(name: str, ok: bool, reason: str) -> None:
                if rt_ref:
                    _path_state(rt_ref[0], name, ok, reason)

            vault = EvidenceVault(cfg.evidence, cfg.gateway.data_dir / "evidence")
            sender = _dc09_sender(cfg, on_health)
            if sender is not None and cfg.dc09 is not None:
                await stack.enter_async_context(sender)
                sinks.append(Dc09Sink(cfg.dc09, campuses, sender, link=vault.link_for))
            sinks += await extra_sinks(cfg, campuses, stack, vault.link_for, store)
            sinks = routed(cfg, sinks)  # the routing: rules decide what goes where
            workers: dict[str, RelayWorker] = {}
            for sink in sinks:
                workers[sink.name] = await stack.enter_async_context(
                    RelayWorker(store, sink, cfg.gateway.id, concurrency=cfg.relay_concurrency)
                )

            def dispatch(job: ClaimedJob) -> None:
                workers[job.sink].submit(job)

            background: list[asyncio.Task[None]] = []
            stack.push_async_callback(cancel_and_wait, background)
            telemetry: TelemetrySink
            if cfg.influxdb is not None:
                writer = TelemetryWriter.from_config(cfg.influxdb, cfg.gateway.data_dir)
                telemetry = InfluxSink(await stack.enter_async_context(writer))
            else:
                embedded = EmbeddedSink(store, cfg.telemetry.embedded_retention_days)
                background.append(
                    asyncio.create_task(embedded.run_sweeper(), name="telemetry-sweeper")
                )
                telemetry = embedded
            ingest = Ingest(
                store,
                set(campuses),
                sinks,
                cfg.gateway.id,
                dispatch,
                vault,
                telemetry,
                cfg.telemetry,
            )
            # Self-tests and periodic test signals follow the events as they are stored.
            selftests = SelftestService(cfg, store, sinks)
            stack.push_async_callback(selftests.aclose)
            testsignals = TestSignalWatch(cfg, store, ingest)
            ingest.observers += [selftests.on_event, testsignals.on_event]
            # Drills follow the campuses' drill events from the first message on.
            drills = Drills(cfg, store)
            ingest.on_drill = drills.on_event
            mqtt = await stack.enter_async_context(
                GatewayMqtt(cfg.mqtt, cfg.gateway.id, cfg.gateway.share_group, ingest, store)
            )
            # Telemetry on its own connection: an alarm never waits behind a telemetry burst.
            telemetry_mqtt = await stack.enter_async_context(
                GatewayMqtt(
                    cfg.mqtt,
                    cfg.gateway.id,
                    cfg.gateway.share_group,
                    ingest,
                    store,
                    stream="telemetry",
                )
            )

            for w in workers.values():
                w.on_step = mqtt.wake_downlink.set
                # The alarm's latency point: the relay hands over the received_at it stored
                # with the police's acknowledgement (no read back of the alarm).
                w.on_police_received = telemetry.alarm
            rt = GatewayRuntime(cfg, store, ingest, mqtt, workers, vault, telemetry, telemetry_mqtt)
            rt_ref.append(rt)
            if cfg.command_signing is not None:
                mqtt.signer = signing.load_private_key(cfg.command_signing.private_key_file)
            else:
                log.warning("commands to campuses are NOT signed: set command_signing")
            drills.publish = mqtt.publish
            rt.drills = drills
            background.append(asyncio.create_task(drills.run(), name="drill-scheduler"))
            selftests.publish = mqtt.publish
            rt.selftests, rt.testsignals = selftests, testsignals
            background.append(asyncio.create_task(selftests.run(), name="selftests"))
            background.append(asyncio.create_task(testsignals.run(), name="test-signals"))
            background.append(
                asyncio.create_task(vault.run_sweeper(store), name="evidence-sweeper")
            )
            if cfg.notify is not None:
                # People told (school leaders): durable jobs, never in the alarm's way.
                rt.notifier = Notifier(cfg, store, vault)
                background.append(asyncio.create_task(rt.notifier.run(), name="notifier"))
            if cfg.gateway.http is not None:
                from gateway.app import serve_http

                rt.http_port = await stack.enter_async_context(serve_http(rt))
            log.info(
                "gateway %s running: %d campus(es), sinks: %s, telemetry: %s, broker %s:%d%s",
                cfg.gateway.id,
                len(campuses),
                ", ".join(s.name for s in sinks) or "none",
                telemetry.name,
                cfg.mqtt.host,
                cfg.mqtt.port,
                f", http port {rt.http_port}" if rt.http_port else "",
            )
            try:
                yield rt
            finally:
                # Shutting down (SIGTERM): leave the shared subscriptions first, so the broker
                # hands new messages to the other gateways instead of queueing them for this
                # one, and handle what was already received; then everything stops in order.
                await asyncio.gather(mqtt.leave(), telemetry_mqtt.leave())
    finally:
        if store is not None:
            await store.drain()
        await engine.dispose()


def _path_state(rt: GatewayRuntime, name: str, ok: bool, reason: str) -> None:
    health = rt.paths.setdefault(name, PathHealth())
    if health.ok == ok:
        return
    health.ok, health.since, health.reason = ok, utcnow(), reason
    log.log(
        logging.INFO if ok else logging.ERROR,
        "police path %s is %s%s",
        name,
        "up" if ok else "DOWN",
        f": {reason}" if reason else "",
    )
    # Every campus served loses (or regains) that path: a transmission-path fault for each,
    # which the relay sends over whichever path still works.
    for campus in rt.cfg.campuses:
        event = Event(
            id=new_id(),
            campus=campus.id,
            edge=f"gateway:{rt.cfg.gateway.id}"[:64],
            seq=0,
            ts=utcnow(),
            kind="transmission_fault",
            severity="info" if ok else "high",
            device=f"police-{name}",
            restore=ok,
            text=f"police path {name} {'restored' if ok else 'failed'}: {reason}".strip(": "),
            detail={"source": "gateway", "path": name, "reason": reason},
        )
        asyncio.get_running_loop().create_task(rt.ingest.submit_local(event))


async def run_forever(cfg: GatewayConfig) -> None:
    async with run_gateway(cfg):
        await asyncio.Event().wait()
