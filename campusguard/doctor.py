"""``campusguard doctor``: check everything a campus edge or a gateway talks to, say what is wrong
and how to fix it.

Each check ends OK, WARN or FAIL with a one-line detail and, for WARN and FAIL, a concrete fix
(the config key, the command, the package). Nothing is changed on the way: no alarm is sent
(the police path gets a DC-09 NULL link test, the supervision message), no mail, no webhook,
no Modbus write (latched inputs are read as plain states, so a press the running edge has not
seen yet stays latched for it), no database migration, no data directory created.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import json
import logging
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml

from contract.config import (
    CameraConfig,
    ConfigError,
    DatabaseConfig,
    Dc09Path,
    EdgeConfig,
    GatewayConfig,
    ModbusDeviceConfig,
    MqttConfig,
    SmtpConfig,
    load_config,
)

Status = Literal["OK", "WARN", "FAIL"]
Kind = Literal["edge", "gateway"]

GIB = 1024**3
MIB = 1024**2
WARN_FREE = 1 * GIB
FAIL_FREE = 200 * MIB
CLOCK_SKEW_WARN_S = 5.0
"""A camera clock further off than this: ONVIF WS-Security (the simulator's and many cameras'
tolerance is 5 s) and event times suffer."""


@dataclass
class Check:
    """One line of the report."""

    check: str
    status: Status
    detail: str
    fix: str = ""


def ok(check: str, detail: str) -> Check:
    return Check(check, "OK", detail)


def warn(check: str, detail: str, fix: str) -> Check:
    return Check(check, "WARN", detail, fix)


def fail(check: str, detail: str, fix: str) -> Check:
    return Check(check, "FAIL", detail, fix)


# --- loading ------------------------------------------------------------------------------------


def detect_kind(path: Path) -> Kind:
    """``gateway`` when the file has a gateway's top-level keys, else ``edge``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, RecursionError):
        return "edge"  # loading names the problem
    if isinstance(data, dict) and ({"gateway", "campuses", "database", "dc09"} & set(data)):
        return "gateway"
    return "edge"


def load(path: Path, kind: Kind) -> EdgeConfig | GatewayConfig:
    """The config, checked as ``campusguard config check`` does.

    Raises:
        ConfigError: the same one clear message.
    """
    if kind == "gateway":
        return load_config(path, GatewayConfig)
    from edge.daemon import check_devices

    cfg = load_config(path, EdgeConfig)
    check_devices(cfg, str(path))
    return cfg


def secrets_of(cfg: EdgeConfig | GatewayConfig) -> list[str]:
    """Every secret the config holds, so that no report line can show one."""
    found: list[str | None] = []

    def grab(get: Callable[[], str | None]) -> None:
        with contextlib.suppress(Exception):
            found.append(get())

    grab(cfg.mqtt.secret)
    if isinstance(cfg, EdgeConfig):
        for cam in cfg.cameras:
            grab(cam.secret)
    else:
        from sqlalchemy.engine import make_url

        grab(lambda: make_url(cfg.database.url).password)  # type: ignore[arg-type]
        grab(cfg.database.secret)
        if cfg.dc09 is not None:
            grab(cfg.dc09.key_text)
        if cfg.influxdb is not None:
            grab(cfg.influxdb.password_text)
            grab(cfg.influxdb.token_text)
        if cfg.notify is not None and cfg.notify.smtp is not None:
            grab(cfg.notify.smtp.secret)
        for tok in cfg.api_tokens:
            grab(tok.secret)
        for sink in (cfg.webhook, cfg.cap):
            if sink is not None:
                grab(lambda s=sink: s.secret_bytes().decode())  # type: ignore[misc]
    return sorted({s for s in found if s and len(s) >= 3}, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text


# --- small helpers ------------------------------------------------------------------------------


def _why(exc: BaseException) -> str:
    """What went wrong, as an operator says it."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "no route to host"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


async def tcp_probe(host: str, port: int, wait: float) -> tuple[float, BaseException | None]:
    """Seconds a TCP connect took, or the error."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(wait):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        return time.monotonic() - started, exc
    elapsed = time.monotonic() - started
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return elapsed, None


def _why_probe(err: BaseException, wait: float) -> str:
    if isinstance(err, TimeoutError):
        return f"timeout (no answer within {wait:g} s)"
    return _why(err)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- the machine --------------------------------------------------------------------------------


def check_data_dir(path: Path, key: str) -> Check:
    name = "data dir"
    where = path
    while not where.exists() and where != where.parent:
        where = where.parent
    user = _user()
    if not where.is_dir():
        return fail(name, f"{path}: {where} is not a directory", f"set {key} to a directory")
    if where != path:
        if not os.access(where, os.W_OK | os.X_OK):
            return fail(
                name,
                f"{path} does not exist and {user} cannot create it in {where}",
                f"sudo install -d -o {user} -m 0750 {path}   (or set {key})",
            )
        made = "does not exist yet; will be created at start"
    else:
        try:
            with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
                pass
        except OSError as exc:
            return fail(
                name,
                f"{path}: not writable by {user} ({_why(exc)})",
                f"sudo chown -R {user} {path}   (or set {key})",
            )
        made = "writable"
    free = shutil.disk_usage(where).free
    text = f"{path}: {made}, {free / GIB:.1f} GiB free"
    if free < FAIL_FREE:
        return fail(name, text, f"free space on the disk holding {where} (at least 1 GiB)")
    if free < WARN_FREE:
        return warn(name, text, f"free space on the disk holding {where} (at least 1 GiB)")
    return ok(name, text)


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


class _Timex(ctypes.Structure):
    # struct timex (linux/timex.h): only the leading fields matter; the padding covers the rest.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("rest", ctypes.c_long * 40),
    ]


