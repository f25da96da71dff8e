"""Exception tree of the DC-09 driver.

Every failure of decoding untrusted bytes is a :class:`DC09Error`, so a receiver or a sender
can catch one type at its boundary and never be surprised by a ``ValueError`` or an
``IndexError`` coming out of the codec.
"""

from __future__ import annotations


class DC09Error(Exception):
    """Base class of every DC-09 error."""


class FrameFormatError(DC09Error):
    """The bytes are not a DC-09 frame (framing, header, data block or timestamp)."""


class LengthError(FrameFormatError):
    """The ``0LLL`` length field does not match the body length."""


class CRCError(FrameFormatError):
    """The CRC-16/ARC field does not match the body."""


class DecryptError(DC09Error):
    """An encrypted frame could not be decrypted (no key, wrong key, corrupt ciphertext)."""


class InvalidKeyError(DC09Error, ValueError):
    """An AES key has the wrong length or encoding (a configuration error)."""
