"""Telemetry to InfluxDB: points and their line protocol, the batching writer with its disk
spool, and the v1 / v2 backends."""

from gateway.telemetry.backends import InfluxV1, InfluxV2, WriteResult
from gateway.telemetry.points import Point, PointError, encode_point, encode_points
from gateway.telemetry.writer import TelemetryWriter

__all__ = [
    "InfluxV1",
    "InfluxV2",
    "Point",
    "PointError",
    "TelemetryWriter",
    "WriteResult",
    "encode_point",
    "encode_points",
]
