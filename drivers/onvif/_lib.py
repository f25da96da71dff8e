"""The onvif-zeep-async library, imported and constructed with its side effects contained.

* ``onvif.client`` calls ``logging.basicConfig(level=INFO)`` at import: the root logger's
  handlers and level are put back as they were, so the process keeps its own logging setup.
* ``ONVIFCamera.__init__`` pops ``http_proxy``/``https_proxy`` from ``os.environ`` for the
  whole process: :func:`new_camera` puts them back.
"""

from __future__ import annotations

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

__all__ = ["WSDL_DIR", "ONVIFAuthError", "ONVIFError", "ONVIFTimeoutError", "new_camera"]

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
