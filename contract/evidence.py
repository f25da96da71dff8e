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

Alarm video clips (issue 13) travel the same way, in chunks so that MQTT messages stay bounded
(:data:`CHUNK_BYTES`, at most :data:`MAX_CHUNK_BYTES`): each chunk is a message with its own id
(its receipt key; chunk 0's id is the clip's id) and a ``clip`` block saying which clip, which
part of how many, the whole clip's size and SHA-256, the interval asked for, the interval the
video actually covers and the gaps in it (a camera that was down). The gateway keeps the parts
on disk and assembles the clip when it has them all, checking the whole clip's hash. A camera
that gave no video at all sends one header with ``error`` set and the ``clip`` block (the
interval and the gap), no bytes. Older messages (pictures) are unchanged.

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

CHUNK_BYTES = 256 * 1024
"""The edge's clip chunk size: one outbox batch's bulk budget, so an alarm queued behind a clip
waits for at most one chunk."""
MAX_CHUNK_BYTES = 1024 * 1024
MAX_CLIP_BYTES = 4 * 1024 * 1024 * 1024
MAX_PARTS = 16384

ContentType = Literal["image/jpeg", "video/mp4", "video/x-matroska"]
VIDEO_TYPES: frozenset[str] = frozenset({"video/mp4", "video/x-matroska"})

_JPEG_SOI = b"\xff\xd8\xff"


class EvidenceError(ValueError):
    """A payload that is not a well-formed evidence message (the reason is the message)."""


class ClipGap(_Model):
    """A stretch of the asked-for interval without video, and why."""

    start: datetime
    end: datetime
    reason: Annotated[str, Field(max_length=120)] = ""


class ClipInfo(_Model):
    """What a chunk of an alarm clip belongs to."""

    clip_id: Annotated[str, Field(min_length=26, max_length=26)]
    part: int = Field(0, ge=0, lt=MAX_PARTS)
    parts: int = Field(1, ge=1, le=MAX_PARTS)
    total_size: int = Field(0, ge=0, le=MAX_CLIP_BYTES)
    total_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    start: datetime = Field(description="the interval asked for: alarm - pre_s ..")
    end: datetime = Field(description=".. alarm + post_s")
    covered_start: datetime | None = Field(None, description="the video actually held: from ..")
    covered_end: datetime | None = Field(None, description=".. to")
    gaps: list[ClipGap] = Field(default_factory=list, max_length=16)
    key_point: bool = Field(False, description="a key point camera (longer retention)")

    @model_validator(mode="after")
    def _consistent(self) -> ClipInfo:
        if self.part >= self.parts:
            raise ValueError(f"part {self.part} of {self.parts}")
        if self.end < self.start:
            raise ValueError("clip end before its start")
        return self


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
    clip: ClipInfo | None = Field(None, description="set for (a chunk of) an alarm video clip")

    @model_validator(mode="after")
    def _picture_or_reason(self) -> EvidenceHeader:
        if self.error is None:
            if self.content_type is None or self.sha256 is None or self.size == 0:
                raise ValueError("a snapshot needs content_type, size and sha256")
            if (self.content_type in VIDEO_TYPES) != (self.clip is not None):
                raise ValueError("a video content type goes with a clip block, and only it")
            if self.clip is not None:
                c = self.clip
                if c.total_sha256 is None or c.total_size < self.size:
                    raise ValueError("a clip chunk needs the clip's total_size and total_sha256")
                if c.part == 0 and self.id != c.clip_id:
                    raise ValueError("a clip's first chunk carries the clip's id")
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
        if header.clip is None and not image.startswith(_JPEG_SOI):
            raise EvidenceError("image is not a JPEG")
        if header.clip is not None and header.clip.part == 0 and not is_video(image):
            raise EvidenceError("clip is not an MP4 or Matroska file")
    return header, image


def clip_chunks(
    *,
    clip_id: str,
    chunk_ids: list[str],
    campus: str,
    edge: str,
    event_id: str,
    camera: str,
    content_type: ContentType,
    data: bytes,
    info: ClipInfo,
    chunk_bytes: int = CHUNK_BYTES,
) -> list[tuple[EvidenceHeader, bytes]]:
    """Split a clip into wire messages; ``chunk_ids`` gives the ids of chunks 1.. (chunk 0 is
    ``clip_id``); ``info`` carries the interval, the gaps and ``key_point``."""
    if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
        raise EvidenceError(f"chunk size {chunk_bytes} out of range")
    pieces = [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)] or [b""]
    if len(chunk_ids) < len(pieces) - 1:
        raise EvidenceError(f"{len(pieces)} chunks need {len(pieces) - 1} chunk ids")
    total = hashlib.sha256(data).hexdigest()
    out: list[tuple[EvidenceHeader, bytes]] = []
    for n, piece in enumerate(pieces):
        ci = info.model_copy(
            update={
                "clip_id": clip_id,
                "part": n,
                "parts": len(pieces),
                "total_size": len(data),
                "total_sha256": total,
            }
        )
        header = EvidenceHeader(
            id=clip_id if n == 0 else chunk_ids[n - 1],
            campus=campus,
            edge=edge,
            event_id=event_id,
            camera=camera,
            shot=0,
            taken_at=info.start,
            content_type=content_type,
            size=len(piece),
            sha256=hashlib.sha256(piece).hexdigest(),
            clip=ClipInfo.model_validate(ci.model_dump()),
        )
        out.append((header, piece))
    return out


def is_video(data: bytes) -> bool:
    """An ISO-BMFF (MP4: ``ftyp`` box first) or Matroska (EBML magic) file."""
    return data[4:8] == b"ftyp" or data.startswith(b"\x1a\x45\xdf\xa3")


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
