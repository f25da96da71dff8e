"""A live RTSP test stream, served by GStreamer's RTSP server in a child process.

The picture is a test pattern that scrolls sideways (a moving element) with the wall-clock time
and a label burnt in, so consecutive frames differ as a real camera's do (a frozen-image check
must not fire on it). It is H.264 (``x264enc``, else ``openh264enc``) when an encoder is
installed, otherwise Motion JPEG.

GStreamer is used through PyGObject (``gi``), which is a Debian package for the *system*
interpreter and not installable into the virtualenv: the server runs as a subprocess of
``/usr/bin/python3`` running a small script (:data:`_SERVER_SCRIPT`). It reports the port it
bound and the codec it chose on its standard output; the parent then checks that the port
accepts connections, within a deadline. The child quits on SIGTERM and when its standard input
closes (so it never outlives the parent). Missing packages are a :class:`RtspUnavailable`
naming them (:data:`DEBIAN_PACKAGES`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from types import TracebackType
from typing import IO, Literal, Self

__all__ = [
    "DEBIAN_PACKAGES",
    "SYSTEM_PYTHON",
    "Codec",
    "RtspTestStream",
    "RtspUnavailable",
]

log = logging.getLogger(__name__)

Codec = Literal["auto", "h264", "mjpeg"]

SYSTEM_PYTHON = "/usr/bin/python3"
DEBIAN_PACKAGES = (
    "python3-gi",
    "gir1.2-gst-rtsp-server-1.0",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-ugly",
    "gstreamer1.0-x",
)
"""What the stream needs on Debian/Ubuntu: ``-good`` has the RTP payloaders and ``jpegenc``,
``-ugly`` has ``x264enc`` (H.264), ``-x`` has the clock overlay (without it: no clock)."""

_EXIT_MISSING = 3  # the child's exit status when GStreamer (or a needed element) is missing

# Runs under the system interpreter. argv[1] is a JSON object of settings; one JSON line on
# stdout says it is serving ({"port": ..., "codec": ...}); errors go to stderr.
_SERVER_SCRIPT = r"""
import json, signal, sys
cfg = json.loads(sys.argv[1])
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
try:
    import gi
    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    gi.require_version("GstRtsp", "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer
except (ImportError, ValueError) as exc:
    print(f"GStreamer RTSP server not available: {exc}", file=sys.stderr)
    sys.exit(3)
Gst.init(None)

def have(*names):
    return all(Gst.ElementFactory.find(n) is not None for n in names)

encoders = {
    "h264": [
        ("x264", "x264enc tune=zerolatency speed-preset=ultrafast bitrate=1024 "
                 "key-int-max={gop} ! video/x-h264,profile=baseline ! "
                 "rtph264pay name=pay0 pt=96 config-interval=1", ("x264enc", "rtph264pay")),
        ("openh264", "openh264enc bitrate=1000000 gop-size={gop} ! "
                     "rtph264pay name=pay0 pt=96 config-interval=1",
         ("openh264enc", "rtph264pay")),
    ],
    "mjpeg": [
        ("jpeg", "jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26", ("jpegenc", "rtpjpegpay")),
    ],
}
order = ["h264", "mjpeg"] if cfg["codec"] == "auto" else [cfg["codec"]]
chosen = None
for codec in order:
    for _name, launch, needs in encoders[codec]:
        if have(*needs):
            chosen = (codec, launch)
            break
    if chosen:
        break
if chosen is None or not have("videotestsrc", "videoconvert"):
    print(f"no GStreamer encoder for {cfg['codec']}", file=sys.stderr)
    sys.exit(3)
codec, encode = chosen
fps = int(cfg["fps"])
source = (
    f"videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! "
    f"video/x-raw,width={cfg['width']},height={cfg['height']},framerate={fps}/1"
)
if cfg.get("video_file"):
    # A scene written by a test (Motion JPEG AVI), played in real time from its start for each
    # new client of the shared media: e.g. an empty gate, then a car that stops in the zone.
    location = cfg["video_file"].replace('"', "")
    source = (
        f'filesrc location="{location}" ! avidemux ! jpegdec ! videoconvert ! videoscale ! '
        f"video/x-raw,width={cfg['width']},height={cfg['height']} ! videorate ! "
        f"video/x-raw,framerate={fps}/1"
    )
elif have("clockoverlay"):
    label = cfg["label"].replace('"', "'")
    source += (
        f' ! clockoverlay halignment=left valignment=bottom shaded-background=true '
        f'font-desc="Sans 18" time-format="%Y-%m-%d %H:%M:%S" text="{label}"'
    )
# 4:2:0: what rtpjpegpay accepts (RFC 2435 types 0/1) and what H.264 baseline carries.
launch = f"( {source} ! videoconvert ! video/x-raw,format=I420 ! {encode.format(gop=fps)} )"
try:  # fail now, not at the first client, if the pipeline cannot be built
    Gst.parse_launch(launch.strip("() ")).set_state(Gst.State.NULL)
except GLib.Error as exc:
    print(f"bad pipeline {launch}: {exc}", file=sys.stderr)
    sys.exit(3)

server = GstRtspServer.RTSPServer()
server.set_address(cfg["host"])
server.set_service(str(cfg["port"]))
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(launch)
factory.set_shared(True)
if cfg.get("username"):
    # Like a camera: Digest authentication; a wrong password is a 401.
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
    auth.add_digest(cfg["username"], cfg["password"], token)
    auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)  # what cameras offer today
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_permission_for_role(
        "viewer", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True
    )
    permissions.add_permission_for_role(
        "viewer", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True
    )
    factory.set_permissions(permissions)
