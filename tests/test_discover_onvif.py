"""`campusguard discover onvif` against simulated cameras and their WS-Discovery responders.

Real UDP sockets on loopback, the real camera simulator and the real ONVIF driver.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from campusguard.discover_onvif import (
    MULTICAST_GROUP,
    NS_DN,
    describe,
    discover_onvif,
    parse_target,
    probe_message,
    stanza,
    table,
)
from contract.config import EdgeConfig, parse_config
from simulators.camera import CameraSimulator
from simulators.wsdiscovery import WSDiscoveryResponder
from tests.helpers import env_with_pythonpath, wait_for

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "cam-s3cret-pw"
LISTEN = 0.6  # seconds each discovery listens: loopback answers come within milliseconds


@pytest.fixture
async def two_cameras() -> AsyncIterator[list[tuple[CameraSimulator, WSDiscoveryResponder]]]:
    async with AsyncExitStack() as stack:
        gate = await stack.enter_async_context(CameraSimulator(password=PASSWORD))
        hall = await stack.enter_async_context(
            CameraSimulator(password="another-pw", manufacturer="Hall Co", serial_number="H-2")
        )
        pairs = [
            (
                gate,
                await stack.enter_async_context(
                    WSDiscoveryResponder.for_camera(
                        gate,
                        port=0,
                        name="Gate Cam 南门",
                        hardware="DS-2CD2143",
                        location="South gate/left post",
                    )
                ),
            ),
            (
                hall,
                await stack.enter_async_context(
                    WSDiscoveryResponder.for_camera(hall, port=0, name="Hall", hardware="SimCam-2")
                ),
            ),
        ]
        yield pairs


def _targets(pairs: list[tuple[CameraSimulator, WSDiscoveryResponder]]) -> list[tuple[str, int]]:
    return [("127.0.0.1", r.port) for _, r in pairs]


def test_parse_target() -> None:
    assert parse_target("127.0.0.1") == ("127.0.0.1", 3702)
    assert parse_target("localhost:4000") == ("127.0.0.1", 4000)
    with pytest.raises(ValueError, match="port"):
        parse_target("127.0.0.1:0")


async def test_unicast_discovery_finds_both_cameras(two_cameras: Any) -> None:
    (gate, gate_r), (hall, hall_r) = two_cameras
    # The gate camera is probed twice over (a second path to the same camera): one entry.
    result = await discover_onvif(
        [*_targets(two_cameras), ("127.0.0.1", gate_r.port)], multicast=False, listen=LISTEN
    )
    by_epr = {c.epr: c for c in result.cameras}
    assert set(by_epr) == {gate_r.endpoint, hall_r.endpoint}
    assert len(result.cameras) == 2
    g = by_epr[gate_r.endpoint]
    assert g.xaddrs == [f"{gate.base_url}/onvif/device_service"]
    assert (g.host, g.port) == ("127.0.0.1", gate.port)
    assert g.name == "Gate Cam 南门"  # URL-decoded from the scope
    assert g.hardware == "DS-2CD2143"
    assert g.location == "South gate/left post"
    assert f"{NS_DN}:NetworkVideoTransmitter" in g.types
    h = by_epr[hall_r.endpoint]
    assert (h.host, h.port, h.name, h.location) == ("127.0.0.1", hall.port, "Hall", "")
    assert result.garbage == 0
    assert gate_r.answered >= 1 and hall_r.answered >= 1
    listing = table(result.cameras)
    assert "Gate Cam 南门" in listing and f"{hall.base_url}/onvif/device_service" in listing


async def test_credentials_fill_in_device_info_and_report_a_refusal(two_cameras: Any) -> None:
    (gate, gate_r), (_hall, hall_r) = two_cameras
    result = await discover_onvif(_targets(two_cameras), multicast=False, listen=LISTEN)
    await describe(result.cameras, "admin", PASSWORD, request_timeout=5)
    by_epr = {c.epr: c for c in result.cameras}
    g, h = by_epr[gate_r.endpoint], by_epr[hall_r.endpoint]
    assert g.error is None
    assert (g.manufacturer, g.model, g.serial) == ("CampusGuard", "SimCam 1", "SIM-0001")
    assert g.firmware
    assert len(g.profiles) == 2
    # The hall camera has another password: listed, with its error, not aborting the run.
    assert h.error is not None and "credentials refused" in h.error
    assert _hall.auth_failures >= 1
    assert h.manufacturer == ""
    listing = table(result.cameras, described=True)
    assert "CampusGuard SimCam 1" in listing and "error:" in listing
    assert gate.auth_failures == 0


async def test_stanza_is_a_valid_config_without_the_password(
    two_cameras: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = await discover_onvif(_targets(two_cameras), multicast=False, listen=LISTEN)
    await describe(result.cameras, "operator", PASSWORD)
    text = stanza(result.cameras, "operator")
    assert PASSWORD not in text and "${CAMERA_PASSWORD}" in text
    monkeypatch.setenv("CAMERA_PASSWORD", "from-the-environment")
    cfg = parse_config(
        {"campus": {"id": "c1", "name": "x"}, **yaml.safe_load(text)}, EdgeConfig, "stanza"
    )
    by_port = {c.port: c for c in cfg.cameras}
    (gate, _), (hall, _) = two_cameras
    assert by_port[gate.port].location == "South gate/left post"
    assert by_port[gate.port].username == "operator"
    assert by_port[gate.port].secret() == "from-the-environment"
    assert by_port[hall.port].host == "127.0.0.1"
    assert len({c.id for c in cfg.cameras}) == 2


async def test_probe_for_another_type_gets_no_answer(two_cameras: Any) -> None:
    responders = [r for _, r in two_cameras]
    result = await discover_onvif(
        _targets(two_cameras),
        multicast=False,
        listen=LISTEN,
        types=[("http://example.com/printers", "Printer", "p")],
    )
    assert result.cameras == []
    assert all(r.unmatched >= 1 and r.answered == 0 for r in responders)
    # A Probe without Types matches everything.
    result = await discover_onvif(_targets(two_cameras), multicast=False, listen=LISTEN, types=[])
    assert len(result.cameras) == 2


async def test_responder_ignores_garbage(two_cameras: Any) -> None:
    (_, gate_r), _ = two_cameras
    junk = [
        b"\x00\xff garbage",
        b"<not-closed",
        b"<a>well-formed but not SOAP</a>",
        # A SOAP Probe missing its MessageID: the codec cannot read it.
        re.sub(rb"<a:MessageID>.*?</a:MessageID>", b"", probe_message()[1], flags=re.S),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for datagram in junk:
            s.sendto(datagram, ("127.0.0.1", gate_r.port))
    await wait_for(lambda: gate_r.garbage + gate_r.ignored >= len(junk), what="junk counted")
    assert gate_r.answered == 0
    result = await discover_onvif(_targets(two_cameras), multicast=False, listen=LISTEN)
    assert len(result.cameras) == 2  # still answering


class _BadCamera(asyncio.DatagramProtocol):
    """Answers every Probe with junk, a broken ProbeMatches and one for someone else's Probe."""

    def __init__(self, other: WSDiscoveryResponder) -> None:
        self.other = other
        self.transport: Any = None
        self.probes = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.probes += 1
        mid = re.search(rb"<a:MessageID>(.*?)</a:MessageID>", data, re.S)
        assert mid is not None
        ours = self.other.handle(data, addr)
        assert ours is not None
        _, foreign_probe = probe_message("urn:uuid:00000000-0000-0000-0000-00000000beef")
        foreign = self.other.handle(foreign_probe, addr)
        broken = re.sub(rb"<d:MetadataVersion>.*?</d:MetadataVersion>", b"", ours, flags=re.S)
        assert broken != ours
        for reply in (b"\x00junk", b"<oops", broken, foreign):
            self.transport.sendto(reply, addr)


