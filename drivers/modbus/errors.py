"""Exceptions raised by the Modbus driver, one class per kind of failure.

Pollers catch :class:`ModbusDeviceError` at their boundary and mark the device
unavailable; the subclasses say why, so the health report can tell a cut cable
(:class:`DeviceUnreachable`) from a module that answers nonsense
(:class:`DeviceProtocolError`). :class:`ProfileError` is a configuration error
and deliberately not a device error: retrying will not fix it.
"""

from __future__ import annotations

__all__ = [
    "DeviceExceptionResponse",
    "DeviceProtocolError",
    "DeviceTimeout",
    "DeviceUnreachable",
    "ModbusDeviceError",
    "ProfileError",
]

# Modbus application protocol v1.1b3, section 7.
_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusDeviceError(Exception):
    """A Modbus transaction with a device failed.

    Attributes:
        endpoint: The connection the transaction used, e.g. ``tcp:10.0.0.5:502``.
        unit: The Modbus unit (device/slave) id, or ``None`` for connection-level failures.
        request_sent: Whether the request may have reached the device. After a failed
            *write* with ``request_sent`` true (and no exception response) the write's
            outcome is unknown.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str = "",
        unit: int | None = None,
        request_sent: bool = True,
    ) -> None:
        """Create the error.

        Args:
            message: What went wrong, for humans.
            endpoint: The connection the transaction used.
            unit: The Modbus unit id, if the failure concerns one unit.
            request_sent: Whether the request may have reached the device.
        """
        where = endpoint if unit is None else f"{endpoint} unit {unit}"
        super().__init__(f"{where}: {message}" if where else message)
        self.endpoint = endpoint
        self.unit = unit
        self.request_sent = request_sent


class DeviceTimeout(ModbusDeviceError):
    """The connection is up but the unit did not answer in time."""


class DeviceUnreachable(ModbusDeviceError):
    """No connection: refused, reset, closed, or still in reconnect back-off."""


class DeviceExceptionResponse(ModbusDeviceError):
    """The unit answered with a Modbus exception response.

    Attributes:
        code: The Modbus exception code (1 = illegal function, 2 = illegal address, ...).
    """

    def __init__(
        self, code: int, *, function_code: int = 0, endpoint: str = "", unit: int | None = None
    ) -> None:
        """Create the error.

        Args:
            code: The Modbus exception code.
            function_code: The function code of the request that was refused.
            endpoint: The connection the transaction used.
            unit: The Modbus unit id.
        """
        name = _EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(
            f"exception {code} ({name}) to function {function_code}",
            endpoint=endpoint,
            unit=unit,
        )
        self.code = code
        self.function_code = function_code


class DeviceProtocolError(ModbusDeviceError):
    """The unit answered, but not with a valid reply (garbage, wrong length, wrong function)."""


class ProfileError(ValueError):
    """A device profile is missing or invalid; the message names the file and the key."""
