"""Small helpers shared by the benchmarks (not a test module; not imported by the product).

Importing this module puts the repository root on ``sys.path`` so the benchmarks can import
``contract``, ``edge``, ``gateway``, ``simulators`` and ``tests.helpers`` when run as
``.venv/bin/python bench/<name>.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation between closest ranks
    (numpy's default). ``nan`` for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))


def summary_ms(values_s: Sequence[float]) -> dict[str, float | int]:
    """p50 / p99 / max (and count, min, mean) of durations given in seconds, in ms."""
    if not values_s:
        return {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan}
    ms = [v * 1e3 for v in values_s]
    return {
        "n": len(ms),
        "min": round(min(ms), 3),
        "mean": round(sum(ms) / len(ms), 3),
        "p50": round(percentile(ms, 50), 3),
        "p99": round(percentile(ms, 99), 3),
        "max": round(max(ms), 3),
    }


def rss_mib(pid: int | str = "self") -> float:
    """Resident set size (VmRSS) of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name is in parentheses and may contain spaces: split after it.
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def mosquitto_version() -> str:
    from tests.helpers import mosquitto_binary

    try:
        out = subprocess.run(
            [mosquitto_binary(), "-h"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return "?"
    first = out.splitlines()[0] if out else ""
    return first.replace("mosquitto version", "").strip() or "?"


def machine_info() -> dict[str, Any]:
    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "?"

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pymodbus": version("pymodbus"),
        "aiomqtt": version("aiomqtt"),
        "paho-mqtt": version("paho-mqtt"),
        "mosquitto": mosquitto_version(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"machine: {info['machine']}, nproc {info['nproc']} ({info['cpu']}), "
        f"Python {info['python']}, pymodbus {info['pymodbus']}, mosquitto {info['mosquitto']}, "
        f"aiomqtt {info['aiomqtt']}, loadavg at start {' '.join(info['loadavg_at_start'])}"
    )


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"figures written to {target}")


def fmt_ms(value: float) -> str:
    return "    n/a" if math.isnan(value) else f"{value:7.1f}"


def machine_cpu_s() -> dict[str, float]:
    """Machine-wide CPU seconds so far from /proc/stat: ``busy`` (every core, all processes,
    user+nice+system+irq+softirq), ``steal`` (taken by the hypervisor) and ``idle``."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    v = [int(x) / CLOCK_TICKS for x in fields]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0.0] * 8)[:8]
    return {
        "busy": user + nice + system + irq + softirq,
        "steal": steal,
        "idle": idle + iowait,
    }


def other_load_pct(
    before: dict[str, float], after: dict[str, float], ours_s: float, wall: float
) -> tuple[float, float]:
    """CPU used on the machine by processes other than ours over a window, % of one core,
    and the hypervisor steal, % of one core."""
    busy = after["busy"] - before["busy"]
    steal = after["steal"] - before["steal"]
    return round(100 * max(0.0, busy - ours_s) / wall, 1), round(100 * steal / wall, 1)


def dump_tasks(title: str) -> None:
    """Print the stack of every asyncio task to stderr (for a watchdog that fired)."""
    print(f"==== {title}: asyncio tasks", file=sys.stderr)
    for task in asyncio.all_tasks():
        buf = io.StringIO()
        task.print_stack(limit=8, file=buf)
        print(f"{task!r:.300}\n{buf.getvalue()}", file=sys.stderr)
    sys.stderr.flush()


async def guarded(main: Callable[[], Awaitable[T]], limit_s: float) -> T:
    """Run ``main`` so that SIGTERM, like Ctrl-C, cancels it (its ``finally`` blocks stop the
    broker and the simulators), and so that a run stuck past ``limit_s`` prints every task's
    stack and is cancelled the same way instead of hanging."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        async with asyncio.timeout(limit_s):
            return await main()
    except TimeoutError:
        dump_tasks(f"watchdog: still running after {limit_s:.0f} s")
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


CAMPUS = "bench-campus"
ACCOUNT = "1234"


def gateway_config(tmp: Path, broker_port: int, police_port: int) -> Any:
    """The gateway of the in-process benchmarks: SQLite in ``tmp``, DC-09 over TCP."""
    from contract.config import GatewayConfig, parse_config

    return parse_config(
        {
            "gateway": {
                "id": "gw-bench",
                "data_dir": str(tmp / "gw"),
                "share_group": "cg-gateway",
                "http": None,
            },
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive": 15},
            "database": {"url": f"sqlite+aiosqlite:///{tmp}/gw/campusguard.db"},
            "campuses": [{"id": CAMPUS, "name": "Bench school", "account": ACCOUNT}],
            "dc09": {
                "primary": {"host": "127.0.0.1", "port": police_port, "transport": "tcp"},
                "ack_timeout": 0.5,
                "attempts": 2,
                "supervision_interval": 0,
            },
        },
        GatewayConfig,
        "bench-gateway",
    )
