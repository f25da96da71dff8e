"""SIA DC-09 driver: a pure codec and an async sender (TCP/UDP, retries, supervision)."""

from drivers.dc09.codec import (
    ContactID,
    Frame,
    FrameBuffer,
    SiaEvent,
    contact_id_data,
    crc16_arc,
    decode,
    encode,
    parse_contact_id,
    parse_sia_dcs,
    sia_dcs_data,
)
from drivers.dc09.crypto import key_from_config
from drivers.dc09.errors import (
    CRCError,
    DC09Error,
    DecryptError,
    FrameFormatError,
    InvalidKeyError,
    LengthError,
)
from drivers.dc09.sender import (
    DC09Sender,
    DeliveryResult,
    HealthCallback,
    PathConfig,
    ReplyKind,
    SenderConfig,
)

__all__ = [
    "CRCError",
    "ContactID",
    "DC09Error",
    "DC09Sender",
    "DecryptError",
    "DeliveryResult",
    "Frame",
    "FrameBuffer",
    "FrameFormatError",
    "HealthCallback",
    "InvalidKeyError",
    "LengthError",
    "PathConfig",
    "ReplyKind",
    "SenderConfig",
    "SiaEvent",
    "contact_id_data",
    "crc16_arc",
    "decode",
    "encode",
    "key_from_config",
    "parse_contact_id",
    "parse_sia_dcs",
    "sia_dcs_data",
]
