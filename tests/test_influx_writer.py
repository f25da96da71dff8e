"""TelemetryWriter against a real InfluxDB 1.6 (Debian's influxd, started per test on free
ports): exact round trip, a SIGKILLed InfluxDB under load, the spool's disk bound, field-type
conflicts, a missing database created later, and the v2 API when an InfluxDB 2 is given."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from pathlib import Path

import pytest

from contract.config import GatewayConfig, parse_config
from gateway.telemetry import InfluxV1, InfluxV2, Point, TelemetryWriter
from tests.helpers import wait_for
from tests.influx import Influx

T0 = 1_700_000_000_000_000_000


def v1(influx: Influx, database: str = "telemetry", timeout: float = 2.0) -> InfluxV1:
    return InfluxV1(influx.url, database, timeout=timeout)


def device_points(start: int, n: int, measurement: str = "device") -> list[Point]:
    """n points of device telemetry, each its own series/time (start .. start+n-1)."""
    return [
        Point(
            measurement,
            {"latency_ms": (i % 97) * 0.25, "errors": i % 7, "online": i % 5 != 0},
            T0 + i * 1000,
            {"campus": f"c{i % 13}", "device": f"d{i % 101}"},
        )
        for i in range(start, start + n)
    ]


async def test_points_come_back_exactly(influx: Influx, tmp_path: Path) -> None:
    sent = [
        Point(
            "bollard",
            {
                "pressure_bar": 187.25,
                "cycles": 123456789012,
                "up": True,
                "note": 'say "hi", a=b\nline 2',
                "tiny": 5e-324,
            },
            T0 + 123_456_789,
            {"campus": "dx-xinghua-ps", "device": "gate plc,1", "kind": "a=b"},
        ),
        Point("bollard", {"pressure_bar": -0.5, "up": False}, T0 + 1, {"campus": "c2"}),
        *device_points(0, 998),
    ]
    async with TelemetryWriter(
        v1(influx), tmp_path / "spool", batch_size=100, flush_interval=0.05, gzip_body=True
    ) as writer:
        assert writer.submit(sent) == len(sent)
        bad = [Point("bollard", {"pressure_bar": float("nan")}, T0), Point("bollard", {}, T0)]
        assert writer.submit(bad) == 0
        assert writer.invalid == 2
        assert await writer.flush(within=20)
        assert writer.written == len(sent)
        assert writer.batches_sent >= 10
        assert writer.stats()["rejected"] == writer.stats()["dropped"] == 0
    rows = influx.rows('SELECT * FROM "bollard" GROUP BY *')
    by_time = {r["time"]: r for r in rows}
    first = by_time[T0 + 123_456_789]
    assert first["campus"] == "dx-xinghua-ps"
    assert first["device"] == "gate plc,1"
    assert first["kind"] == "a=b"
    assert first["pressure_bar"] == 187.25
    assert first["cycles"] == 123456789012
    assert first["up"] is True
    assert first["note"] == 'say "hi", a=b\nline 2'
    assert first["tiny"] == 5e-324
    second = by_time[T0 + 1]
    assert second["pressure_bar"] == -0.5
    assert second["up"] is False
    assert second["campus"] == "c2"
    dev = influx.rows('SELECT * FROM "device" GROUP BY *')
    assert len(dev) == 998
    got = {(r["time"], r["campus"], r["device"]): r for r in dev}
    for p in device_points(0, 998):
        r = got[(p.time_ns, p.tags["campus"], p.tags["device"])]
        assert float(r["latency_ms"]) == p.fields["latency_ms"]
        assert r["errors"] == p.fields["errors"]
        assert r["online"] is p.fields["online"]


async def test_influxdb_killed_under_load_nothing_lost_memory_bounded(
    influx: Influx, tmp_path: Path
) -> None:
    max_buffer = 2_000
    writer = TelemetryWriter(
        v1(influx, timeout=1.0),
        tmp_path / "spool",
        batch_size=250,
        flush_interval=0.05,
        max_buffer_points=max_buffer,
        backoff_base=0.05,
        backoff_cap=0.3,
    )
    total = 0
    stop = asyncio.Event()

    async def produce() -> None:
        nonlocal total
        while not stop.is_set():
            writer.submit(device_points(total, 100))
            total += 100
            await asyncio.sleep(0.005)  # pacing: about 15-20k points/s

    async with writer:
        producer = asyncio.create_task(produce())
        await wait_for(lambda: writer.written >= 3_000, 20, "writes flowing")
        influx.kill()
        # down until the memory buffer is full and several batches are on disk
        await wait_for(lambda: writer.spool.points >= 15 * max_buffer, 20, "spool in use")
        assert writer.retried > 0
        influx.start()
        await wait_for(lambda: writer.spool.points == 0, 30, "spool drained after restart")
        stop.set()
        await producer
        assert await writer.flush(within=30)
        stats = writer.stats()
    assert stats["max_buffer_seen"] <= max_buffer
    assert stats["spooled"] >= 15 * max_buffer
    assert stats["dropped"] == stats["rejected"] == stats["invalid"] == 0
    assert stats["written"] >= total
    assert influx.count("device", "latency_ms") == total
    assert not list((tmp_path / "spool").glob("*.lp.gz"))


async def test_spool_disk_bound_drops_oldest_and_restart_sends_the_rest(
    influx: Influx, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "campusguard.gateway.telemetry")
    influx.stop()  # down from the start; restarted on the same port below
    spool = tmp_path / "spool"
    bound = 40_000
    writer = TelemetryWriter(
        v1(influx, timeout=0.5),
        spool,
        batch_size=200,
        max_buffer_points=400,
        spool_max_bytes=bound,
        backoff_base=0.05,
        backoff_cap=0.2,
        shutdown_timeout=0.5,
    )
    total = 20_000
    async with writer:
        for start in range(0, total, 200):
            writer.submit(device_points(start, 200))
            assert writer.spool.bytes <= bound
            assert writer.buffer_depth <= 400
        assert writer.dropped > 0
        dropped = writer.dropped
    # what was in memory at shutdown went to the spool too (and may have pushed more out)
    assert writer.dropped >= dropped
    assert writer.spool.bytes <= bound
    assert any("reached its bound" in r.getMessage() for r in caplog.records)
    kept = writer.spool.points
    assert kept + writer.dropped == total
    influx.start()
    async with TelemetryWriter(v1(influx), spool, batch_size=200) as again:
        assert again.spool.points == kept
        assert await again.flush(within=20)
        assert again.written == kept
    assert influx.count("device", "latency_ms") == kept
    # the oldest went: what is there is the newest, contiguous up to the last point
    series = influx.query('SELECT min("errors"), max("errors") FROM "device"')
    first = influx.query('SELECT first("latency_ms") FROM "device"')[0]["values"][0][0]
    assert first == T0 + (total - kept) * 1000
    assert series


async def test_field_type_conflict_rejects_only_the_bad_points(
    influx: Influx, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "campusguard.gateway.telemetry")
    async with TelemetryWriter(
        v1(influx), tmp_path / "spool", batch_size=100, flush_interval=0.05
    ) as writer:
        # 1. the field exists as float: InfluxDB writes the rest and says dropped=3
        writer.submit([Point("m", {"x": 1.5}, T0)])
        assert await writer.flush(within=10)
        batch = [Point("m", {"x": float(i)}, T0 + i) for i in range(1, 101)]
        for i in (10, 50, 90):
            batch[i - 1] = Point("m", {"x": i}, T0 + i)  # integer: conflict
        writer.submit(batch)
        assert await writer.flush(within=10)
        assert writer.rejected == 3
        assert influx.count("m", "x") == 98
        # 2. a new measurement whose points conflict among themselves: 1.6 refuses the whole
        # batch without a count; the writer splits it until only the bad point is left
        batch = [Point("n", {"y": float(i)}, T0 + i) for i in range(100)]
        batch[70] = Point("n", {"y": "seventy"}, T0 + 70)
        writer.submit(batch)
        assert await writer.flush(within=10)
        assert writer.rejected == 4
        assert influx.count("n", "y") == 99
        assert writer.retried == 0
    msgs = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert any("field type conflict" in m and '"x"' in m for m in msgs)


async def test_missing_database_then_created_flows_without_restart(
    influx: Influx, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "campusguard.gateway.telemetry")
    async with TelemetryWriter(
        v1(influx, database="later"),
        tmp_path / "spool",
        batch_size=100,
        flush_interval=0.05,
        config_retry_interval=0.1,
    ) as writer:
        writer.submit(device_points(0, 300))
        await wait_for(lambda: writer.retried >= 2, 10, "404 seen and retried")
        assert writer.written == 0
        assert any(
            "influxdb.database" in r.getMessage() and "404" in r.getMessage()
            for r in caplog.records
        )
        influx.create_database("later")
        await wait_for(lambda: writer.written == 300, 10, "writes after CREATE DATABASE")
    assert influx.count("device", "latency_ms", db="later") == 300


async def test_503_and_429_are_retried_honouring_retry_after(tmp_path: Path) -> None:
    """A stand-in InfluxDB answers 503 and 429 with Retry-After: 0.2 s, then 204. The back-off
    base is 5 s, so only honouring Retry-After makes the retries come about 0.2 s apart."""
    answers = [
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0.2\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0.2\r\nContent-Length: 0\r\n\r\n",
    ]
    seen: list[tuple[float, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            seen.append((time.monotonic(), head.split(b"\r\n")[0]))
            writer.write(answers.pop(0) if answers else b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with TelemetryWriter(
            InfluxV1(f"http://127.0.0.1:{port}", "telemetry", timeout=2),
            tmp_path / "spool",
            batch_size=50,
            flush_interval=0.05,
            backoff_base=5.0,
            backoff_cap=10.0,
        ) as writer:
            writer.submit(device_points(0, 50))
            await wait_for(lambda: writer.written == 50, 5, "written after 503 and 429")
            assert writer.retried == 2
    finally:
        server.close()
        await server.wait_closed()
    assert len(seen) == 3
    assert all(b"POST /write?db=telemetry" in line for _, line in seen)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
    assert all(0.15 <= g < 2.0 for g in gaps), gaps


async def test_wrong_password_then_fixed_flows_without_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Auth on: a writer whose password InfluxDB does not know gets 401, logs which keys to
    check and keeps the points; when the user's password is set to the one it has, its points
    flow, no restart. HTTP basic auth works too."""
    caplog.set_level(logging.ERROR, "campusguard.gateway.telemetry")
    influx = Influx(tmp_path / "influxdb", auth=True)
    influx.start()
    try:
        influx.create_database()
        influx.query("CREATE USER \"edge-tm\" WITH PASSWORD 'old-password'")
        influx.query('GRANT WRITE ON "telemetry" TO "edge-tm"')
        backend = InfluxV1(influx.url, "telemetry", username="edge-tm", password="new-password")
        async with TelemetryWriter(
            backend, tmp_path / "spool", batch_size=100, config_retry_interval=0.1
        ) as writer:
            writer.submit(device_points(0, 100))
            await wait_for(lambda: writer.retried >= 2, 10, "401 seen and retried")
            assert writer.written == 0
            assert any(
                "401" in r.getMessage()
                and "influxdb.username / influxdb.password" in r.getMessage()
                for r in caplog.records
            )
            influx.query("SET PASSWORD FOR \"edge-tm\" = 'new-password'")
            await wait_for(lambda: writer.written == 100, 10, "writes after the password fix")
        basic = InfluxV1(
            influx.url, "telemetry", username="edge-tm", password="new-password", basic_auth=True
        )
        async with TelemetryWriter(basic, tmp_path / "spool2", batch_size=50) as writer:
            writer.submit(device_points(100, 50))
            assert await writer.flush(within=10)
            assert writer.retried == 0
        assert influx.count("device", "latency_ms") == 150
    finally:
        influx.stop()


