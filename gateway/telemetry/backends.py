"""The two ways to reach InfluxDB behind one small interface.

A backend sends one line-protocol body and answers a :class:`WriteResult` (the HTTP status, the
error text, Retry-After), or raises :class:`TransientError` when no answer came (connection
refused or reset, timeout). It never retries and never decides: the writer does both.

- :class:`InfluxV1`: ``POST /write?db=&rp=&precision=ns`` (InfluxDB 1.x; also 2.x's v1
  compatibility API) through ``httpx.AsyncClient``, user and password as ``u``/``p`` query
  parameters or HTTP basic auth, the body gzip-compressed by the writer.
- :class:`InfluxV2`: the official ``influxdb-client`` package's asyncio client
  (``InfluxDBClientAsync`` + ``WriteApiAsync``, org, bucket, token; it gzips itself with
  ``enable_gzip``), for InfluxDB 2.x and 3.x.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx


class TransientError(Exception):
    """No answer from InfluxDB (connection refused or reset, timeout): try again later."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    status: int  # HTTP status; 204 (or any 2xx) = written
    message: str = ""  # InfluxDB's error text, if any
    retry_after: float | None = None  # seconds, from a Retry-After header


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_text(body: bytes, headers: Any) -> str:
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            for key in ("error", "message"):
                if isinstance(data.get(key), str):
                    return str(data[key])
    except ValueError:
        pass
    header = headers.get("X-Influxdb-Error") if headers is not None else None
    if header:
        return str(header)
    return body.decode("utf-8", "replace").strip()[:500]


class Backend(Protocol):
    """One InfluxDB write endpoint."""

    #: True when :meth:`write` wants the body already gzip-compressed (when gzip is on)
    wants_gzip: bool
    #: what to call the target in logs (database or bucket)
    target: str

    async def write(self, body: bytes, gzipped: bool) -> WriteResult: ...

    async def close(self) -> None: ...

    def config_hint(self, status: int) -> str:
        """Which config key to look at for a 4xx other than 400."""
        ...


class InfluxV1:
    """InfluxDB 1.x ``/write``."""

    wants_gzip = True

    def __init__(
        self,
        url: str,
        database: str,
        *,
        retention_policy: str | None = None,
        username: str | None = None,
        password: str | None = None,
        basic_auth: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.target = f"database {database!r}"
        params = {"db": database, "precision": "ns"}
        if retention_policy:
            params["rp"] = retention_policy
        auth: httpx.BasicAuth | None = None
        if username is not None:
            if basic_auth:
                auth = httpx.BasicAuth(username, password or "")
            else:
                params["u"] = username
                params["p"] = password or ""
        self._params = params
        self._client = httpx.AsyncClient(
            base_url=self.url,
            auth=auth,
            timeout=httpx.Timeout(timeout),
            headers={"Content-Type": "text/plain; charset=utf-8"},
        )

    async def write(self, body: bytes, gzipped: bool) -> WriteResult:
        headers = {"Content-Encoding": "gzip"} if gzipped else {}
        try:
            resp = await self._client.post(
                "/write", params=self._params, content=body, headers=headers
            )
        except (httpx.TransportError, OSError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        if 200 <= resp.status_code < 300:
            return WriteResult(resp.status_code)
        return WriteResult(
            resp.status_code,
            _error_text(resp.content, resp.headers),
            parse_retry_after(resp.headers.get("Retry-After")),
        )

    async def close(self) -> None:
        await self._client.aclose()

    def config_hint(self, status: int) -> str:
        if status in (401, 403):
            return "influxdb.username / influxdb.password (or password_file)"
        if status == 404:
            return "influxdb.database (create it: CREATE DATABASE) / influxdb.retention_policy"
        return "influxdb.url"


class InfluxV2:
    """InfluxDB 2.x / 3.x through ``influxdb-client``'s asyncio write API."""

    wants_gzip = False  # the client compresses itself (enable_gzip)

    def __init__(
        self,
        url: str,
        org: str,
        bucket: str,
        token: str,
        *,
        timeout: float = 10.0,
        gzip_body: bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.org = org
        self.bucket = bucket
        self.target = f"bucket {bucket!r} of org {org!r}"
        self._token = token
        self._timeout_ms = int(timeout * 1000)
        self._gzip = gzip_body
        self._client: Any = None  # made on first use: aiohttp wants a running loop
        self._write_api: Any = None

    def _ensure(self) -> Any:
        if self._write_api is None:
            from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

            self._client = InfluxDBClientAsync(
                url=self.url,
                token=self._token,
                org=self.org,
                timeout=self._timeout_ms,
                enable_gzip=self._gzip,
            )
            self._write_api = self._client.write_api()
        return self._write_api

    async def write(self, body: bytes, gzipped: bool) -> WriteResult:
        import aiohttp
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        if gzipped:
            body = gzip.decompress(body)
        try:
            await self._ensure().write(
                bucket=self.bucket,
                org=self.org,
                record=body,
                write_precision=WritePrecision.NS,  # type: ignore[arg-type]
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            if status == 0:
                raise TransientError(str(exc.reason)) from exc
            message = exc.message or exc.reason or ""
            if isinstance(message, bytes):
                message = message.decode("utf-8", "replace")
            return WriteResult(
                status,
                str(message).strip()[:500],
                parse_retry_after(getattr(exc, "retry_after", None)),
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        return WriteResult(204)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = self._write_api = None

    def config_hint(self, status: int) -> str:
        if status in (401, 403):
            return "influxdb.token (or token_file): it needs write access to the bucket"
        if status == 404:
            return "influxdb.org / influxdb.bucket"
        return "influxdb.url"
