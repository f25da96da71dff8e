"""Alarm video clips (issue 13): clip ready after post_s, the ffmpeg segmenters' CPU, and the
alarm's own press-to-police time without and with clips, in one run.

Every hop is real: a pymodbus ADAM-6050 simulator (the panic button) <-> the edge over Modbus
TCP, two GStreamer RTSP test streams (H.264, 640x360, 15 fps) behind ONVIF camera simulators,
one ffmpeg segmenter per camera (``-c copy``), the outbox with fsync, MQTT QoS 1 through a real
Mosquitto, the gateway (SQLite, the clip chunks reassembled and checked), DC-09 ADM-CID over TCP
to the simulated police receiver.

    .venv/bin/python bench/clips.py [--alarms 10] [--pre 6] [--post 5] [--json out.json]

Two phases on the same edge config except ``clips.enabled`` (a fresh edge each):

* without clips: press -> police;
* with clips: both cameras cover the button's zone; after the buffers hold ``--pre`` seconds,
  the ffmpeg CPU is measured over ``--cpu-window`` idle seconds, then the presses.

Figures: press-to-police (p50/p99/max) of each phase; clip ready = when the clip is on disk and
queued, minus (alarm + post_s) (target <= 5 s), p50/max over every camera's clip; ffmpeg CPU %
of one core per camera (``/proc/<pid>/stat``); clips completed at the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
from _common import (
    CAMPUS,
    fmt_ms,
    gateway_config,
    machine_info,
    machine_line,
    summary_ms,
    write_json,
)

from contract.config import EdgeConfig, parse_config
from edge.daemon import EdgeRuntime, run_edge
from gateway.service import GatewayRuntime, run_gateway
from simulators.camera import CameraSimulator
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from simulators.rtsp import RtspTestStream
from tests.helpers import Mosquitto, wait_for

READY_TARGET_S = 5.0
NO_DELAY_SLACK_S = 0.010
CAM_PASSWORD = "bench-cam-pw"


def edge_config(
    tmp: Path, broker: int, sim: int, cams: list[int], clips: bool, args: argparse.Namespace
) -> EdgeConfig:
    return parse_config(
        {
            "campus": {"id": CAMPUS, "name": "Bench school"},
            "edge": {
                "id": "edge-1",
                "data_dir": str(tmp / f"edge-{'clips' if clips else 'plain'}"),
                "status_interval": 30,
            },
            "mqtt": {"host": "127.0.0.1", "port": broker, "keepalive": 15},
            "zones": [{"id": "gate", "name": "South gate"}, {"id": "hall"}],
            "devices": [
                {
                    "id": "di-1",
                    "profile": "adam-6050",
                    "host": "127.0.0.1",
                    "port": sim,
                    "poll_interval": 0.05,
                    "timeout": 0.3,
                    "zone": "gate",
                    "inputs": [{"channel": 0, "id": "btn-0", "kind": "panic", "alarm_zone": 1}],
                }
            ],
            "cameras": [
                {
                    "id": f"cam-{i}",
                    "host": "127.0.0.1",
                    "port": port,
                    "password": CAM_PASSWORD,
                    "timeout": 5,
                    "zone": "gate" if i == 0 else "hall",
                    "covers": ["gate"],
                }
                for i, port in enumerate(cams)
            ],
            "evidence": {"enabled": False},
            "clips": {
                "enabled": clips,
                "pre_s": args.pre,
                "post_s": args.post,
                "segment_s": args.segment,
                "margin_s": 2,
            },
        },
        EdgeConfig,
        "bench-clips",
    )


def new_panics(police: PoliceReceiver) -> list[float]:
    return [
        m.received_mono
        for m in police.messages
        if m.contact_id is not None and m.contact_id.code == 120 and m.contact_id.qualifier == 1
    ]


async def presses(
    args: argparse.Namespace, edge: EdgeRuntime, sim: DIModuleSimulator, police: PoliceReceiver
) -> list[float]:
    out: list[float] = []
    for i in range(args.warmup + args.alarms):
        before = len(new_panics(police))
        t0 = time.monotonic()
        await sim.press(0, 0.005)
        await wait_for(lambda b=before: len(new_panics(police)) > b, timeout=5, what="police")
        if i >= args.warmup:
            out.append(new_panics(police)[before] - t0)
        await asyncio.sleep(args.gap)
    del edge
    return out


async def phase(
    args: argparse.Namespace,
    tmp: Path,
    broker: int,
    sim: DIModuleSimulator,
    cams: list[CameraSimulator],
    police: PoliceReceiver,
    gw: GatewayRuntime,
    clips: bool,
) -> dict[str, Any]:
    cfg = edge_config(tmp, broker, sim.port, [c.port for c in cams], clips, args)
    async with run_edge(cfg) as edge:
        await wait_for(edge.uplink.connected.is_set, what="edge uplink")
        await wait_for(lambda: edge.pollers["di-1"].online, what="module online")
        for cam_id in edge.cameras:
            await wait_for(lambda c=cam_id: edge.cameras[c].online is True, timeout=15, what=cam_id)
        result: dict[str, Any] = {}
        if clips:
            assert edge.clips is not None
            bufs = list(edge.clips.buffers.values())

            def full() -> bool:
                for b in bufs:
                    segs = b.covering(0, time.time() + 60)
                    if not segs or segs[-1].end - segs[0].start < args.pre + 1:
                        return False
                return True

            await wait_for(full, timeout=args.pre + 30, what="buffers full")
            cpu0 = {b.camera: b.cpu_seconds() for b in bufs}
            w0 = time.monotonic()
            await asyncio.sleep(args.cpu_window)
            wall = time.monotonic() - w0
            cpu = {}
            for b in bufs:
                c0, c1 = cpu0[b.camera], b.cpu_seconds()
                cpu[b.camera] = (
                    round(100 * (c1 - c0) / wall, 2) if c0 is not None and c1 is not None else None
                )
            result["ffmpeg_cpu_pct_per_camera"] = cpu
            result["segment_mib_per_min_per_camera"] = round(
                statistics.mean(
                    b.bytes() / max(1.0, b.newest_end() - min(s.start for s in b.segments.values()))
                    for b in bufs
                )
                * 60
                / (1024 * 1024),
                2,
            )
        stored0 = gw.vault.clips_stored
        result["press_to_police_s"] = await presses(args, edge, sim, police)
        if clips:
            assert edge.clips is not None
            await edge.clips.idle()
            res = edge.clips.results
            ready = [r.ready_after_s for r in res if r.error is None]
            result["clips"] = len(res)
            result["clips_ok"] = len(ready)
            result["clips_with_gaps"] = sum(bool(r.gaps) for r in res)
            result["clip_ready_after_post_s"] = ready
            result["clip_mib"] = round(statistics.mean(r.size for r in res) / (1024 * 1024), 2)
            await wait_for(
                lambda: gw.vault.clips_stored - stored0 >= len(ready),
                timeout=60,
                what="clips at the gateway",
            )
            result["clips_at_gateway"] = gw.vault.clips_stored - stored0
    return result


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg is not installed (scripts/setup.sh installs it)")
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="cg-bench-clips-") as tmp_name:
        tmp = Path(tmp_name)
        broker = Mosquitto(tmp / "broker")
        broker.start()
        try:
            async with (
                DIModuleSimulator("adam-6050") as sim,
                RtspTestStream(codec="h264", label="cam-0") as s0,
                RtspTestStream(codec="h264", label="cam-1") as s1,
                CameraSimulator(password=CAM_PASSWORD, stream=s0) as c0,
                CameraSimulator(password=CAM_PASSWORD, stream=s1) as c1,
                PoliceReceiver(udp=False) as police,
                run_gateway(gateway_config(tmp, broker.port, police.tcp_port)) as gw,
            ):
                await wait_for(gw.mqtt.connected.is_set, what="gateway MQTT")
                plain = await phase(args, tmp, broker.port, sim, [c0, c1], police, gw, False)
                with_clips = await phase(args, tmp, broker.port, sim, [c0, c1], police, gw, True)
        finally:
            broker.stop()
    ready = with_clips["clip_ready_after_post_s"]
    added = statistics.median(with_clips["press_to_police_s"]) - statistics.median(
        plain["press_to_police_s"]
    )
    return {
        "machine": info,
        "alarms": args.alarms,
        "pre_s": args.pre,
        "post_s": args.post,
        "segment_s": args.segment,
        "without_clips": {"press_to_police_ms": summary_ms(plain["press_to_police_s"])},
        "with_clips": {
            "press_to_police_ms": summary_ms(with_clips["press_to_police_s"]),
            "clip_ready_after_post_ms": summary_ms(ready),
            "clips": with_clips["clips"],
            "clips_ok": with_clips["clips_ok"],
            "clips_with_gaps": with_clips["clips_with_gaps"],
            "clips_at_gateway": with_clips["clips_at_gateway"],
            "clip_mib": with_clips["clip_mib"],
            "ffmpeg_cpu_pct_per_camera": with_clips["ffmpeg_cpu_pct_per_camera"],
            "segment_mib_per_min_per_camera": with_clips["segment_mib_per_min_per_camera"],
        },
        "clips_add_p50_ms": added * 1000,
        "ready_target_met": bool(ready) and max(ready) <= READY_TARGET_S,
        "no_delay_target_met": added <= NO_DELAY_SLACK_S,
    }


def report(r: dict[str, Any]) -> None:
    print(machine_line(r["machine"]))
    for name in ("without_clips", "with_clips"):
        p = r[name]["press_to_police_ms"]
        print(
            f"{name:14s} press to police: p50 {fmt_ms(p['p50'])} p99 {fmt_ms(p['p99'])} "
            f"max {fmt_ms(p['max'])} ms (n={p['n']})"
        )
    w = r["with_clips"]
    rd = w["clip_ready_after_post_ms"]
    print(
        f"clip ready after alarm + post_s ({r['pre_s']:g} s + {r['post_s']:g} s, "
        f"{r['segment_s']} s segments): p50 {fmt_ms(rd['p50'])} max {fmt_ms(rd['max'])} ms "
        f"over {w['clips_ok']}/{w['clips']} clips (target <= {READY_TARGET_S * 1000:.0f} ms: "
        f"{'met' if r['ready_target_met'] else 'MISSED'}); {w['clips_at_gateway']} complete at "
        f"the gateway, {w['clips_with_gaps']} with gaps, {w['clip_mib']} MiB each"
    )
    print(
        f"ffmpeg segmenter CPU per camera (% of one core): {w['ffmpeg_cpu_pct_per_camera']}; "
        f"buffer {w['segment_mib_per_min_per_camera']} MiB/min per camera"
    )
    print(
        f"clips add {r['clips_add_p50_ms']:+.1f} ms to p50 press-to-police "
        f"(target <= +{NO_DELAY_SLACK_S * 1000:.0f} ms: "
        f"{'met' if r['no_delay_target_met'] else 'MISSED'})"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--alarms", type=int, default=10, help="counted alarms per phase")
    p.add_argument("--warmup", type=int, default=2, help="alarms per phase not counted")
    p.add_argument("--gap", type=float, default=1.0, help="seconds between presses")
    p.add_argument("--pre", type=float, default=6.0, help="clips.pre_s (default config: 30)")
    p.add_argument("--post", type=float, default=5.0, help="clips.post_s (default config: 30)")
    p.add_argument("--segment", type=int, default=2, help="clips.segment_s")
    p.add_argument("--cpu-window", type=float, default=10.0, help="seconds of idle CPU sampling")
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--log-level", default="warning")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    limit = 2 * (args.alarms + args.warmup) * (2 + args.gap) + args.pre + args.post + 240
    try:
        result = asyncio.run(_common.guarded(lambda: bench(args), limit))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; broker and simulators stopped", file=sys.stderr)
        return 130
    report(result)
    write_json(args.json, result)
    return 0 if result["ready_target_met"] and result["no_delay_target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