async def test_prober_ignores_garbage_answers(two_cameras: Any) -> None:
    (gate, _), (_, hall_r) = two_cameras
    loop = asyncio.get_running_loop()
    impostor = WSDiscoveryResponder.for_camera(gate, port=0, name="Impostor")
    transport, bad = await loop.create_datagram_endpoint(
        lambda: _BadCamera(impostor), local_addr=("127.0.0.1", 0)
    )
    try:
        bad_port = transport.get_extra_info("sockname")[1]
        result = await discover_onvif(
            [("127.0.0.1", bad_port), ("127.0.0.1", hall_r.port)],
            multicast=False,
            listen=LISTEN,
        )
    finally:
        transport.close()
    assert bad.probes >= 1
    assert [c.epr for c in result.cameras] == [hall_r.endpoint]
    assert result.garbage >= 3  # two non-XML datagrams and the ProbeMatches without a version
    assert result.unrelated >= 1  # the answer to someone else's Probe


def _loopback_multicast_works() -> bool:
    try:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
        ):
            rx.bind(("", 0))
            mreq = struct.pack(
                "4s4s", socket.inet_aton(MULTICAST_GROUP), socket.inet_aton("127.0.0.1")
            )
            rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            rx.settimeout(1.0)
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            tx.sendto(b"ping", (MULTICAST_GROUP, rx.getsockname()[1]))
            return rx.recvfrom(16)[0] == b"ping"
    except OSError:
        return False