server.get_mount_points().add_factory("/" + cfg["path"], factory)
if server.attach(None) == 0:
    print(f"cannot listen on {cfg['host']}:{cfg['port']}", file=sys.stderr)
    sys.exit(1)
loop = GLib.MainLoop()
GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
GLib.io_add_watch(sys.stdin.fileno(), GLib.PRIORITY_DEFAULT,
                  GLib.IOCondition.IN | GLib.IOCondition.HUP | GLib.IOCondition.ERR,
                  lambda *_: loop.quit())  # stdin closed (or written to): the parent is gone
print(json.dumps({"port": server.get_bound_port(), "codec": codec, "launch": launch}), flush=True)
loop.run()
"""


class RtspUnavailable(RuntimeError):
    """GStreamer's RTSP server (or an encoder) is not installed on this machine."""

    def __init__(self, detail: str, python: str = SYSTEM_PYTHON) -> None:
        super().__init__(
            f"the RTSP test stream needs GStreamer's RTSP server for {python} ({detail}); "
            f"install it with: sudo apt-get install {' '.join(DEBIAN_PACKAGES)}"
        )
        self.detail = detail


class RtspTestStream:
    """A live test pattern at ``rtsp://host:port/path``, an async context manager.

    Args:
        host: Address to bind (and to put in :attr:`url`).
        port: RTSP (TCP) port; 0 picks a free one (read it back from :attr:`port`).
        path: Mount path, without the leading slash.
        width: Frame width in pixels.
        height: Frame height.
        fps: Frames per second.
        codec: ``h264``, ``mjpeg``, or ``auto`` (H.264 if an encoder is installed).
        label: Text burnt in next to the clock (e.g. the camera's name).
        start_timeout: Seconds to wait for the server to accept connections.
        python: The interpreter with PyGObject (``python3-gi``).
        username: With ``password``: the stream asks for them (Digest), as a
            camera does; a wrong password is refused with 401.
        password: See ``username``.
        video_file: Serve this Motion JPEG AVI (played in real time) instead of the test
            pattern: a scene a test wrote frame by frame.

    Attributes:
        codec: After start: the codec actually served (``h264`` or ``mjpeg``).
        launch: After start: the GStreamer pipeline serving it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "cam",
        *,
        width: int = 640,
        height: int = 360,
        fps: int = 15,
        codec: Codec = "auto",
        label: str = "CampusGuard",
        start_timeout: float = 15.0,
        python: str = SYSTEM_PYTHON,
        username: str | None = None,
        password: str | None = None,
        video_file: str | None = None,
    ) -> None:
        """Configure; nothing runs until entered."""
        if codec not in ("auto", "h264", "mjpeg"):
            raise ValueError("codec must be auto, h264 or mjpeg")
        if not (16 <= width <= 3840 and 16 <= height <= 2160 and 1 <= fps <= 60):
            raise ValueError("width/height/fps out of range")
        self.host = host
        self.port = port
        self.path = path.strip("/") or "cam"
        self.width = width
        self.height = height
        self.fps = fps
        self.requested_codec: Codec = codec
        self.codec: str | None = None
        self.launch: str | None = None
        self.label = label
        self.start_timeout = start_timeout
        self.python = python
        self.username = username
        self.password = password or ""
        self.video_file = video_file
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """``rtsp://host:port/path`` (the port is the bound one once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"rtsp://{host}:{self.port}/{self.path}"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.returncode is None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        """Start the server; return once its port accepts connections.

        Raises:
            RtspUnavailable: GStreamer, its RTSP server or an encoder is not installed.
            RuntimeError: The server did not come up within ``start_timeout``.
        """
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        await self.stop()

    async def start(self) -> None:
        """See :meth:`__aenter__`."""
        if self._proc is not None:
            return
        if not os.access(self.python, os.X_OK):
            raise RtspUnavailable(f"{self.python} not found", self.python)
        settings = {
            "host": self.host,
            "port": self.port,
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "codec": self.requested_codec,
            "label": self.label,
            "username": self.username,
            "password": self.password,
            "video_file": self.video_file,
        }
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self._proc = await asyncio.create_subprocess_exec(
            self.python,
            "-c",
            _SERVER_SCRIPT,
            json.dumps(settings),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,  # Ctrl-C in the terminal is for the parent to handle
        )
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "RTSP test stream (%s, %dx%d) at %s", self.codec, self.width, self.height, self.url
        )

    async def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        try:
            async with asyncio.timeout_at(deadline):
                line = await proc.stdout.readline()
        except TimeoutError:
            raise RuntimeError(
                f"the RTSP test stream did not start within {self.start_timeout:.0f} s: "
                f"{self._errors()}"
            ) from None
        if not line:
            code = await proc.wait()
            if code == _EXIT_MISSING:
                raise RtspUnavailable(self._errors(), self.python)
            raise RuntimeError(f"the RTSP test stream exited ({code}): {self._errors()}")
        ready = json.loads(line)
        self.port = int(ready["port"])
        self.codec = str(ready["codec"])
        self.launch = str(ready["launch"])
        # The server listens once attached; check that the port really answers.
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = "::1" if host == "::" else host
        while True:
            try:
                _reader, writer = await asyncio.open_connection(host, self.port)
            except OSError as exc:
                if loop.time() >= deadline or proc.returncode is not None:
                    raise RuntimeError(
                        f"the RTSP test stream does not accept connections on port "
                        f"{self.port}: {exc}; {self._errors()}"
                    ) from None
                await asyncio.sleep(0.05)  # poll the port until the deadline
            else:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return

    def _errors(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace").strip()
        return text[-600:] or "no error output"

    async def stop(self, grace: float = 5.0) -> None:
        """Ask the server to quit (SIGTERM, stdin closed); kill it after ``grace`` seconds."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.returncode is None:
                if proc.stdin is not None:
                    proc.stdin.close()
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    async with asyncio.timeout(grace):
                        await proc.wait()
                except TimeoutError:
                    log.warning("RTSP test stream did not stop in %.0f s: killing it", grace)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            elif proc is not None:
                await proc.wait()
        finally:
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None