async def test_damaged_spool_segment_is_dropped_and_the_rest_sent(
    influx: Influx, tmp_path: Path
) -> None:
    import gzip

    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / f"{1:016d}-10.lp.gz").write_bytes(b"not gzip at all")
    body = "\n".join(f"device,campus=c1,device=d1 errors=1i {T0 + i}" for i in range(20)).encode()
    (spool / f"{2:016d}-20.lp.gz").write_bytes(gzip.compress(body))
    (spool / f".{3:016d}-5.lp.gz.tmp").write_bytes(b"half written")
    async with TelemetryWriter(v1(influx), spool) as writer:
        assert writer.spool.points == 30
        assert await writer.flush(within=10)
        assert writer.dropped == 10
        assert writer.written == 20
    assert influx.count("device", "errors") == 20
    assert not list(spool.iterdir())


def test_from_config_defaults_the_spool_under_data_dir(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "campuses": [{"id": "c1", "account": "1234"}],
            "influxdb": {"url": "http://127.0.0.1:8086", "database": "telemetry"},
        },
        GatewayConfig,
        "gw.yaml",
    )
    assert cfg.influxdb is not None
    writer = TelemetryWriter.from_config(cfg.influxdb, tmp_path)
    assert writer.spool.directory == tmp_path / "telemetry-spool"
    assert writer.batch_size == 5000
    assert isinstance(writer.backend, InfluxV1)


