"""The consoles' alarm sound, made at start: no audio file to ship or to go missing."""

from __future__ import annotations

import io
import math
import struct
import wave


def beep_wav(freq: float, second: float, on: float, off: float, rate: int = 16000) -> bytes:
    """A two-tone beep (``freq`` then ``freq * second``) of ``on`` seconds and ``off`` seconds
    of silence, as a WAV for ``<audio loop>``; soft edges, no clicks."""
    frames = bytearray()
    n = int(on * rate)
    for i in range(n):
        f = freq if i < n / 2 else freq * second
        env = min(1.0, i / 200, (n - i) / 200)
        frames += struct.pack("<h", int(0.6 * 32767 * env * math.sin(2 * math.pi * f * i / rate)))
    frames += b"\x00\x00" * int(off * rate)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return buf.getvalue()
