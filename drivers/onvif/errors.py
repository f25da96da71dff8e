"""Exceptions raised by the ONVIF camera driver, one class per kind of failure.

Pollers catch :class:`CameraError` at their boundary and mark the camera unavailable; the
subclass says why, so the health report can tell a cut cable (:class:`CameraUnreachable`)
from a wrong password (:class:`CameraAuthError`) or a camera that answers nonsense
(:class:`CameraProtocolError`).

The library (onvif-zeep-async), zeep, aiohttp and httpx exceptions are translated here, at
the driver boundary, by :func:`translate`; nothing of theirs leaks to callers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import aiohttp
import httpx
import zeep.exceptions
from lxml import etree  # type: ignore[import-untyped]

from ._lib import ONVIFAuthError, ONVIFError, ONVIFTimeoutError

__all__ = [
    "AUTH_RETRY_AFTER_S",
    "CameraAuthError",
    "CameraError",
    "CameraProtocolError",
    "CameraTimeout",
    "CameraUnreachable",
    "boundary",
    "fault_subcodes",
    "translate",
]

# A wrong password does not fix itself; retrying faster only fills the camera's auth log
# (and some firmwares lock the account after a handful of failures).
AUTH_RETRY_AFTER_S = 300.0


class CameraError(Exception):
    """A call to an ONVIF camera failed.

    Attributes:
        host: The camera, ``host:port``.
        action: What the driver was doing, e.g. ``GetProfiles``.
        retryable: Whether retrying soon can help.
    """

    retryable: ClassVar[bool] = True

    def __init__(self, host: str, action: str, detail: str) -> None:
        """Build the message ``<host> <action>: <detail>``."""
        super().__init__(f"camera {host} {action}: {detail}")
        self.host = host
        self.action = action
        self.detail = detail


class CameraUnreachable(CameraError):
    """No connection: refused, reset, no route, DNS."""


class CameraTimeout(CameraError):
    """The camera did not answer in time."""


class CameraAuthError(CameraError):
    """The camera refused the credentials (wrong user or password).

    Not retryable: wait at least :data:`AUTH_RETRY_AFTER_S` (or for new credentials).
    """

    retryable: ClassVar[bool] = False
    retry_after_s: ClassVar[float] = AUTH_RETRY_AFTER_S


class CameraProtocolError(CameraError):
    """A SOAP Fault, malformed XML, or an answer of an unexpected shape.

    Attributes:
        subcodes: SOAP Fault subcodes (local names, e.g. ``["Action",
            "TooManySubscriptions"]``); empty when it was not a Fault.
    """

    def __init__(self, host: str, action: str, detail: str, subcodes: tuple[str, ...] = ()) -> None:
        """See :class:`CameraError`."""
        super().__init__(host, action, detail)
        self.subcodes = subcodes


def fault_subcodes(fault: Any) -> tuple[str, ...]:
    """The local names of a zeep Fault's subcodes (``ter:NotAuthorized`` -> ``NotAuthorized``)."""
    names: list[str] = []
    for code in getattr(fault, "subcodes", None) or ():
        local = getattr(code, "localname", None) or str(code).rpartition(":")[2]
        names.append(str(local).rpartition("}")[2])
    return tuple(names)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_auth(exc: BaseException) -> bool:
    if isinstance(exc, ONVIFAuthError):
        return True
    if isinstance(exc, zeep.exceptions.Fault):
        if "NotAuthorized" in fault_subcodes(exc):
            return True
        # Some firmwares put it only in the reason text ("Sender not Authorized").
        return "not authorized" in str(exc.message or "").lower()
    if isinstance(exc, zeep.exceptions.TransportError):
        return exc.status_code in (401, 403)
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status in (401, 403)
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (401, 403)


def translate(exc: BaseException, host: str, action: str) -> CameraError:
    """Map a library, zeep, aiohttp or httpx exception to a :class:`CameraError`."""
    chain = list(_chain(exc))
    detail = str(exc) or type(exc).__name__
    if any(_is_auth(e) for e in chain):
        return CameraAuthError(host, action, "credentials refused")
    for e in chain:
        if isinstance(e, ONVIFTimeoutError | TimeoutError | httpx.TimeoutException):
            return CameraTimeout(host, action, "no answer in time")
    for e in chain:
        if isinstance(e, zeep.exceptions.Fault):
            subcodes = fault_subcodes(e)
            text = f"SOAP Fault {e.code or ''} {'/'.join(subcodes)}: {e.message}"
            return CameraProtocolError(host, action, text.strip(), subcodes)
    for e in chain:
        if isinstance(e, aiohttp.ClientConnectionError | httpx.TransportError | OSError):
            return CameraUnreachable(host, action, str(e) or type(e).__name__)
    return CameraProtocolError(host, action, detail)


# What the library, zeep and the HTTP clients raise for a failed call; anything else is a bug
# of ours and must propagate as itself.
_BOUNDARY_ERRORS: tuple[type[BaseException], ...] = (
    zeep.exceptions.Error,
    aiohttp.ClientError,
    httpx.HTTPError,
    OSError,
    TimeoutError,
    etree.LxmlError,
    ONVIFError,
)


_MALFORMED: tuple[type[BaseException], ...] = (
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    ValueError,
)


@contextlib.contextmanager
def boundary(host: str, action: str) -> Iterator[None]:
    """Translate what the block raises into :class:`CameraError`.

    A cancelled task stays cancelled: if the current task is being cancelled, whatever the
    library turned the cancellation into is re-raised untouched, never a device error.
    """
    try:
        yield
    except CameraError:
        raise
    except _BOUNDARY_ERRORS as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise translate(exc, host, action) from exc
    except _MALFORMED as exc:
        # zeep trips over an answer it cannot map (a truncated envelope, a body that is not
        # the operation's answer) with plain Python errors: the camera's fault, not ours.
        detail = f"malformed answer ({type(exc).__name__}: {exc})"[:300]
        raise CameraProtocolError(host, action, detail) from exc