async def test_v2_backend_against_a_v1_server_is_a_clear_config_error(
    influx: Influx, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """InfluxDB 1.6 has no /api/v2/write: the influxdb-client path answers 404, which is
    logged naming org/bucket, and the points are kept, not dropped."""
    caplog.set_level(logging.ERROR, "campusguard.gateway.telemetry")
    async with TelemetryWriter(
        InfluxV2(influx.url, "cg", "telemetry", "token"),
        tmp_path / "spool",
        batch_size=10,
        flush_interval=0.05,
        config_retry_interval=0.1,
        shutdown_timeout=0.2,
    ) as writer:
        writer.submit(device_points(0, 10))
        await wait_for(lambda: writer.retried >= 1, 10, "a 404 from /api/v2/write")
        assert any("influxdb.org / influxdb.bucket" in r.getMessage() for r in caplog.records)
        assert writer.written == writer.dropped == writer.rejected == 0
    assert writer.spool.points == 10  # kept for the next start


_V2_VARS = ("CG_INFLUX2_URL", "CG_INFLUX2_TOKEN", "CG_INFLUX2_ORG", "CG_INFLUX2_BUCKET")


@pytest.mark.skipif(
    not all(os.environ.get(v) for v in _V2_VARS),
    reason="InfluxDB 2 is not installable here (Debian packages 1.x only). To run the v2 test "
    "start one with Docker, e.g. `docker run -d -p 8086:8086 -e DOCKER_INFLUXDB_INIT_MODE=setup "
    "-e DOCKER_INFLUXDB_INIT_USERNAME=cg -e DOCKER_INFLUXDB_INIT_PASSWORD=cg-password "
    "-e DOCKER_INFLUXDB_INIT_ORG=cg -e DOCKER_INFLUXDB_INIT_BUCKET=telemetry "
    "-e DOCKER_INFLUXDB_INIT_ADMIN_TOKEN=cg-test-token influxdb:2.7` (or the same as a docker "
    "compose service), then set CG_INFLUX2_URL=http://127.0.0.1:8086 "
    "CG_INFLUX2_TOKEN=cg-test-token CG_INFLUX2_ORG=cg CG_INFLUX2_BUCKET=telemetry",
)
async def test_v2_api_writes_through_influxdb_client(tmp_path: Path) -> None:
    from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

    url, token, org, bucket = (os.environ[v] for v in _V2_VARS)
    measurement = f"cg_test_{int(time.time() * 1000)}"
    points = device_points(0, 500, measurement)
    async with TelemetryWriter(
        InfluxV2(url, org, bucket, token), tmp_path / "spool", batch_size=100, flush_interval=0.05
    ) as writer:
        writer.submit(points)
        assert await writer.flush(within=30)
        assert writer.written == 500
    async with InfluxDBClientAsync(url=url, token=token, org=org) as client:
        tables = await client.query_api().query(
            f'from(bucket: "{bucket}") |> range(start: 0) '
            f'|> filter(fn: (r) => r._measurement == "{measurement}" and r._field == "errors") '
            "|> group() |> count()"
        )
        assert tables[0].records[0].get_value() == 500
