"""The onvif-zeep-async library, imported and constructed with its side effects contained.

* ``onvif.client`` calls ``logging.basicConfig(level=INFO)`` at import: the root logger's
  handlers and level are put back as they were, so the process keeps its own logging setup.
* ``ONVIFCamera.__init__`` pops ``http_proxy``/``https_proxy`` from ``os.environ`` for the
  whole process: :func:`new_camera` puts them back.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

_root = logging.getLogger()
_saved_handlers, _saved_level = list(_root.handlers), _root.level
try:
    import onvif
    from onvif.client import ONVIFCamera
    from onvif.exceptions import ONVIFAuthError, ONVIFError, ONVIFTimeoutError
finally:
    _root.handlers[:] = _saved_handlers
    _root.setLevel(_saved_level)

__all__ = [
    "WSDL_DIR",
    "ONVIFAuthError",
    "ONVIFError",
    "ONVIFTimeoutError",
    "new_camera",
    "warm_wsdl_cache",
]

# The package's own WSDLs: the library's default path is computed the same way, but passing it
# explicitly keeps a vendored or patched copy from being picked up by accident.
WSDL_DIR = str(Path(onvif.__file__).parent / "wsdl")

_PROXY_VARS = ("http_proxy", "https_proxy")


def new_camera(host: str, port: int, username: str, password: str) -> Any:
    """``ONVIFCamera`` with ``adjust_time`` on, leaving the proxy variables as they were.

    Must run inside the event loop (the library opens an aiohttp session).
    """
    saved = {name: os.environ[name] for name in _PROXY_VARS if name in os.environ}
    try:
        return ONVIFCamera(host, port, username, password, wsdl_dir=WSDL_DIR, adjust_time=True)
    finally:
        os.environ.update(saved)


_WARM_WSDLS = ("devicemgmt.wsdl", "media.wsdl", "events.wsdl")
_warm: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
_warmed = False


async def warm_wsdl_cache() -> None:
    """Parse the WSDLs we use once per process, one after the other, before any connect.

    The library caches each parsed WSDL (``onvif.client._cached_document``) but does not guard
    a load already under way: 32 cameras connecting at once each parse their own copy (measured:
    +100 MiB and seconds of CPU, long enough for connects to time out). No network; failures
    (a library version without that cache) are ignored, connects then parse as before.
    """
    global _warmed
    if _warmed:
        return
    lock = _warm.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        if _warmed:
            return
        try:
            from onvif.client import _cached_document

            for name in _WARM_WSDLS:
                await _cached_document(str(Path(WSDL_DIR) / name))
        except Exception:  # pragma: no cover - a library change; connects still work
            logging.getLogger(__name__).debug("WSDL warm-up skipped", exc_info=True)
        _warmed = True
