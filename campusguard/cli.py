"""The ``campusguard`` command."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from contract.config import ConfigError, EdgeConfig, GatewayConfig, load_config

app = typer.Typer(
    help="CampusGuard: panic buttons, bollards and cameras on campus, relayed to the police.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
sim_app = typer.Typer(help="Simulated devices and platforms that speak the real protocols.")
config_app = typer.Typer(help="Check configuration files and export their JSON Schema.")
app.add_typer(sim_app, name="sim")
app.add_typer(config_app, name="config")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]
LogFormat = Annotated[
    str,
    typer.Option(
        "--log-format",
        envvar="CAMPUSGUARD_LOG_FORMAT",
        help="text (default) or json: one JSON object per line (ts, level, logger, msg)",
    ),
]

SHUTDOWN_DEADLINE = 10.0
"""SIGTERM: the daemon stops in order, and at the latest this many seconds later it exits
anyway (everything queued is already on disk: the edge's outbox, the gateway's database)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (Loki, Elasticsearch, journald)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


JsonFormatter.converter = time.gmtime


def _logging(verbose: bool, log_format: str = "text") -> None:
    if log_format not in ("text", "json"):
        typer.echo(f"campusguard: --log-format must be text or json, not {log_format}", err=True)
        raise typer.Exit(2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    # Their INFO is per-connection chatter; ours says what matters.
    for noisy in ("pymodbus", "amqtt", "transitions", "uvicorn.access", "aiosqlite", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _load(path: Path, model: Any) -> Any:
    try:
        return load_config(path, model)
    except ConfigError as exc:
        typer.echo(f"campusguard: config error: {exc}", err=True)
        raise typer.Exit(2) from None


def _load_edge(path: Path) -> EdgeConfig:
    from edge.daemon import check_devices

    cfg: EdgeConfig = _load(path, EdgeConfig)
    try:
        check_devices(cfg, str(path))
    except ConfigError as exc:
        typer.echo(f"campusguard: config error: {exc}", err=True)
        raise typer.Exit(2) from None
    return cfg


def _run(coro: Any) -> None:
    # Everything loaded by now (modules, config) lives as long as the process: keep it out of
    # the collector's full passes, whose pauses otherwise show in the latency tails (the p99 of
    # a 20-campus alarm list went from 92 to 28 ms in process; bench/api_alarms.py).
    gc.collect()
    gc.freeze()
    # Ctrl-C: asyncio cancels the main task, so every context manager closes in order.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_until_sigterm(coro))


async def _until_sigterm(coro: Any) -> None:
    """SIGTERM (systemd, docker stop) does what Ctrl-C does: cancel the main task so every
    context manager closes in order; a watchdog ends the process if that takes too long."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        if terminated:
            return
        terminated = True
        logging.getLogger("campusguard").info(
            "SIGTERM: shutting down (at most %.0f s)", SHUTDOWN_DEADLINE
        )
        watchdog = threading.Timer(SHUTDOWN_DEADLINE - 1.0, _hard_exit)
        watchdog.daemon = True
        watchdog.start()
        task.cancel()

    with contextlib.suppress(NotImplementedError):  # not on Windows
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        await coro
    except asyncio.CancelledError:
        if not terminated:
            raise
        logging.getLogger("campusguard").info("stopped")


def _hard_exit() -> None:
    logging.getLogger("campusguard").error(
        "shutdown took longer than %.0f s: exiting now", SHUTDOWN_DEADLINE
    )
    logging.shutdown()
    os._exit(0)


@app.command()
def edge(config: ConfigOpt, verbose: Verbose = False, log_format: LogFormat = "text") -> None:
    """Run a campus edge daemon: poll devices, queue events on disk, send them over MQTT."""
    cfg = _load_edge(config)
    _logging(verbose, log_format)
    from edge.daemon import run_forever

    _run(run_forever(cfg))


@app.command()
def gateway(config: ConfigOpt, verbose: Verbose = False, log_format: LogFormat = "text") -> None:
    """Run the central gateway: ingest, store, relay alarms to the police, serve the API."""
    cfg = _load(config, GatewayConfig)
    _logging(verbose, log_format)
    from gateway.service import run_forever

    _run(run_forever(cfg))


@app.command()
def demo(
    duration: Annotated[
        float | None, typer.Option(help="run this many seconds, then stop cleanly")
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="where the demo keeps its files")] = Path(
        "var/demo"
    ),
    broker_port: Annotated[int, typer.Option(help="embedded broker port (0: free port)")] = 0,
    http_port: Annotated[int, typer.Option(help="gateway API port (0: free port)")] = 8080,
    console_port: Annotated[int, typer.Option(help="guard console port (0: free port)")] = 8090,
    verbose: Verbose = False,
) -> None:
    """A whole campus and centre on this machine: broker, simulators, edge, gateway, police."""
    _logging(verbose)
    from campusguard.demo import run_demo

    _run(run_demo(data_dir, duration, broker_port, http_port, console_port))


@sim_app.command("modbus")
def sim_modbus(
    profile: Annotated[str, typer.Option(help="module profile to emulate")] = "adam-6050",
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Modbus TCP port")] = 5020,
    http_port: Annotated[int | None, typer.Option(help="HTTP control port")] = 8021,
    verbose: Verbose = False,
) -> None:
    """A Modbus TCP DI module whose buttons can be pressed over HTTP."""
    _logging(verbose)
    from simulators.modbus_io import run_modbus_sim

    _run(run_modbus_sim(profile=profile, host=host, port=port, http_port=http_port))


@sim_app.command("press")
def sim_press(
    channel: Annotated[int, typer.Argument(help="input channel, from 0")] = 0,
    ms: Annotated[int, typer.Option(help="press length in milliseconds")] = 200,
    url: Annotated[str, typer.Option(help="the simulator's HTTP control URL")] = (
        "http://127.0.0.1:8021"
    ),
) -> None:
    """Press a button on a running Modbus simulator."""
    import httpx

    try:
        r = httpx.post(f"{url}/press", params={"channel": channel, "ms": ms}, timeout=5)
    except httpx.HTTPError as exc:
        typer.echo(f"campusguard: cannot reach the simulator at {url}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(r.text)
    if r.status_code >= 400:
        raise typer.Exit(1)


@sim_app.command("bollard")
def sim_bollard(
    profile: Annotated[str, typer.Option(help="controller profile to emulate")] = "generic-plc",
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Modbus TCP port")] = 5021,
    http_port: Annotated[int | None, typer.Option(help="HTTP control port")] = 8022,
    bollards: Annotated[int, typer.Option(help="bollards on this controller")] = 2,
    travel_time: Annotated[float, typer.Option(help="seconds for a raise or lower")] = 3.0,
    verbose: Verbose = False,
) -> None:
    """A bollard controller (PLC) with travel time, limit switches, loop and fault knobs.

    Scripted over HTTP, e.g. curl -X POST 'http://127.0.0.1:8022/impact?bollard=0'.
    """
    _logging(verbose)
    from simulators.bollard import run_bollard_sim

    _run(
        run_bollard_sim(profile, host, port, http_port, bollards=bollards, travel_time=travel_time)
    )


@sim_app.command("bollard-do")
def sim_bollard_do(
    action: Annotated[
        str,
        typer.Argument(
            help="impact, loop, jam, fault, limits, mains, battery, pressure, maintenance, "
            "manual, command (the simulator's HTTP control endpoints)"
        ),
    ],
    bollard: Annotated[int, typer.Option(help="bollard index")] = 0,
    param: Annotated[
        list[str] | None,
        typer.Option("--set", help="extra query parameter, e.g. --set occupied=1 --set code=7"),
    ] = None,
    url: Annotated[str, typer.Option(help="the simulator's HTTP control URL")] = (
        "http://127.0.0.1:8022"
    ),
) -> None:
    """Script a running bollard simulator: a vehicle hit, the loop occupied, a jam, a fault."""
    import httpx

    query: dict[str, str] = {"bollard": str(bollard)}
    for item in param or []:
        key, _, value = item.partition("=")
        query[key] = value
    try:
        r = httpx.post(f"{url}/{action}", params=query, timeout=5)
    except httpx.HTTPError as exc:
        typer.echo(f"campusguard: cannot reach the simulator at {url}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(r.text)
    if r.status_code >= 400:
        raise typer.Exit(1)


@sim_app.command("camera")
def sim_camera(
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(help="ONVIF HTTP port (0: free port)")] = 8000,
    username: Annotated[str, typer.Option(help="ONVIF and snapshot user")] = "admin",
    password: Annotated[str, typer.Option(help="its password")] = "campus-cam-pw",  # noqa: S107
    http_port: Annotated[int | None, typer.Option(help="HTTP control port")] = 8023,
    name: Annotated[str, typer.Option(help="shown in the video and the log")] = "sim-camera",
    rtsp: Annotated[bool, typer.Option(help="serve the RTSP test stream (GStreamer)")] = True,
    rtsp_port: Annotated[int, typer.Option(help="RTSP port (0: free port)")] = 8554,
    rtsp_path: Annotated[str, typer.Option(help="RTSP mount path")] = "cam",
    codec: Annotated[str, typer.Option(help="auto (H.264 if available), h264 or mjpeg")] = "auto",
    verbose: Verbose = False,
) -> None:
    """An ONVIF camera (events, snapshot, faults) with a live RTSP test stream.

    Scripted over HTTP, e.g. curl -X POST 'http://127.0.0.1:8023/event?kind=tamper'.
    """
    if codec not in ("auto", "h264", "mjpeg"):
        typer.echo("campusguard: --codec must be auto, h264 or mjpeg", err=True)
        raise typer.Exit(2)
    _logging(verbose)
    from simulators.camera import CameraSimulator, run_camera_sim

    def started(sim: CameraSimulator) -> None:
        typer.echo(f"ONVIF device service  {sim.base_url}/onvif/device_service")
        typer.echo(f"snapshot              {sim.snapshot_url}  (user {username})")
        if sim.stream is not None:
            typer.echo(f"RTSP stream           {sim.stream.url}  ({sim.stream.codec})")
        else:
            typer.echo("RTSP stream           off")
        if sim.http_port is not None:
            typer.echo(f"HTTP control          http://{host}:{sim.http_port}/state")
        typer.echo("Stop with Ctrl-C.")

    _run(
        run_camera_sim(
            host,
            port,
            username=username,
            password=password,
            http_port=http_port,
            name=name,
            rtsp=rtsp,
            rtsp_port=rtsp_port,
            rtsp_path=rtsp_path,
            codec=codec,  # type: ignore[arg-type]  # checked above
            started=started,
        )
    )


@sim_app.command("police")
def sim_police(
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP and UDP port")] = 12000,
    key: Annotated[
        str | None, typer.Option(help="AES key (hex); default env CG_DC09_KEY if set")
    ] = None,
    log_file: Annotated[Path | None, typer.Option(help="JSON lines of what arrived")] = None,
    verbose: Verbose = False,
) -> None:
    """A DC-09 alarm receiving platform: checks CRC, length, time window, decrypts, ACKs."""
    _logging(verbose)
    from simulators.police import serve_forever

    key = key or os.environ.get("CG_DC09_KEY") or None
    _run(serve_forever(host, port, key=key, key_encoding="hex", log_path=log_file))


bollard_app = typer.Typer(help="Operate a campus' bollards from the centre (over MQTT).")
app.add_typer(bollard_app, name="bollard")


@bollard_app.command("send")
def bollard_send(
    action: Annotated[str, typer.Argument(help="raise, lower, stop or emergency_raise")],
    campus: Annotated[str, typer.Option(help="campus id")],
    device: Annotated[str, typer.Option(help="bollard controller id")],
    bollard: Annotated[int, typer.Option(help="bollard index on the controller")] = 0,
    user: Annotated[str, typer.Option(help="who asks (audited)")] = os.environ.get(
        "USER", "operator"
    ),
    role: Annotated[str, typer.Option(help="your role (the edge's policy checks it)")] = "guard",
    reason: Annotated[str, typer.Option(help="why (audited; required for some commands)")] = "",
    broker: Annotated[str, typer.Option(help="MQTT broker host:port")] = "127.0.0.1:1883",
    yes: Annotated[bool, typer.Option("--yes", help="confirm an armed raise without asking")] = (
        False
    ),
    wait: Annotated[float, typer.Option(help="seconds to wait for the outcome")] = 30.0,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="CG_GATEWAY_CONFIG",
            help="the gateway config: with command_signing, commands are signed with its key",
        ),
    ] = None,
    signing_key: Annotated[
        Path | None,
        typer.Option(help="command-signing.key to sign with (instead of the config's)"),
    ] = None,
) -> None:
    """Send a bollard command and follow it until the bollard confirms (or refuses).

    Signed like the gateway signs (edges with command_signing refuse unsigned commands) when
    --config names a gateway config with command_signing, or --signing-key is given.
    """
    if action not in ("raise", "lower", "stop", "emergency_raise"):
        typer.echo("campusguard: action must be raise, lower, stop or emergency_raise", err=True)
        raise typer.Exit(2)
    host, _, port = broker.rpartition(":")
    import functools

    from campusguard.bollard_cli import send_command
    from contract import signing

    if signing_key is None and config is not None:
        gw: GatewayConfig = _load(config, GatewayConfig)
        if gw.command_signing is not None:
            signing_key = gw.command_signing.private_key_file
    sign: functools.partial[bytes] | None = None
    if signing_key is not None:
        try:
            private_key = signing.load_private_key(signing_key)
        except (OSError, ValueError, TypeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            typer.echo(
                f"campusguard: cannot read the command-signing key {signing_key}: {why}; "
                "nothing sent (edges with command_signing refuse unsigned commands)",
                err=True,
            )
            raise typer.Exit(2) from None
        sign = functools.partial(signing.sign, private_key, "command")

    code = asyncio.run(
        send_command(
            host or "127.0.0.1",
            int(port or 1883),
            campus=campus,
            device=device,
            bollard=bollard,
            action=action,
            user=user,
            role=role,
            reason=reason,
            confirm=(lambda text: yes or typer.confirm(text)),
            wait=wait,
            say=typer.echo,
            sign=sign,
        )
    )
    raise typer.Exit(code)


drill_app = typer.Typer(help="Start, end and list drills (through the gateway's HTTP API).")
app.add_typer(drill_app, name="drill")

ApiUrl = Annotated[str, typer.Option("--url", envvar="CG_API_URL", help="the gateway's HTTP API")]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="CG_API_TOKEN", help="bearer token (api_tokens)"),
]


def _drill_call(method: str, url: str, path: str, token: str | None, **kw: Any) -> Any:
    from campusguard.drill_cli import call

    code, body = call(method, url, path, token, lambda t: typer.echo(t, err=True), **kw)
    if code:
        raise typer.Exit(code)
    return body


@drill_app.command("start")
def drill_start(
    campus: Annotated[str, typer.Option(help="campus id")],
    kind: Annotated[
        str, typer.Option(help="fire, earthquake, stampede, intruder or other")
    ] = "other",
    minutes: Annotated[
        float | None, typer.Option(help="length; default the gateway's drills.default_minutes")
    ] = None,
    at: Annotated[
        str | None, typer.Option(help="schedule it: ISO time with zone, 2026-12-01T09:00+08:00")
    ] = None,
    note: Annotated[str, typer.Option(help="kept with the record")] = "",
    url: ApiUrl = "http://127.0.0.1:8080",
    token: TokenOpt = None,
) -> None:
    """Start a drill now (alarms of the campus go to the police as tests) or schedule one."""
    body: dict[str, Any] = {"campus": campus, "kind": kind, "note": note, "source": "cli"}
    if minutes is not None:
        body["minutes"] = minutes
    if at is not None:
        body["planned_start"] = at
    from campusguard.drill_cli import line

    d = _drill_call("POST", url, "/api/drills", token, json=body)
    typer.echo(("scheduled " if d["status"] == "scheduled" else "started ") + line(d))


@drill_app.command("end")
def drill_end(
    drill_id: Annotated[str, typer.Argument(help="the drill's id")],
    url: ApiUrl = "http://127.0.0.1:8080",
    token: TokenOpt = None,
) -> None:
    """End a running drill (the campus confirms) or cancel a scheduled one."""
    from campusguard.drill_cli import line

    d = _drill_call("POST", url, f"/api/drills/{drill_id}/end", token)
    typer.echo(("cancelled " if d["state"] == "cancelled" else "ending ") + line(d))


@drill_app.command("list")
def drill_list(
    campus: Annotated[str | None, typer.Option(help="only this campus")] = None,
    state: Annotated[
        str | None,
        typer.Option(help="scheduled, requested, running, ended or cancelled"),
    ] = None,
    url: ApiUrl = "http://127.0.0.1:8080",
    token: TokenOpt = None,
) -> None:
    """List drill records, newest first."""
    from campusguard.drill_cli import line

    rows = _drill_call("GET", url, "/api/drills", token, params={"campus": campus, "state": state})
    for d in rows:
        typer.echo(line(d))
    if not rows:
        typer.echo("no drills")


@drill_app.command("compliance")
def drill_compliance(
    campus: Annotated[str | None, typer.Option(help="only this campus")] = None,
    format: Annotated[str, typer.Option(help="table, json or csv")] = "table",
    url: ApiUrl = "http://127.0.0.1:8080",
    token: TokenOpt = None,
) -> None:
    """Which campuses are overdue for a drill. Exit code 1 if any is."""
    fmt = "csv" if format == "csv" else "json"
    out = _drill_call(
        "GET", url, "/api/drills/compliance", token, params={"campus": campus, "format": fmt}
    )
    if format == "csv":
        typer.echo(out, nl=False)
    elif format == "json":
        typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        for r in out:
            flag = "OVERDUE" if r["overdue"] else "ok"
            typer.echo(
                f"{r['campus']:<24} {r['type']:<12} {r['required']:<9} {flag:<7} "
                f"this period {r['drills_this_period']}  last {r['last_drill_end'] or 'never'}"
                f"  due {r['next_due']}"
            )
    if any(r["overdue"] for r in (out if isinstance(out, list) else [])):
        raise typer.Exit(1)


@app.command()
def selftest(
    campus: Annotated[str, typer.Option(help="campus id")],
    device: Annotated[str, typer.Option(help="device id on that campus")],
    gateway: Annotated[str, typer.Option(help="the gateway API's URL")] = "http://127.0.0.1:8080",
    token: Annotated[
        str | None, typer.Option(help="API bearer token; default env CG_API_TOKEN")
    ] = None,
    mode: Annotated[
        str, typer.Option(help="synthetic (a test event) or pulse (the test output)")
    ] = "synthetic",
    timeout: Annotated[float, typer.Option(help="seconds before it counts as failed")] = 30.0,
) -> None:
    """Prove one device's alarm path end to end and time each hop (exit 0 only if all did)."""
    if mode not in ("synthetic", "pulse"):
        typer.echo("campusguard: --mode must be synthetic or pulse", err=True)
        raise typer.Exit(2)
    token = token or os.environ.get("CG_API_TOKEN")
    if not token:
        typer.echo("campusguard: give --token or set CG_API_TOKEN", err=True)
        raise typer.Exit(2)
    from campusguard.selftest_cli import run_selftest

    code = run_selftest(
        gateway, token, campus=campus, device=device, mode=mode, timeout=timeout, say=typer.echo
    )
    raise typer.Exit(code)


discover_app = typer.Typer(help="Find devices on the campus network.")
app.add_typer(discover_app, name="discover")


@discover_app.command("modbus")
def discover_modbus(
    hosts: Annotated[str, typer.Option(help="e.g. 192.0.2.10-40,192.0.2.99")],
    ports: Annotated[str, typer.Option(help="TCP ports, e.g. 502,5020")] = "502",
    units: Annotated[str, typer.Option(help="unit ids, e.g. 1-4")] = "1",
    timeout: Annotated[float, typer.Option(help="seconds per request")] = 0.3,
    stanza: Annotated[bool, typer.Option(help="print a devices: stanza for the config")] = False,
) -> None:
    """Scan hosts and unit ids for Modbus DI modules and name the profiles that fit."""
    from campusguard import discover

    try:
        host_list = discover.parse_hosts(hosts)
        found = asyncio.run(
            discover.scan_modbus(
                host_list, discover.parse_numbers(ports), discover.parse_numbers(units), timeout
            )
        )
    except (ValueError, OSError) as exc:
        typer.echo(f"campusguard: {exc}", err=True)
        raise typer.Exit(2) from None
    if not found:
        typer.echo("no Modbus device answered")
        raise typer.Exit(1)
    for f in found:
        partial = ", ".join(f"{n} {h}/{t}" for n, h, t in f.profiles if 0 < h < t)
        typer.echo(
            f"{f.host}:{f.port} unit {f.unit}: fits {', '.join(f.fits) or 'none fully'}"
            + (f"; partly {partial}" if partial and not f.fits else "")
        )
    if stanza:
        typer.echo("devices:")
        for i, f in enumerate(found, 1):
            typer.echo(discover.stanza(f, i), nl=False)


@discover_app.command("onvif")
def discover_onvif(
    target: Annotated[
        list[str] | None,
        typer.Option(help="host[:port] to probe by unicast (default port 3702); repeatable"),
    ] = None,
    multicast: Annotated[
        bool, typer.Option(help="also probe the multicast group 239.255.255.250:3702")
    ] = True,
    interface: Annotated[
        str | None, typer.Option(help="local IPv4 address to send the multicast probe from")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to listen for answers")] = 3.0,
    username: Annotated[
        str | None, typer.Option(help="ONVIF user: also read device info and profiles")
    ] = None,
    password: Annotated[str | None, typer.Option(help="its password")] = None,
    password_file: Annotated[
        Path | None, typer.Option(help="file holding the password (first line)")
    ] = None,
    stanza: Annotated[bool, typer.Option(help="print a cameras: stanza for the config")] = False,
    write: Annotated[
        Path | None, typer.Option(help="write the cameras: stanza to this file")
    ] = None,
) -> None:
    """Find ONVIF cameras by WS-Discovery; with credentials, ask each who it is."""
    from campusguard import discover_onvif as wsd

    try:
        targets = [wsd.parse_target(t) for t in target or []]
        if password_file is not None:
            password = password_file.read_text(encoding="utf-8").strip()
        result = asyncio.run(
            wsd.discover_onvif(targets, multicast=multicast, listen=timeout, interface=interface)
        )
        if result.cameras and (username is not None or password is not None):
            asyncio.run(wsd.describe(result.cameras, username or "admin", password or ""))
    except (ValueError, OSError) as exc:
        typer.echo(f"campusguard: {exc}", err=True)
        raise typer.Exit(2) from None
    for err in dict.fromkeys(result.errors):
        typer.echo(f"campusguard: warning: {err}", err=True)
    if result.garbage:
        typer.echo(f"campusguard: ignored {result.garbage} unreadable answer(s)", err=True)
    if not result.cameras:
        typer.echo("no ONVIF camera answered")
        raise typer.Exit(1)
    described = username is not None or password is not None
    typer.echo(wsd.table(result.cameras, described), nl=False)
    text = wsd.stanza(result.cameras, username or "admin")
    if stanza:
        typer.echo(text, nl=False)
    if write is not None:
        try:
            write.write_text(text, encoding="utf-8")
        except OSError as exc:
            typer.echo(f"campusguard: cannot write {write}: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"wrote {len(result.cameras)} camera(s) to {write}")


console_app = typer.Typer(help="The guard console served by the campus edge.")
app.add_typer(console_app, name="console")


@console_app.command("hash-password")
def console_hash_password(
    password: Annotated[
        str | None,
        typer.Option(help="the password (default: asked twice, not echoed; avoid the history)"),
    ] = None,
) -> None:
    """Print the argon2id hash for a console user's ``password_hash``."""
    from webkit.passwords import hash_password

    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        typer.echo("campusguard: a console password needs at least 8 characters", err=True)
        raise typer.Exit(2)
    typer.echo(hash_password(password))


certs_app = typer.Typer(help="TLS certificates, broker passwords and ACL, command-signing key.")
app.add_typer(certs_app, name="certs")


@certs_app.command("generate")
def certs_generate(
    out: Annotated[Path, typer.Option(help="folder for the files (0600)")] = Path("var/certs"),
    campus: Annotated[list[str], typer.Option(help="campus id (repeat)")] = [],  # noqa: B006
    gateway: Annotated[list[str], typer.Option(help="gateway id (repeat)")] = [],  # noqa: B006
    dns: Annotated[list[str], typer.Option(help="broker DNS name (repeat)")] = [],  # noqa: B006
    ip: Annotated[list[str], typer.Option(help="broker IP address (repeat)")] = [],  # noqa: B006
    passwords: Annotated[
        bool, typer.Option(help="also per-user passwords and mosquitto.passwd")
    ] = False,
) -> None:
    """CA, broker server certificate, one client certificate per campus edge (CN
    edge-<campus>) and per gateway (CN gateway-<id>); existing files are kept."""
    from campusguard.certs import generate

    if not dns and not ip:
        ip = ["127.0.0.1"]
    try:
        done = generate(
            out, campuses=campus, gateways=gateway, dns=dns, ips=ip, passwords=passwords
        )
    except ValueError as exc:
        typer.echo(f"campusguard: {exc}", err=True)
        raise typer.Exit(2) from None
    for line in done.lines():
        typer.echo(line)


@certs_app.command("acl")
def certs_acl(
    config: Annotated[
        Path | None, typer.Option(help="gateway config: its campuses and gateway id")
    ] = None,
    campus: Annotated[list[str], typer.Option(help="campus id (repeat)")] = [],  # noqa: B006
    gateway: Annotated[list[str], typer.Option(help="gateway id (repeat)")] = [],  # noqa: B006
    out: Annotated[Path | None, typer.Option(help="write here (default: stdout)")] = None,
) -> None:
    """The Mosquitto ACL confining each campus edge to its own subtree."""
    from campusguard.certs import acl_text

    campuses, gateways = list(campus), list(gateway)
    if config is not None:
        gcfg = _load(config, GatewayConfig)
        campuses += [c.id for c in gcfg.campuses]
        gateways.append(gcfg.gateway.id)
    text = acl_text(sorted(set(campuses)), sorted(set(gateways)))
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}")


@certs_app.command("signing-key")
def certs_signing_key(
    out: Annotated[Path, typer.Option(help="folder for the key pair (0600)")] = Path("var/certs"),
) -> None:
    """The gateway's Ed25519 command-signing key (command-signing.key, gateway only) and its
    public half (command-signing.pub, for every edge)."""
    from campusguard.certs import Written, ensure_signing_key

    done = Written()
    ensure_signing_key(out, done)
    for line in done.lines():
        typer.echo(line)


@config_app.command("check")
def config_check(
    path: Path,
    kind: Annotated[
        str | None, typer.Option(help="edge or gateway (default: from the file's keys)")
    ] = None,
) -> None:
    """Validate a config file; exit 2 with one clear message if it is wrong."""
    from campusguard.doctor import detect_kind

    if kind not in (None, "edge", "gateway"):
        typer.echo("campusguard: --kind must be edge or gateway", err=True)
        raise typer.Exit(2)
    chosen = kind or detect_kind(path)
    if chosen == "edge":
        _load_edge(path)
    else:
        _load(path, GatewayConfig)
    typer.echo(f"{path}: ok ({chosen} config)")


def _stable(node: Any, in_default: bool = False) -> Any:
    """Sets have no order: sort the string lists of defaults so the exported file only changes
    when the models do (Python randomises string hashing per process)."""
    if isinstance(node, dict):
        return {k: _stable(v, in_default or k == "default") for k, v in node.items()}
    if isinstance(node, list):
        items = [_stable(v, in_default) for v in node]
        if in_default and items and all(isinstance(v, str) for v in items):
            return sorted(items)
        return items
    return node


def schemas() -> dict[str, dict[str, Any]]:
    return {
        "edge.schema.json": _stable(EdgeConfig.model_json_schema()),
        "gateway.schema.json": _stable(GatewayConfig.model_json_schema()),
    }


@config_app.command("schema")
def config_schema(
    out: Annotated[Path, typer.Option(help="folder to write the JSON Schemas to")] = Path("config"),
) -> None:
    """Export the config JSON Schemas (editors use them to check YAML as you type)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas().items():
        (out / name).write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
        typer.echo(f"wrote {out / name}")


# --- cameras: the edge's own video analysis (issue 9) ------------------------------------------

camera_app = typer.Typer(help="Cameras: check a camera's picture, baseline and zones.")
app.add_typer(camera_app, name="camera")
app.add_typer(__import__("campusguard.users_cli").users_cli.users_app, name="users")
app.command("doctor")(__import__("campusguard.doctor").doctor.doctor)


@camera_app.command("calibrate")
def camera_calibrate(
    config: ConfigOpt,
    camera: Annotated[str, typer.Option("--camera", help="camera id of cameras:")],
    out: Annotated[Path, typer.Option("--out", help="folder for the images and stats")],
    timeout: Annotated[float, typer.Option(help="seconds to get a frame")] = 15.0,
) -> None:
    """Grab a frame; write the tamper baseline (image, stats) and the zones drawn on it."""
    from edge.video.calibrate import CalibrateError, calibrate, grab_frame

    cfg: EdgeConfig = _load(config, EdgeConfig)
    cams = {c.id: c for c in cfg.cameras}
    cam = cams.get(camera)
    if cam is None:
        typer.echo(
            f"campusguard: config error: {config}: no camera {camera!r}; cameras: {sorted(cams)}",
            err=True,
        )
        raise typer.Exit(2)

    async def stream_url() -> str:
        if cam.video.stream_url:
            return cam.video.stream_url
        from drivers.onvif import OnvifCamera
        from edge.cameras import with_credentials

        async with OnvifCamera(
            cam.host, cam.port, cam.username, cam.secret(), timeout=cam.timeout
        ) as onvif:
            token = cam.video.profile or cam.snapshot_profile
            if token is None:
                profiles = await onvif.profiles()
                if not profiles:
                    raise CalibrateError("the camera has no media profile")
                token = profiles[0].token
            return with_credentials(await onvif.stream_uri(token), cam.username, cam.secret())

    try:
        url = asyncio.run(stream_url())
        frame = grab_frame(url, timeout)
    except Exception as exc:  # the camera or its stream: say which and why
        typer.echo(f"campusguard: camera {camera}: {exc}", err=True)
        raise typer.Exit(1) from None
    result = calibrate(cam, frame, out, url)
    for path in result.files:
        typer.echo(f"wrote {path}")
    st = result.stats
    typer.echo(
        f"baseline: mean {st['mean']} std {st['std']} blur {st['blur']} features {st['features']}"
    )
    for warning in result.warnings:
        typer.echo(f"warning: {warning}")


if __name__ == "__main__":
    app()
