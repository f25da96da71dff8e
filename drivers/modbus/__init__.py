"""Modbus driver: DI modules that panic buttons are wired to.

Layers, lowest first:

* :mod:`.codec` -- pure value decoding (counters, bits, EOL bands, debouncing);
* :mod:`.profile` -- register maps as YAML data (``profiles/*.yaml``);
* :mod:`.bus` -- shared connections (one per TCP host:port or serial port), errors;
* :mod:`.inputs` -- typed readings of a module's channels.
"""

from .bus import Backoff, ModbusBus, ModbusConnection
from .codec import Debouncer, EolScheme, EolState
from .errors import (
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceTimeout,
    DeviceUnreachable,
    ModbusDeviceError,
    ProfileError,
)
from .inputs import ChannelReading, ChannelSpec, DIModuleReader, EolParams, ModuleReading
from .profile import Profile, list_profiles, load_profile

__all__ = [
    "Backoff",
    "ChannelReading",
    "ChannelSpec",
    "DIModuleReader",
    "Debouncer",
    "DeviceExceptionResponse",
    "DeviceProtocolError",
    "DeviceTimeout",
    "DeviceUnreachable",
    "EolParams",
    "EolScheme",
    "EolState",
    "ModbusBus",
    "ModbusConnection",
    "ModbusDeviceError",
    "ModuleReading",
    "Profile",
    "ProfileError",
    "list_profiles",
    "load_profile",
]
