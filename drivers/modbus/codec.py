"""Pure Modbus value codecs: registers and bits in, typed values out.

Nothing here does I/O or reads a clock: time is passed in, so everything is
property-tested without a socket (``tests/test_modbus_codec.py``).

Contents:
    * table names and Modicon point numbers (``"00036"`` -> coil 35),
    * 32-bit counters from two registers, counter deltas across wrap-around,
    * packed words <-> per-channel bits, grouping of per-channel addresses into
      as few read requests as possible,
    * end-of-line (EOL) loop classification with hysteresis,
    * a :class:`Debouncer`,
    * a sanity check of a Modbus TCP reply against its request, so garbage is
      reported as garbage instead of waiting for a timeout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, Literal, TypeVar, get_args

__all__ = [
    "BIT_TABLES",
    "EOL_SCHEMES",
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "REGISTER_TABLES",
    "BitTable",
    "Debouncer",
    "EolScheme",
    "EolState",
    "ReadSpan",
    "RegisterTable",
    "Table",
    "WordOrder",
    "bits_from_word",
    "counter_delta",
    "counter_from_words",
    "counter_increase",
    "counter_to_words",
    "eol_scheme",
    "modicon_to_wire",
    "plan_reads",
    "resistance_from_voltage",
    "span_values",
    "tcp_response_problem",
    "voltage_from_resistance",
    "wire_to_modicon",
    "word_from_bits",
]

BitTable = Literal["coil", "discrete_input"]
RegisterTable = Literal["holding_register", "input_register"]
Table = Literal[BitTable, RegisterTable]
WordOrder = Literal["low_first", "high_first"]

BIT_TABLES: frozenset[str] = frozenset(get_args(BitTable))
REGISTER_TABLES: frozenset[str] = frozenset(get_args(RegisterTable))

# Modbus application protocol v1.1b3: FC01/02 read at most 2000 bits, FC03/04 125 registers.
MAX_READ_BITS = 2000
MAX_READ_REGISTERS = 125

_MODICON_PREFIX: dict[str, Table] = {
    "0": "coil",
    "1": "discrete_input",
    "3": "input_register",
    "4": "holding_register",
}
_MODICON_DIGIT = {table: digit for digit, table in _MODICON_PREFIX.items()}


# --------------------------------------------------------------------------- addresses


def modicon_to_wire(point: str) -> tuple[Table, int]:
    """Translate a manual's Modicon point number into a table and a zero-based wire address.

    Manuals count from 1 with the table as the leading digit: ``00036`` is coil 35,
    ``40001`` holding register 0, ``30049`` input register 48. Six-digit numbers
    (``400001``) are the extended form of the same thing.

    Args:
        point: Five or six digits, as a string (an int would lose the leading zeros,
            and YAML 1.1 reads ``00036`` as octal).

    Returns:
        The table and the zero-based address pymodbus expects.

    Raises:
        ValueError: If the string is not a Modicon point number.
    """
    if not (point.isascii() and point.isdigit() and len(point) in (5, 6)):
        raise ValueError(f"Modicon point {point!r} must be 5 or 6 digits, e.g. '00036' or '40001'")
    table = _MODICON_PREFIX.get(point[0])
    if table is None:
        raise ValueError(f"Modicon point {point!r} must start with 0, 1, 3 or 4")
    number = int(point[1:])
    if number < 1:
        raise ValueError(f"Modicon point {point!r} counts from 1")
    return table, number - 1


def wire_to_modicon(table: Table, address: int) -> str:
    """Return the five-digit (or six-digit above 9999) Modicon number of a wire address.

    Args:
        table: The Modbus table.
        address: Zero-based wire address.

    Returns:
        The manual-style point number, e.g. ``("coil", 35) -> "00036"``.
    """
    if not 0 <= address <= 65535:
        raise ValueError(f"address {address} outside 0..65535")
    width = 4 if address < 9999 else 5
    return f"{_MODICON_DIGIT[table]}{address + 1:0{width}d}"


@dataclass(frozen=True, slots=True)
class ReadSpan:
    """One contiguous read request: ``count`` points from ``address``."""

    address: int
    count: int

    @property
    def end(self) -> int:
        """The first address after the span."""
        return self.address + self.count


def plan_reads(
    addresses: Iterable[int], *, width: int = 1, max_count: int, max_gap: int | None = None
) -> list[ReadSpan]:
    """Group per-channel addresses into as few contiguous reads as the protocol allows.

    Unwanted points between wanted ones are read and ignored: one request costs far
    more (a round trip, or ~20 ms of RS-485 at 9600 baud) than a few extra bytes.

    Args:
        addresses: Start address of each wanted value.
        width: Points per value (2 for a 32-bit counter).
        max_count: Largest count one request may ask for.
        max_gap: Largest run of unwanted points to read through; ``None`` = no limit.

    Returns:
        Spans in address order; each value lies wholly inside one span. (Spans only
        overlap when values themselves overlap, which no real map does.)
    """
    if width < 1 or max_count < width:
        raise ValueError(f"width {width} / max_count {max_count} make no read possible")
    spans: list[ReadSpan] = []
    for address in sorted(set(addresses)):
        if spans:
            last = spans[-1]
            gap = address - last.end
            fits = address + width - last.address <= max_count
            if address + width <= last.end:
                continue  # already read
            if fits and (gap < 0 or max_gap is None or gap <= max_gap):
                spans[-1] = ReadSpan(last.address, address + width - last.address)
                continue
        spans.append(ReadSpan(address, width))
    return spans


def span_values(
    spans: Sequence[ReadSpan],
    blocks: Sequence[Sequence[int]] | Sequence[Sequence[bool]],
    address: int,
    width: int = 1,
) -> list[int]:
    """Pick the ``width`` values at ``address`` out of the blocks read for ``spans``.

    Args:
        spans: The spans returned by :func:`plan_reads`.
        blocks: The values read for each span, in the same order.
        address: Start address of the wanted value.
        width: Number of points.

    Returns:
        The values as ints (bits become 0/1).

    Raises:
        KeyError: If no span covers the value.
    """
    for span, block in zip(spans, blocks, strict=True):
        if span.address <= address and address + width <= span.end:
            offset = address - span.address
            return [int(v) for v in block[offset : offset + width]]
    raise KeyError(f"no read covers address {address} (+{width})")


# --------------------------------------------------------------------------- words and bits


def bits_from_word(word: int, count: int = 16) -> list[bool]:
    """Unpack a register holding one DI per bit, channel 0 in the least significant bit.

    This is how Moxa's "all DI as one word" register (30049) and most packed
    status words are laid out.

    Args:
        word: Register value, 0..65535.
        count: Number of channels to return (at most 16).
    """
    if not 0 <= word <= 0xFFFF:
        raise ValueError(f"register value {word} outside 0..65535")
    if not 0 <= count <= 16:
        raise ValueError(f"a register holds 16 bits, not {count}")
    return [bool(word >> bit & 1) for bit in range(count)]


def word_from_bits(bits: Sequence[bool]) -> int:
    """Pack up to 16 channel bits into a register, channel 0 in the least significant bit."""
    if len(bits) > 16:
        raise ValueError(f"a register holds 16 bits, not {len(bits)}")
    return sum(1 << i for i, bit in enumerate(bits) if bit)


def counter_from_words(words: Sequence[int], order: WordOrder) -> int:
    """Join two 16-bit registers into an unsigned 32-bit counter.

    Args:
        words: The two registers as read, lowest address first.
        order: ``low_first`` (Advantech: low word at the lower address) or
            ``high_first`` (Moxa: high word at 30017+2ch, low word at 30018+2ch).
    """
    if len(words) != 2:
        raise ValueError(f"a 32-bit counter takes 2 registers, got {len(words)}")
    first, second = words
    for word in words:
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"register value {word} outside 0..65535")
    low, high = (first, second) if order == "low_first" else (second, first)
    return high << 16 | low


def counter_to_words(value: int, order: WordOrder) -> tuple[int, int]:
    """Split an unsigned 32-bit counter into two registers in wire order (inverse of the above)."""
    if not 0 <= value <= 0xFFFF_FFFF:
        raise ValueError(f"counter value {value} outside 32 bits")
    low, high = value & 0xFFFF, value >> 16
    return (low, high) if order == "low_first" else (high, low)


def counter_delta(previous: int, current: int, bits: int = 32) -> int:
    """Count edges between two counter readings, across a wrap-around.

    A module counts up modulo ``2**bits``; the reader polls far more often than
    the counter can wrap, so the forward distance is the number of edges.

    Args:
        previous: Counter at the previous read.
        current: Counter now.
        bits: Counter width.
    """
    modulus = 1 << bits
    if not (0 <= previous < modulus and 0 <= current < modulus):
        raise ValueError(f"counter values {previous}, {current} outside {bits} bits")
    return (current - previous) % modulus


def counter_increase(previous: int, current: int, bits: int = 32) -> tuple[int, bool]:
    """Edges between two counter readings, telling a wrap-around from a counter reset.

    A forward distance of half the range or more cannot be counting (a 32-bit
    counter would need 2**31 presses between two polls): the counter went back,
    because the module was power-cycled or someone reset it, and ``current`` edges
    have happened since.

    Args:
        previous: Counter at the previous read.
        current: Counter now.
        bits: Counter width.

    Returns:
        ``(edges, was_reset)``.
    """
    delta = counter_delta(previous, current, bits)
    if delta >= 1 << (bits - 1):
        return current, True
    return delta, False


# --------------------------------------------------------------------------- end-of-line


class EolState(StrEnum):
    """The state of a supervised loop, as its resistance tells it."""

    NORMAL = "normal"
    ALARM = "alarm"
    CUT = "cut"
    SHORT = "short"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class EolScheme:
    """A resistance -> state table for one wiring convention.

    ``states[i]`` covers ``[edges[i-1], edges[i])`` ohms, with ``edges[-1]`` = 0 and
    the last state open-ended to infinity.

    Attributes:
        name: Scheme name.
        states: One state per band, lowest resistance first.
        edges: Band boundaries in ohms, strictly increasing, ``len(states) - 1`` of them.
        violated: States that mean "the contact is operated". For a double EOL that
            is ``alarm`` only (short and cut are tamper); with a single EOL a press
            shows as a short (normally-open contact) or an open loop (normally-closed),
            and the panel cannot tell tamper from alarm.
    """

    name: str
    states: tuple[EolState, ...]
    edges: tuple[float, ...]
    violated: frozenset[EolState] = frozenset({EolState.ALARM})

    def __post_init__(self) -> None:
        """Check the table is well formed."""
        if len(self.states) != len(self.edges) + 1:
            raise ValueError(f"EOL scheme {self.name!r}: need one more state than edges")
        if EolState.UNKNOWN in self.states:
            raise ValueError(f"EOL scheme {self.name!r}: 'unknown' is not a band")
        if any(not (math.isfinite(e) and e > 0) for e in self.edges):
            raise ValueError(f"EOL scheme {self.name!r}: edges must be positive and finite")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"EOL scheme {self.name!r}: edges must increase")

    @classmethod
    def custom(
        cls,
        name: str,
        bands: Sequence[tuple[EolState | str, float]],
        violated: Iterable[EolState | str] = (EolState.ALARM,),
    ) -> EolScheme:
        """Build a scheme from ``(state, upper edge in ohms)`` pairs, lowest first.

        The last band's edge must be ``math.inf``.

        Example:
            ``EolScheme.custom("site-x", [("short", 500), ("normal", 3000),
            ("alarm", 9000), ("cut", math.inf)])``
        """
        if not bands or bands[-1][1] != math.inf:
            raise ValueError(f"EOL scheme {name!r}: the last band must reach infinity")
        return cls(
            name=name,
            states=tuple(EolState(state) for state, _ in bands),
            edges=tuple(float(edge) for _, edge in bands[:-1]),
            violated=frozenset(EolState(s) for s in violated),
        )

    def _band_of(self, ohms: float) -> int:
        for index, edge in enumerate(self.edges):
            if ohms < edge:
                return index
        return len(self.edges)

    def _bounds(self, index: int) -> tuple[float, float]:
        low = self.edges[index - 1] if index > 0 else 0.0
        high = self.edges[index] if index < len(self.edges) else math.inf
        return low, high

    def classify(
        self, ohms: float | None, previous: EolState | None = None, hysteresis: float = 0.0
    ) -> EolState:
        """Classify a loop resistance.

        Args:
            ohms: Measured resistance; ``None`` or NaN (failed or invalid reading)
                gives ``unknown`` -- never ``normal``. ``math.inf`` is an open loop.
            previous: The state reported last time, for hysteresis.
            hysteresis: Fraction (0.05 = 5 %) by which a reading must cross a band
                edge before the state leaves ``previous``; stops a loop sitting on
                an edge from flapping.

        Returns:
            The state of the band the reading falls in.
        """
        if ohms is None or math.isnan(ohms) or ohms < 0:
            return EolState.UNKNOWN
        if not 0.0 <= hysteresis < 1.0:
            raise ValueError(f"hysteresis {hysteresis} must be a fraction in [0, 1)")
        if previous is not None and previous is not EolState.UNKNOWN and hysteresis > 0:
            for index, state in enumerate(self.states):
                if state is not previous:
                    continue
                low, high = self._bounds(index)
                if low * (1 - hysteresis) <= ohms < high * (1 + hysteresis):
                    return previous
        return self.states[self._band_of(ohms)]

    def is_violated(self, state: EolState) -> bool | None:
        """Return whether ``state`` means the contact is operated, ``None`` if unknown."""
        if state is EolState.UNKNOWN:
            return None
        return state in self.violated


EOL_SCHEMES: dict[str, EolScheme] = {
    # Honeywell Galaxy, 1k + 1k: bands straight from the installer manual.
    "galaxy": EolScheme(
        "galaxy",
        (EolState.SHORT, EolState.NORMAL, EolState.ALARM, EolState.CUT),
        (700.0, 1500.0, 11000.0),
    ),
    # Dedicated Micros DS2, 1k + 5.6k: nominal 1k normal, 6.6-6.8k alarm. The manual
    # gives no bands; edges sit at half the normal value, the geometric mean of normal
    # and alarm (sqrt(1k * 6.6k) = 2.57k), and twice the alarm value.
    "ds2": EolScheme(
        "ds2",
        (EolState.SHORT, EolState.NORMAL, EolState.ALARM, EolState.CUT),
        (500.0, 2570.0, 13600.0),
    ),
    # DSC single EOL 5.6k: only "secure" is a band; 0 or open are both "violated".
    # Edges at half and twice 5.6k.
    "dsc": EolScheme(
        "dsc",
        (EolState.SHORT, EolState.NORMAL, EolState.CUT),
        (2800.0, 11200.0),
        violated=frozenset({EolState.SHORT, EolState.CUT}),
    ),
}


def eol_scheme(name: str) -> EolScheme:
    """Return a built-in EOL scheme by name (``galaxy``, ``ds2``, ``dsc``)."""
    try:
        return EOL_SCHEMES[name]
    except KeyError:
        raise ValueError(
            f"unknown EOL scheme {name!r}; built-in: {', '.join(sorted(EOL_SCHEMES))}"
        ) from None


def resistance_from_voltage(volts: float, supply_v: float, series_ohm: float) -> float:
    """Loop resistance from the voltage across it, fed from ``supply_v`` through ``series_ohm``.

    ``R = Rs * V / (Vs - V)``. At or above the supply the loop is open (``inf``).
    Example (spec): Vs = 10 V, Rs = 1 k: 4.12 V -> 700 ohm, 6.00 V -> 1.5 k, 9.17 V -> 11 k.

    Args:
        volts: Measured voltage across the loop.
        supply_v: Feed voltage.
        series_ohm: Feed resistor.
    """
    if supply_v <= 0 or series_ohm <= 0:
        raise ValueError("supply voltage and series resistor must be positive")
    if math.isnan(volts):
        return math.nan
    if volts <= 0:
        return 0.0
    if volts >= supply_v:
        return math.inf
    return series_ohm * volts / (supply_v - volts)


def voltage_from_resistance(ohms: float, supply_v: float, series_ohm: float) -> float:
    """Voltage across a loop of ``ohms`` fed through ``series_ohm`` (inverse of the above)."""
    if supply_v <= 0 or series_ohm <= 0:
        raise ValueError("supply voltage and series resistor must be positive")
    if ohms < 0:
        raise ValueError(f"resistance {ohms} is negative")
    if math.isinf(ohms):
        return supply_v
    return supply_v * ohms / (series_ohm + ohms)


# --------------------------------------------------------------------------- debouncing

T = TypeVar("T")


class Debouncer(Generic[T]):
    """Report a value only once it has been stable long enough.

    A new value must be seen in at least ``samples`` consecutive updates *and* for
    at least ``debounce_s`` seconds (from its first sighting) before it is reported.
    ``debounce_s=0, samples=1`` reports every change immediately. The first value
    follows the same rule: nothing is reported until something is stable.

    Pure: the caller passes the time (use ``time.monotonic()``).
    """

    def __init__(self, debounce_s: float = 0.0, samples: int = 1) -> None:
        """Create a debouncer.

        Args:
            debounce_s: Seconds a new value must persist.
            samples: Consecutive samples a new value must persist (EOL: ~300 ms worth).
        """
        if debounce_s < 0 or samples < 1:
            raise ValueError("debounce_s must be >= 0 and samples >= 1")
        self.debounce_s = debounce_s
        self.samples = samples
        self._reported: T | None = None
        self._candidate: T | None = None
        self._since = 0.0
        self._count = 0

    @property
    def value(self) -> T | None:
        """The last reported value, ``None`` before the first one."""
        return self._reported

    def reset(self) -> None:
        """Forget everything (e.g. after the device was unavailable)."""
        self._reported = None
        self._candidate = None
        self._count = 0

    def update(self, value: T, now: float) -> T | None:
        """Feed one sample.

        Args:
            value: The sampled value.
            now: Monotonic time of the sample.

        Returns:
            The value if this sample makes it the newly reported one, else ``None``.
        """
        if self._reported is not None and value == self._reported:
            self._candidate = None
            self._count = 0
            return None
        if self._candidate is None or value != self._candidate:
            self._candidate = value
            self._since = now
            self._count = 1
        else:
            self._count += 1
        if self._count >= self.samples and now - self._since >= self.debounce_s:
            self._reported = value
            self._candidate = None
            self._count = 0
            return value
        return None


# --------------------------------------------------------------------------- frame checks

_READ_BITS_FC = (1, 2)
_READ_REGISTERS_FC = (3, 4)
_WRITE_SINGLE_FC = (5, 6)


def tcp_response_problem(request: bytes, response: bytes) -> str | None:
    """Say what is wrong with a (possibly still partial) Modbus TCP reply, if anything.

    pymodbus silently waits for more bytes when a reply is malformed, so a device
    sending garbage would look like a silent one. This check runs on every chunk
    received and catches nonsense as soon as the bytes prove it.

    Args:
        request: The complete request ADU that was sent (MBAP header + PDU).
        response: All bytes received so far for it.

    Returns:
        ``None`` if the bytes are (so far) a plausible reply -- or a reply to an
        older request, which pymodbus skips -- else a short description.
    """
    if len(request) < 8:
        raise ValueError("request is not a Modbus TCP ADU")
    if len(response) >= 4 and response[2:4] != b"\x00\x00":
        return f"protocol id {response[2:4].hex()} is not 0000"
    if len(response) < 6:
        return None
    length = int.from_bytes(response[4:6], "big")
    # Shortest reply: unit + function + exception code; longest: a full 253-byte PDU + unit.
    if not 3 <= length <= 254:
        return f"MBAP length {length} outside 3..254"
    if response[0:2] != request[0:2]:
        return None
    if len(response) < 8:
        return None
    if response[6] != request[6]:
        return f"unit {response[6]} answered a request to unit {request[6]}"
    function, asked = response[7], request[7]
    if function == asked | 0x80:
        return None if length == 3 else f"exception reply with length {length}"
    if function != asked:
        return f"function {function} answered function {asked}"
    expected_bytes: int | None = None
    if asked in _READ_BITS_FC + _READ_REGISTERS_FC and len(request) >= 12:
        count = int.from_bytes(request[10:12], "big")
        expected_bytes = (count + 7) // 8 if asked in _READ_BITS_FC else 2 * count
        if length != 3 + expected_bytes:
            return f"length {length} for {count} points (expected {3 + expected_bytes})"
        if len(response) >= 9 and response[8] != expected_bytes:
            return f"byte count {response[8]} (expected {expected_bytes})"
    elif asked in _WRITE_SINGLE_FC and length != 6:
        return f"length {length} for a single write (expected 6)"
    return None
