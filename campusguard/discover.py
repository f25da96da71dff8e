"""`campusguard discover modbus`: find Modbus devices and guess which shipped profile fits.

For each host and port it connects once (one connection per host, shared by the unit ids, as
the edge does), asks each unit id for the points every shipped DI-module profile reads, and
ranks the profiles by how many of their points answer. It proposes a config stanza; a person
confirms the model (many modules answer the same addresses).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

from drivers.modbus.bus import ModbusBus, ModbusConnection
from drivers.modbus.errors import DeviceTimeout, DeviceUnreachable, ModbusDeviceError
from drivers.modbus.profile import PointRef, Profile, list_profiles, load_profile


@dataclass
class Found:
    host: str
    port: int
    unit: int
    answers: int  # how many probed points answered
    profiles: list[tuple[str, int, int]] = field(default_factory=list)  # name, hits, points

    @property
    def fits(self) -> list[str]:
        """Profiles all of whose points answered (often several: modules share addresses)."""
        return [name for name, hits, points in self.profiles if hits == points]

    @property
    def best(self) -> str | None:
        return self.fits[0] if self.fits else None


def _points(profile: Profile) -> list[PointRef]:
    caps = profile.capabilities
    refs: list[PointRef] = [caps.state]
    if caps.latch is not None:
        refs.append(caps.latch.read)
    if caps.counter is not None:
        refs.append(caps.counter.read)
    if caps.analog is not None:
        refs.append(caps.analog.read)
    return refs


async def _answers(conn: ModbusConnection, ref: PointRef, channels: int, unit: int) -> bool:
    """Whether the module answers the point's whole channel range (not an exception)."""
    assert ref.table is not None
    assert ref.address is not None
    last = ref.address + max(0, channels - 1) * ref.stride
    count = last - ref.address + 1
    table = ref.table
    try:
        if table == "coil" or table == "discrete_input":
            await conn.read_bits(table, ref.address, count, unit)
        else:
            await conn.read_registers(table, ref.address, min(count + 1, 125), unit)
    except DeviceUnreachable:
        raise
    except ModbusDeviceError:
        return False
    return True


async def _reachable(host: str, port: int, seconds: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), seconds)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def scan_modbus(
    hosts: list[str], ports: list[int], units: list[int], request_timeout: float = 0.3
) -> list[Found]:
    profiles = [load_profile(name) for name in list_profiles()]
    found: list[Found] = []
    async with ModbusBus(timeout=request_timeout) as bus:
        for host in hosts:
            for port in ports:
                if not await _reachable(host, port, request_timeout):
                    continue
                conn = bus.get_tcp(host, port)
                for unit in units:
                    try:
                        hits = []
                        for p in profiles:
                            refs = _points(p)
                            ok = [await _answers(conn, r, p.channels, unit) for r in refs]
                            hits.append((p.name or p.model, sum(ok), len(refs)))
                    except DeviceTimeout:
                        continue  # nobody home at this unit id
                    except DeviceUnreachable:
                        break
                    answered = max((h[1] for h in hits), default=0)
                    if answered == 0:
                        continue
                    # Most complete matches first, then the more specific (more points) ones.
                    hits.sort(key=lambda h: (h[1] == h[2], h[1], h[2]), reverse=True)
                    found.append(Found(host, port, unit, answered, hits))
    return found


def stanza(f: Found, index: int) -> str:
    """A devices entry for the edge config (inputs to be named by the installer)."""
    profile = f.best or (f.profiles[0][0] if f.profiles else "adam-6050")
    return (
        f"  - id: di-{index}\n"
        f"    profile: {profile}    # check the model on the label\n"
        f"    host: {f.host}\n"
        f"    port: {f.port}\n"
        f"    unit: {f.unit}\n"
        f"    inputs:\n"
        f"      - {{channel: 0, id: btn-{index}-0, kind: panic, mode: latch}}\n"
    )


def parse_hosts(spec: str) -> list[str]:
    """``192.0.2.10``, ``192.0.2.10-20`` or a comma list of those."""
    out: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part.rsplit(".", 1)[-1]:
            base, rng = part.rsplit(".", 1)
            lo, hi = (int(x) for x in rng.split("-"))
            out += [f"{base}.{i}" for i in range(lo, hi + 1)]
        elif part:
            socket.getaddrinfo(part, None)  # fail early on a typo
            out.append(part)
    return out


def parse_numbers(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out