async def test_multicast_discovery() -> None:
    if not _loopback_multicast_works():
        pytest.skip(
            "multicast to 239.255.255.250 on the loopback interface does not work on this "
            "machine (no route or IP_ADD_MEMBERSHIP refused), so it cannot be tested here"
        )
    async with (
        CameraSimulator(password=PASSWORD) as cam,
        WSDiscoveryResponder.for_camera(
            cam, port=0, multicast=True, multicast_port=0, interface="127.0.0.1", name="Multi"
        ) as responder,
    ):
        result = await discover_onvif(
            multicast=True,
            group=(MULTICAST_GROUP, responder.multicast_port),
            interface="127.0.0.1",
            listen=LISTEN,
        )
    assert [c.epr for c in result.cameras] == [responder.endpoint]
    assert result.cameras[0].name == "Multi"
    assert result.cameras[0].xaddr == f"{cam.base_url}/onvif/device_service"


async def test_cli_lists_cameras_and_writes_a_stanza(two_cameras: Any, tmp_path: Path) -> None:
    (gate, gate_r), (_hall, hall_r) = two_cameras
    secret = tmp_path / "cam.pw"
    secret.write_text(PASSWORD + "\n")
    out_file = tmp_path / "cameras.yaml"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campusguard.cli",
        "discover",
        "onvif",
        "--target",
        f"127.0.0.1:{gate_r.port}",
        "--target",
        f"127.0.0.1:{hall_r.port}",
        "--no-multicast",
        "--timeout",
        "1",
        "--username",
        "admin",
        "--password-file",
        str(secret),
        "--stanza",
        "--write",
        str(out_file),
        cwd=ROOT,
        env=env_with_pythonpath(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "Gate Cam 南门" in text and "CampusGuard SimCam 1" in text
    assert "error:" in text  # the hall camera refuses this password, and is still listed
    assert PASSWORD not in text
    written = out_file.read_text()
    assert PASSWORD not in written
    assert written in text  # --stanza printed the same stanza that --write wrote
    cameras = yaml.safe_load(written)["cameras"]
    assert {c["port"] for c in cameras} == {gate.port, _hall.port}
    assert all(c["password"] == "${CAMERA_PASSWORD}" for c in cameras)


async def test_cli_nothing_found_exits_1() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound but never answers
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "campusguard.cli",
            "discover",
            "onvif",
            "--target",
            f"127.0.0.1:{silent.getsockname()[1]}",
            "--no-multicast",
            "--timeout",
            "0.3",
            cwd=ROOT,
            env=env_with_pythonpath(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert b"no ONVIF camera answered" in out
