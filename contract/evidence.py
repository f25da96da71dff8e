"""Alarm evidence on the wire: a snapshot (or the reason there is none) attached to an alarm.

One MQTT message per snapshot on ``cg/v1/<campus>/up/evidence``, QoS 1, from the edge's outbox
like an event, and acknowledged end to end by the gateway's :class:`~contract.models.Receipt`
(the evidence id is the receipt key). The payload is a short header and the picture itself,
without base64 (a JPEG of a few hundred KiB would grow by a third)::

    CGEV1\\n<header JSON, one line>\\n<image bytes>

The header names the alarm (``event_id``), the camera, when the picture was taken, and the image's
length and SHA-256, so a truncated or altered picture is refused. A camera that gave no picture
(offline, timed out, refused) sends a header with ``error`` set and no image: the alarm record
then says why a camera it expected is missing.

Pure: no I/O. Property-tested in ``tests/test_evidence_codec.py``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator

from contract.models import ID_PATTERN, _Model
from contract.topics import CAMPUS_ID_PATTERN

MAGIC = b"CGEV1\n"
MAX_HEADER_BYTES = 4096
MAX_IMAGE_BYTES = 16 * 1024 * 1024
"""The codec's own ceiling; the configured limits at the edge and the gateway are lower."""

ContentType = Literal["image/jpeg"]

_JPEG_SOI = b"\xff\xd8\xff"


class EvidenceError(ValueError):
    """A payload that is not a well-formed evidence message (the reason is the message)."""


class EvidenceHeader(_Model):
    v: Literal[1] = 1
    id: Annotated[str, Field(min_length=26, max_length=26)]
    campus: Annotated[str, Field(pattern=CAMPUS_ID_PATTERN)]
    edge: Annotated[str, Field(pattern=ID_PATTERN)]
    event_id: Annotated[str, Field(min_length=26, max_length=26)]
    camera: Annotated[str, Field(pattern=ID_PATTERN)]
    shot: int = Field(0, ge=0, le=99, description="0 = taken at the alarm, 1.. = the ones after")
    taken_at: datetime
    content_type: ContentType | None = None
    size: int = Field(0, ge=0, le=MAX_IMAGE_BYTES)
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    error: Annotated[str, Field(max_length=300)] | None = None

    @model_validator(mode="after")
    def _picture_or_reason(self) -> EvidenceHeader:
        if self.error is None:
            if self.content_type is None or self.sha256 is None or self.size == 0:
                raise ValueError("a snapshot needs content_type, size and sha256")
        elif self.size or self.sha256 or self.content_type:
            raise ValueError("a missing snapshot (error set) carries no image")
        return self


def encode(header: EvidenceHeader, image: bytes = b"") -> bytes:
    """The wire form. ``image`` must match the header's size and hash."""
    if len(image) != header.size:
        raise EvidenceError(f"image is {len(image)} bytes, header says {header.size}")
    if image and hashlib.sha256(image).hexdigest() != header.sha256:
        raise EvidenceError("image does not match the header's sha256")
    return MAGIC + header.model_dump_json().encode() + b"\n" + image


def decode(payload: bytes, max_image: int = MAX_IMAGE_BYTES) -> tuple[EvidenceHeader, bytes]:
    """Parse and check an evidence message.

    Raises:
        EvidenceError: naming what is wrong (framing, header field, size, hash, image type).
    """
    if not payload.startswith(MAGIC):
        raise EvidenceError("not an evidence message (bad magic)")
    end = payload.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER_BYTES + 1)
    if end < 0:
        raise EvidenceError("header line missing or longer than 4096 bytes")
    try:
        header = EvidenceHeader.model_validate_json(payload[len(MAGIC) : end])
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "header"
        raise EvidenceError(f"{where}: {err['msg']}"[:200]) from None
    image = payload[end + 1 :]
    if len(image) != header.size:
        raise EvidenceError(f"image is {len(image)} bytes, header says {header.size}")
    if header.size > max_image:
        raise EvidenceError(f"image of {header.size} bytes exceeds the limit of {max_image}")
    if image:
        if hashlib.sha256(image).hexdigest() != header.sha256:
            raise EvidenceError("image does not match its sha256 (damaged on the way)")
        if not image.startswith(_JPEG_SOI):
            raise EvidenceError("image is not a JPEG")
    return header, image


def snapshot_header(
    *,
    ident: str,
    campus: str,
    edge: str,
    event_id: str,
    camera: str,
    shot: int,
    taken_at: datetime,
    image: bytes,
) -> EvidenceHeader:
    """The header for a picture we hold."""
    return EvidenceHeader(
        id=ident,
        campus=campus,
        edge=edge,
        event_id=event_id,
        camera=camera,
        shot=shot,
        taken_at=taken_at,
        content_type="image/jpeg",
        size=len(image),
        sha256=hashlib.sha256(image).hexdigest(),
    )


def is_jpeg(image: bytes) -> bool:
    return image.startswith(_JPEG_SOI)