_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


def _kernel_ntp_synced() -> bool | None:
    """What timedatectl reports, from the kernel itself (adjtimex, read only); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR and not tx.status & _STA_UNSYNC


def check_clock() -> Check:
    name = "clock"
    fix = (
        "enable NTP: `sudo timedatectl set-ntp true` (systemd-timesyncd) or install chrony "
        "(`sudo apt-get install chrony`); DC-09 receivers refuse messages with a wrong time"
    )
    answer: str | None = None
    how = "timedatectl"
    timedatectl = shutil.which("timedatectl")
    if timedatectl:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            r = subprocess.run(  # noqa: S603 (found by which, no shell)
                [timedatectl, "show", "-p", "NTPSynchronized", "--value"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            if r.returncode == 0 and r.stdout.strip() in ("yes", "no"):
                answer = r.stdout.strip()
    if answer is None:
        synced = _kernel_ntp_synced()
        how = "kernel adjtimex"
        answer = None if synced is None else ("yes" if synced else "no")
    if answer is None:
        return warn(name, "cannot tell whether the clock is NTP-synchronised", fix)
    if answer == "yes":
        return ok(name, f"NTP-synchronised ({how})")
    return warn(name, f"not NTP-synchronised ({how})", fix)


def check_listen(name: str, host: str, port: int, key: str) -> Check:
    if port == 0:
        return ok(name, f"{host}: a free port is picked at start")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        where = _hostport(host, port)
        if exc.errno == errno.EADDRINUSE:
            return warn(
                name,
                f"{where} is in use (by the edge itself if it is running)",
                f"`ss -ltnp 'sport = :{port}'` shows who; if not campusguard, change {key}",
            )
        if exc.errno == errno.EACCES:
            return fail(name, f"{where}: permission denied", f"use a port >= 1024 in {key}")
        return fail(name, f"{where}: {_why(exc)}", f"use an address of this machine in {key}")
    return ok(name, f"{_hostport(host, port)} can be bound")


# --- MQTT ---------------------------------------------------------------------------------------


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    tls = cfg.tls
    assert tls is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    else:
        ctx.load_default_certs()
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls.insecure:
        ctx.check_hostname = False
    return ctx


async def check_mqtt(cfg: MqttConfig, wait: float, subscribe: list[str]) -> Check:
    import aiomqtt
    from paho.mqtt.reasoncodes import ReasonCode

    from contract.mqtt import tls_params

    name = "mqtt broker"
    where = _hostport(cfg.host, cfg.port)
    elapsed, err = await tcp_probe(cfg.host, cfg.port, wait)
    if err is not None:
        why = f"no answer within {wait:g} s" if isinstance(err, TimeoutError) else _why(err)
        return fail(
            name,
            f"{where}: {why}",
            "start the broker (`systemctl status mosquitto`) or correct mqtt.host / mqtt.port; "
            "a firewall must let this machine reach it",
        )
    steps = [f"TCP {_ms(elapsed)}"]
    if cfg.tls is not None:
        try:
            ctx = _tls_context(cfg)
        except (OSError, ssl.SSLError) as exc:
            return fail(
                name,
                f"{where}: cannot load the TLS files: {_why(exc)}",
                "mqtt.tls.ca_file / cert_file / key_file must be readable PEM files "
                "(`campusguard certs generate`)",
            )
        started = time.monotonic()
        try:
            async with asyncio.timeout(wait):
                _, writer = await asyncio.open_connection(
                    cfg.host, cfg.port, ssl=ctx, server_hostname=cfg.host
                )
        except ssl.SSLCertVerificationError as exc:
            fix = (
                f"the broker's certificate must name {cfg.host} (reissue it: `campusguard certs "
                "generate --dns/--ip`) or set mqtt.host to a name it has"
                if "mismatch" in (exc.verify_message or "").lower()
                else "mqtt.tls.ca_file must be the CA that signed the broker's certificate"
            )
            return fail(name, f"{where}: {_why(exc)}", fix)
        except (OSError, TimeoutError) as exc:
            return fail(
                name,
                f"{where}: TLS handshake failed: {_why(exc)}",
                "is this the broker's TLS port (8883)? mqtt.port / mqtt.tls",
            )
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        steps.append(f"TLS {_ms(time.monotonic() - started)}")
    try:
        password = cfg.secret()
    except OSError as exc:
        return fail(name, f"mqtt.password_file: {_why(exc)}", "make it readable by this user")
    # paho says why a connection broke (a TLS alert) only in its log: keep it for the report.
    heard = _Recorder()
    mqtt_log = logging.getLogger(f"campusguard.doctor.mqtt.{id(heard)}")
    mqtt_log.propagate = False
    mqtt_log.setLevel(logging.DEBUG)
    mqtt_log.addHandler(heard)
    client = aiomqtt.Client(
        logger=mqtt_log,
        hostname=cfg.host,
        port=cfg.port,
        username=cfg.username,
        password=password,
        # Never a running daemon's id (the broker would drop that session), never persistent.
        identifier=f"cg-doctor-{uuid.uuid4().hex[:12]}",
        clean_session=True,
        timeout=wait,
        tls_params=tls_params(cfg),
        tls_insecure=bool(cfg.tls and cfg.tls.insecure) or None,
    )
    user = f"user {cfg.username!r}" if cfg.username else "no user name"
    started = time.monotonic()
    try:
        async with asyncio.timeout(wait * 2), client:
            steps.append(f"CONNECT {_ms(time.monotonic() - started)} ({user})")
            for topic in subscribe:
                granted = await client.subscribe(topic, qos=1)
                codes = [g.value if isinstance(g, ReasonCode) else int(g) for g in granted]
                if any(c >= 0x80 for c in codes):
                    return fail(
                        name,
                        f"{where}: the broker refuses SUBSCRIBE {topic} ({user})",
                        "the broker ACL must allow it: `campusguard certs acl --config "
                        "GATEWAY.yaml` (Mosquitto) or config/emqx-acl.conf (EMQX)",
                    )
            if subscribe:
                # EMQX answers a subscription its ACL denies with a failure code; Mosquitto
                # grants it and delivers nothing, so there this proves less.
                steps.append(f"SUBSCRIBE {', '.join(subscribe)} granted")
    except aiomqtt.MqttCodeError as exc:
        rc = exc.rc.value if isinstance(exc.rc, ReasonCode) else int(exc.rc or 0)
        if rc in (5, 135):
            return fail(
                name,
                f"{where}: CONNECT refused: not authorised ({user})",
                "check mqtt.username and mqtt.password (or password_file) against the broker's "
                "users (mosquitto_passwd / `campusguard certs generate --passwords`); with TLS "
                "client certificates the certificate's CN is the user",
            )
        if rc in (4, 134):
            return fail(
                name,
                f"{where}: CONNECT refused: bad user name or password ({user})",
                "check mqtt.username and mqtt.password (or password_file)",
            )
        return fail(name, f"{where}: refused: {exc} ({user})", "see the broker's log")
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            text = f"no CONNACK within {wait:g} s"
        alert = next((m for m in heard.lines if "alert" in m.lower() or "ssl" in m.lower()), "")
        if alert:
            text = f"{text}; {alert}"
        hint = "see the broker's log"
        if "certificate" in text.lower():
            hint = (
                "the broker wants a client certificate it trusts: mqtt.tls.cert_file / key_file "
                "(`campusguard certs generate --campus ...`)"
            )
        return fail(name, f"{where}: MQTT CONNECT failed: {text} ({user})", hint)
    finally:
        mqtt_log.removeHandler(heard)
        logging.Logger.manager.loggerDict.pop(mqtt_log.name, None)
    return ok(name, f"{where}: " + ", ".join(steps))


# --- the edge's devices -------------------------------------------------------------------------


def _endpoint(dev: Any) -> str:
    if dev.transport == "tcp":
        return _hostport(dev.host, dev.port)
    return str(dev.serial.port)


def _serial_problem(port: Path, key: str, name: str) -> Check | None:
    if not port.exists():
        return fail(
            name,
            f"serial port {port} does not exist",
            f"plug in the RS-485 adapter or fix {key}.serial.port (`ls /dev/serial/by-id`)",
        )
    if not os.access(port, os.R_OK | os.W_OK):
        return fail(
            name,
            f"serial port {port}: permission denied for {_user()}",
            f"sudo usermod -a -G dialout {_user()}",
        )
    return None


async def _modbus_reach(
    dev: Any, key: str, wait: float, name: str
) -> tuple[Check | None, float | None]:
    """A TCP device: a plain connect first, so the report can say refused or timeout."""
    if dev.transport != "tcp":
        return _serial_problem(Path(dev.serial.port), key, name), None
    elapsed, err = await tcp_probe(dev.host, dev.port, wait)
    if err is None:
        return None, elapsed
    where = _hostport(dev.host, dev.port)
    why = _why_probe(err, wait)
    return fail(
        name,
        f"{dev.id} at {where}: {why}",
        f"is the device powered and cabled? check {key}.host / {key}.port "
        f"(`campusguard discover modbus --hosts {dev.host} --ports {dev.port}`)",
    ), None


def _modbus_failure(name: str, dev: Any, key: str, unit: int, exc: Exception) -> Check:
    from drivers.modbus.errors import DeviceExceptionResponse, DeviceTimeout

    where = f"{dev.id} at {_endpoint(dev)} unit {unit}"
    if isinstance(exc, DeviceExceptionResponse):
        if exc.code == 2:
            return fail(
                name,
                f"{where}: illegal data address",
                f"the module is not what {key}.profile ({dev.profile}) maps: fix the profile "
                f"(`campusguard discover modbus --hosts {dev.host} --units {unit}`)",
            )
        if exc.code in (10, 11):
            return fail(
                name,
                f"{where}: illegal unit id (the gateway has no unit {unit})",
                f"set {key}.unit to the module's unit id",
            )
        return fail(name, f"{where}: {exc}", f"check {key}.profile and {key}.unit")
    if isinstance(exc, DeviceTimeout):
        return fail(
            name,
            f"{where}: timeout (connected, no reply within {dev.timeout:g} s)",
            f"check {key}.unit (the module's unit id) and that no other program holds the "
            "module's only connection",
        )
    return fail(name, f"{where}: {exc}", f"check {key}.profile, {key}.unit and the wiring")


async def check_modbus_device(dev: ModbusDeviceConfig, i: int, wait: float) -> Check:
    from drivers.modbus.bus import ModbusBus
    from drivers.modbus.errors import ModbusDeviceError
    from drivers.modbus.inputs import DIModuleReader
    from drivers.modbus.profile import load_profile
    from edge.daemon import _connection, channel_specs

    name = f"modbus {dev.id}"
    key = f"devices[{i}]"
    early, _ = await _modbus_reach(dev, key, wait, name)
    if early is not None:
        return early
    profile = load_profile(dev.profile)
    unit = dev.unit if dev.unit is not None else profile.default_unit
    # The poller's reader, with latched inputs read as plain states: clearing a latch here
    # would take a press away from the running edge.
    specs = [
        s.model_copy(update={"mode": "state"}) if s.mode == "latch" else s
        for s in channel_specs(dev)
    ]
    async with ModbusBus(timeout=min(dev.timeout, wait)) as bus:
        reader = DIModuleReader(_connection(bus, dev), profile, unit, specs)
        try:
            reading = await reader.read()
        except ModbusDeviceError as exc:
            return _modbus_failure(name, dev, key, unit, exc)
    active = sum(1 for r in reading.channels.values() if r.active)
    return ok(
        name,
        f"{_endpoint(dev)} unit {unit} ({profile.model}): {len(reading.channels)} input(s) "
        f"read in {_ms(reading.latency_s)}, {active} active",
    )


async def check_bollard_controller(ctl: Any, i: int, wait: float) -> Check:
    from drivers.modbus.bollard import BollardController
    from drivers.modbus.bollard_profile import load_bollard_profile
    from drivers.modbus.bus import ModbusBus
    from drivers.modbus.errors import ModbusDeviceError
    from edge.daemon import _connection

    name = f"bollards {ctl.id}"
    key = f"bollards[{i}]"
    early, _ = await _modbus_reach(ctl, key, wait, name)
    if early is not None:
        return early
    profile = load_bollard_profile(ctl.profile)
    unit = ctl.unit if ctl.unit is not None else profile.default_unit
    async with ModbusBus(timeout=min(ctl.timeout, wait)) as bus:
        controller = BollardController(
            _connection(bus, ctl),
            profile,
            ctl.unit,
            bollards=max(b.index for b in ctl.bollards) + 1,
        )
        try:
            readings = await controller.read_all()
        except ModbusDeviceError as exc:
            return _modbus_failure(name, ctl, key, unit, exc)
    latency = max((r.latency_s for r in readings), default=0.0)
    return ok(
        name,
        f"{_endpoint(ctl)} unit {unit} ({profile.model}): {len(readings)} bollard(s) read "
        f"in {_ms(latency)}",
    )


def _strip_credentials(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


async def check_camera(cam: CameraConfig, i: int, wait: float) -> Check:
    from drivers.onvif import OnvifCamera
    from drivers.onvif.errors import CameraAuthError, CameraError

    name = f"camera {cam.id}"
    key = f"cameras[{i}]"
    where = _hostport(cam.host, cam.port)
    _, err = await tcp_probe(cam.host, cam.port, wait)
    if err is not None:
        why = _why_probe(err, wait)
        return fail(
            name,
            f"{cam.id} at {where}: {why}",
            f"is the camera powered and on the network? check {key}.host / {key}.port "
            "(`campusguard discover onvif`)",
        )
    try:
        async with OnvifCamera(
            cam.host, cam.port, cam.username, cam.secret(), timeout=min(cam.timeout, wait)
        ) as onvif:
            info = await onvif.device_info()
            skew = onvif.clock_skew_s
            profiles = await onvif.profiles()
            if not profiles:
                return fail(name, f"{where}: the camera has no media profile", "configure one")
            token = cam.video.profile or cam.snapshot_profile or profiles[0].token
            stream = _strip_credentials(await onvif.stream_uri(token))
            snap: str
            snap_err: str | None = None
            try:
                image = await onvif.snapshot(cam.snapshot_profile or profiles[0].token)
                size = len(image)
                snap = f"snapshot {size / 1024:.0f} kB" if size >= 10240 else f"snapshot {size} B"
            except CameraError as exc:
                snap, snap_err = "no snapshot", exc.detail
    except CameraAuthError:
        return fail(
            name,
            f"{where}: not authorised (user {cam.username!r})",
            f"check {key}.username and {key}.password (or password_file) in the camera's "
            "ONVIF users (not only its web users)",
        )
    except CameraError as exc:
        return fail(
            name,
            f"{where}: {exc.action}: {exc.detail}",
            f"is ONVIF enabled on the camera, on port {cam.port}? check {key}.port",
        )
    skew_text = "clock skew unknown" if skew is None else f"clock skew {skew:+.0f} s"
    detail = f"{where}: {info.manufacturer} {info.model} fw {info.firmware_version}, " + ", ".join(
        [skew_text, snap, f"stream {stream}"]
    )
    if snap_err is not None:
        return warn(
            name,
            f"{detail} ({snap_err})",
            "no evidence pictures: check the camera's snapshot (HTTP) user rights and "
            f"{key}.snapshot_profile",
        )
    if skew is not None and abs(skew) > CLOCK_SKEW_WARN_S:
        return warn(
            name,
            detail,
            "set the camera's NTP server (its web page: System > Time) to this site's NTP",
        )
    return ok(name, detail)


# --- the gateway's peers ------------------------------------------------------------------------


def _sqlite_missing(path: Path, shown: str) -> Check | None:
    """A SQLite file that is not there yet: connecting would create it, so say it instead."""
    if path.exists():
        return None
    parent = path.parent
    target = parent if parent.exists() else parent.parent
    if not os.access(target, os.W_OK):
        return fail(
            "database",
            f"{shown}: does not exist and cannot be created",
            f"make {parent} writable for {_user()} or fix database.url",
        )
    return ok("database", f"{shown}: does not exist yet; created with the schema at start")


async def check_database(db: DatabaseConfig, wait: float) -> Check:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.store.db import MIGRATIONS, make_engine

    name = "database"
    try:
        url = db.connect_url()
    except OSError as exc:
        return fail(name, f"database.password_file: {_why(exc)}", "make it readable by this user")
    u = make_url(url)
    shown = u.render_as_string(hide_password=True)
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
        assert u.database is not None
        missing = _sqlite_missing(Path(u.database), shown)
        if missing is not None:
            return missing
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    known = {rev.revision for rev in script.walk_revisions()}

    def current(sync_conn: Any) -> str | None:
        return MigrationContext.configure(sync_conn).get_current_revision()

    engine = make_engine(url)
    started = time.monotonic()
    try:
        async with asyncio.timeout(wait), engine.connect() as conn:
            rev = await conn.run_sync(current)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        orig = getattr(exc, "orig", None) or exc
        text = (
            f"no answer within {wait:g} s"
            if isinstance(exc, TimeoutError)
            else _why(orig)
            if isinstance(orig, OSError)
            else str(orig).splitlines()[0]
        )
        lower = text.lower()
        if "password" in lower or "authentication" in lower:
            fix = (
                "the user in database.url and database.password (CG_DB_PASSWORD) PostgreSQL expects"
            )
        elif "role" in lower and "does not exist" in lower:
            fix = f"create the user: `sudo -u postgres createuser -P {u.username}` or fix the URL"
        elif "does not exist" in lower:
            fix = f"create it: `sudo -u postgres createdb -O {u.username} {u.database}`"
        else:
            fix = "start PostgreSQL (`systemctl status postgresql`) or fix database.url host/port"
        return fail(name, f"{shown}: {text}", fix)
    finally:
        await engine.dispose()
    took = _ms(time.monotonic() - started)
    if rev is None:
        return ok(name, f"{shown}: connected ({took}), empty: the schema is created at start")
    if rev == head:
        return ok(name, f"{shown}: connected ({took}), schema up to date ({rev})")
    if rev in known:
        return ok(name, f"{shown}: connected ({took}), schema {rev} will be upgraded to {head}")
    return fail(
        name,
        f"{shown}: schema {rev} is newer than this program (it knows up to {head})",
        "install the campusguard version that wrote it (the gateways sharing this database "
        "must run the same version), or restore a backup",
    )


async def check_dc09_path(cfg: GatewayConfig, which: str, path: Dc09Path, wait: float) -> Check:
    from drivers.dc09 import DC09Sender, PathConfig, ReplyKind, SenderConfig, key_from_config

    d = cfg.dc09
    assert d is not None
    name = f"police {which}"
    key = f"dc09.{which}"
    where = f"{_hostport(path.host, path.port)}/{path.transport}"
    if path.transport == "tcp":
        _, err = await tcp_probe(path.host, path.port, wait)
        if err is not None:
            why = _why_probe(err, wait)
            return fail(
                name,
                f"{where}: {why}",
                f"check {key}.host / {key}.port with the alarm receiving centre, and that the "
                "firewall lets this gateway out to it",
            )
    key_text = d.key_text()
    sender = DC09Sender(
        SenderConfig(
            protocol=d.protocol,
            receiver=d.receiver,
            prefix=d.prefix,
            primary=PathConfig(host=path.host, port=path.port, transport=path.transport),
            key=key_from_config(key_text, d.key_encoding) if key_text else None,
            ack_timeout=min(d.ack_timeout, wait),
            connect_timeout=wait,
            attempts=1,
            supervision_interval=0,
            supervision_account=d.supervision_account or cfg.campuses[0].account,
        )
    )
    async with sender:
        result = await sender.send_null("primary")
    if result.accepted:
        detail = f"{where}: NULL link test ACKed in {result.rtt_ms or 0:.1f} ms"
        if result.clock_offset:
            return warn(
                name,
                f"{detail} after the receiver corrected our clock by {result.clock_offset:+.0f} s",
                "synchronise this machine's clock (NTP); the receiver refuses times out of window",
            )
        return ok(name, detail)
    if result.reply is ReplyKind.DUH:
        return fail(
            name,
            f"{where}: the receiver answered DUH (not understood)",
            "agree dc09.key (encryption), dc09.receiver / prefix and the account "
            "(dc09.supervision_account) with the alarm receiving centre",
        )
    if result.reply is ReplyKind.NAK:
        return fail(
            name,
            f"{where}: the receiver answered NAK",
            "the receiver's time window: synchronise this clock (NTP); or the account "
            "(dc09.supervision_account) it does not know",
        )
    why = (
        f"no ACK within {min(d.ack_timeout, wait):g} s"
        if result.reply is ReplyKind.TIMEOUT
        else "unreachable"
    )
    return fail(
        name,
        f"{where}: NULL link test: {why}",
        f"check {key} (host, port, transport) and dc09.key with the alarm receiving centre",
    )


async def check_influx(cfg: GatewayConfig, wait: float) -> Check:
    import httpx

    ic = cfg.influxdb
    assert ic is not None
    name = "influxdb"
    url = ic.url.rstrip("/")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=wait) as http:
            if ic.api == "v1":
                return await _influx_v1(http, ic, name)
            return await _influx_v2(http, ic, name)
    except httpx.HTTPError as exc:
        cause = exc.__cause__ or exc.__context__
        why = _why(cause) if isinstance(cause, OSError) else str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            why = f"no answer within {wait:g} s"
        if "refused" in str(exc).lower():
            why = "connection refused"
        return fail(
            name,
            f"{url}: {why}",
            "start InfluxDB (`systemctl status influxdb`) or fix influxdb.url; alarms flow "
            "meanwhile (telemetry is spooled)",
        )


async def _influx_v1(http: Any, ic: Any, name: str) -> Check:
    r = await http.get("/ping")
    if r.status_code != 204:
        return fail(name, f"{ic.url}/ping answered {r.status_code}", "is influxdb.url InfluxDB?")
    version = r.headers.get("X-Influxdb-Version", "?")
    auth: dict[str, str] = {}
    if ic.username is not None:
        auth = {"u": ic.username, "p": ic.password_text() or ""}
    q = await http.get(
        "/query", params={"q": f'SHOW RETENTION POLICIES ON "{ic.database}"', **auth}
    )
    text = q.text.strip()
    if q.status_code in (401, 403):
        return fail(
            name,
            f"{ic.url}: not authorised (user {ic.username!r})",
            "influxdb.username / influxdb.password (or password_file)",
        )
    if q.status_code != 200 or '"error"' in text:
        err = _influx_error(text) or f"HTTP {q.status_code}"
        fix = "influxdb.database"
        if "not found" in err:
            fix = f"create it: influx -execute 'CREATE DATABASE \"{ic.database}\"'"
        return fail(name, f"{ic.url}: {err}", fix)
    # An empty write: InfluxDB checks the write permission and writes nothing.
    params = {"db": ic.database, **auth}
    if ic.retention_policy:
        params["rp"] = ic.retention_policy
    w = await http.post("/write", params=params, content=b"")
    if w.status_code in (401, 403):
        return fail(
            name,
            f"{ic.url}: user {ic.username!r} may not write to {ic.database!r}",
            f'GRANT WRITE ON "{ic.database}" TO "{ic.username}"',
        )
    if w.status_code >= 300 and w.status_code != 400:
        return fail(name, f"{ic.url}: write answered {w.status_code}", "influxdb.retention_policy")
    return ok(name, f"{ic.url}: InfluxDB {version}, database {ic.database!r} readable and writable")


async def _influx_v2(http: Any, ic: Any, name: str) -> Check:
    r = await http.get("/health")
    if r.status_code != 200:
        return fail(name, f"{ic.url}/health answered {r.status_code}", "is influxdb.url InfluxDB?")
    version = (r.json() or {}).get("version", "?")
    headers = {"Authorization": f"Token {ic.token_text() or ''}"}
    b = await http.get(
        "/api/v2/buckets", params={"org": ic.org, "name": ic.bucket}, headers=headers
    )
    if b.status_code in (401, 403):
        return fail(name, f"{ic.url}: the token is not valid", "influxdb.token (CG_INFLUX_TOKEN)")
    if b.status_code == 404 or (b.status_code == 200 and not b.json().get("buckets")):
        return fail(
            name,
            f"{ic.url}: no bucket {ic.bucket!r} in org {ic.org!r} (or the token may not see it)",
            f"influx bucket create --org {ic.org} --name {ic.bucket}",
        )
    if b.status_code != 200:
        return fail(name, f"{ic.url}: {_influx_error(b.text)}", "influxdb.org / influxdb.bucket")
    # An empty write: refused for permissions (401/403) before the body is looked at.
    w = await http.post(
        "/api/v2/write", params={"org": ic.org, "bucket": ic.bucket}, headers=headers, content=b""
    )
    if w.status_code in (401, 403, 404):
        return fail(
            name,
            f"{ic.url}: the token may not write to bucket {ic.bucket!r}",
            "give the token write permission on the bucket (influx auth create --write-bucket)",
        )
    return ok(name, f"{ic.url}: InfluxDB {version}, bucket {ic.bucket!r} of {ic.org!r} writable")


def _influx_error(text: str) -> str:
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict):
            if isinstance(data.get("error"), str):
                return str(data["error"])
            if isinstance(data.get("message"), str):
                return str(data["message"])
            for res in data.get("results", []):
                if isinstance(res, dict) and isinstance(res.get("error"), str):
                    return str(res["error"])
    return text[:200]


async def check_http_sink(sink: str, url: str, wait: float) -> Check:
    name = f"{sink} sink"
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    where = _hostport(host, port)
    elapsed, err = await tcp_probe(host, port, wait)
    if err is not None:
        why = _why_probe(err, wait)
        return fail(
            name,
            f"{where}: {why}",
            f"check {sink}.url with the receiving side, and that the firewall lets this "
            "gateway out to it",
        )
    return ok(name, f"{where}: reachable (TCP {_ms(elapsed)}; nothing posted)")


def _smtp_probe(cfg: SmtpConfig, timeout: float) -> str:
    context = cfg.tls_context()
    smtp: smtplib.SMTP
    if cfg.security == "tls":
        smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=timeout, context=context)
    else:
        smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=timeout)
    steps = ["EHLO"]
    with smtp:
        code, _ = smtp.ehlo()
        if code != 250:
            raise smtplib.SMTPHeloError(code, b"EHLO refused")
        if cfg.security == "starttls":
            smtp.starttls(context=context)
            smtp.ehlo()
            steps.append("STARTTLS")
        if cfg.username:
            smtp.login(cfg.username, cfg.secret())
            steps.append(f"login {cfg.username!r}")
    return ", ".join(steps)


async def check_smtp(cfg: SmtpConfig, wait: float) -> Check:
    name = "smtp"
    where = _hostport(cfg.host, cfg.port)
    try:
        steps = await asyncio.to_thread(_smtp_probe, cfg, wait)
    except smtplib.SMTPAuthenticationError:
        return fail(
            name,
            f"{where}: login refused (user {cfg.username!r})",
            "notify.smtp.username / password (or password_file)",
        )
    except smtplib.SMTPNotSupportedError as exc:
        return fail(name, f"{where}: {exc}", "notify.smtp.security (starttls, tls or none)")
    except (OSError, smtplib.SMTPException) as exc:
        return fail(
            name,
            f"{where}: {_why(exc)}",
            "notify.smtp.host / port / security (587 starttls, 465 tls); the mail server must "
            "accept this gateway",
        )
    return ok(name, f"{where}: {steps} (no mail sent)")


# --- running ------------------------------------------------------------------------------------


async def _bounded(name: str, coro: Awaitable[Check], limit: float) -> Check:
    try:
        async with asyncio.timeout(limit):
            return await coro
    except TimeoutError:
        return fail(
            name,
            f"no answer within {limit:g} s",
            "see the other checks; raise --timeout on a slow network",
        )
    except Exception as exc:  # the report must finish: one check's bug is its own FAIL
        return fail(
            name,
            f"{type(exc).__name__}: {exc}",
            "a bug in the doctor: please report it with this line",
        )


async def run_checks(cfg: EdgeConfig | GatewayConfig, path: Path, wait: float) -> list[Check]:
    """Every check for this config, in report order (the network ones run at once)."""
    out: list[Check] = []
    if isinstance(cfg, EdgeConfig):
        out.append(
            ok(
                "config",
                f"{path}: edge of campus {cfg.campus.id}, {len(cfg.devices)} Modbus device(s), "
                f"{len(cfg.bollards)} bollard controller(s), {len(cfg.cameras)} camera(s)",
            )
        )
        out.append(check_data_dir(cfg.edge.data_dir, "edge.data_dir"))
    else:
        out.append(
            ok(
                "config",
                f"{path}: gateway {cfg.gateway.id}, {len(cfg.campuses)} campus(es)",
            )
        )
        out.append(check_data_dir(cfg.gateway.data_dir, "gateway.data_dir"))
    out.append(await asyncio.to_thread(check_clock))
    jobs: list[tuple[str, Awaitable[Check], float]] = []
    if isinstance(cfg, EdgeConfig):
        from contract import topics

        subs = topics.edge_subscriptions(cfg.campus.id)
        jobs.append(("mqtt broker", check_mqtt(cfg.mqtt, wait, subs), 4 * wait))
        for i, dev in enumerate(cfg.devices):
            jobs.append((f"modbus {dev.id}", check_modbus_device(dev, i, wait), 4 * wait))
        for i, ctl in enumerate(cfg.bollards):
            jobs.append((f"bollards {ctl.id}", check_bollard_controller(ctl, i, wait), 4 * wait))
        for i, cam in enumerate(cfg.cameras):
            jobs.append((f"camera {cam.id}", check_camera(cam, i, wait), 8 * wait))
    else:
        jobs.append(("mqtt broker", check_mqtt(cfg.mqtt, wait, []), 4 * wait))
        jobs.append(("database", check_database(cfg.database, wait), 3 * wait))
        if cfg.dc09 is not None:
            for which in ("primary", "backup"):
                p = getattr(cfg.dc09, which)
                if p is not None:
                    jobs.append((f"police {which}", check_dc09_path(cfg, which, p, wait), 4 * wait))
        if cfg.influxdb is not None:
            jobs.append(("influxdb", check_influx(cfg, wait), 4 * wait))
        for sink in ("webhook", "cap"):
            sc = getattr(cfg, sink)
            if sc is not None:
                jobs.append((f"{sink} sink", check_http_sink(sink, sc.url, wait), 2 * wait))
        if cfg.notify is not None and cfg.notify.smtp is not None:
            jobs.append(("smtp", check_smtp(cfg.notify.smtp, wait), 4 * wait))
    out += await asyncio.gather(*(_bounded(n, c, limit) for n, c, limit in jobs))
    if isinstance(cfg, EdgeConfig):
        if cfg.console.enabled:
            out.append(check_listen("console port", cfg.console.host, cfg.console.port, "console"))
        if cfg.metrics is not None:
            out.append(check_listen("metrics port", cfg.metrics.host, cfg.metrics.port, "metrics"))
        if cfg.notify is not None and any(c.events == "webhook" for c in cfg.cameras):
            out.append(check_listen("notify port", cfg.notify.host, cfg.notify.port, "notify"))
    secrets = secrets_of(cfg)
    for c in out:
        c.detail, c.fix = scrub(c.detail, secrets), scrub(c.fix, secrets)
    return out


def table(checks: list[Check]) -> str:
    width = max(len(c.check) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status:<5} {c.check:<{width}}  {c.detail}")
        if c.fix:
            lines.append(f"{'':<5} {'':<{width}}  fix: {c.fix}")
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("FAIL", "WARN", "OK")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def doctor(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config file")],
    kind: Annotated[
        str | None,
        typer.Option(help="edge or gateway (default: from the file's keys)"),
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds per network check")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Check the config and everything it talks to; say what is wrong and how to fix it.

    Exit 0 when nothing FAILs, 1 otherwise, 2 for a bad config (as `config check`).
    """
    if kind not in (None, "edge", "gateway"):
        typer.echo("campusguard: --kind must be edge or gateway", err=True)
        raise typer.Exit(2)
    if timeout <= 0:
        typer.echo("campusguard: --timeout must be positive", err=True)
        raise typer.Exit(2)
    chosen: Kind = "gateway" if (kind or detect_kind(config)) == "gateway" else "edge"
    try:
        cfg = load(config, chosen)
    except ConfigError as exc:
        typer.echo(f"campusguard: config error: {exc}", err=True)
        raise typer.Exit(2) from None
    root = logging.getLogger()
    if not root.handlers:  # the libraries' warnings would garble the table: the report says it
        root.addHandler(logging.NullHandler())
    checks = asyncio.run(run_checks(cfg, config, timeout))
    failed = any(c.status == "FAIL" for c in checks)
    if as_json:
        doc = {
            "config": str(config),
            "kind": chosen,
            "ok": not failed,
            "checks": [asdict(c) for c in checks],
        }
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        typer.echo(table(checks))
    raise typer.Exit(1 if failed else 0)
