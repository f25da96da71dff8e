"""Device profiles: a DI module's register map, as data.

A profile is the only place a register address lives. Built-in profiles ship as
YAML in ``drivers/modbus/profiles/``; a site can point at its own YAML file for a
remapped module. Each point may be written with its manual's Modicon number
(``modicon: "00036"``) beside the wire address; when both are given they must
agree, which catches the classic off-by-one.

Example:
    >>> p = load_profile("adam-6050")
    >>> p.capabilities.latch.read.address_of(2)
    43
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .codec import (
    BIT_TABLES,
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    REGISTER_TABLES,
    Table,
    WordOrder,
    modicon_to_wire,
    wire_to_modicon,
)
from .errors import ProfileError

__all__ = [
    "AnalogCapability",
    "Capabilities",
    "CapabilityName",
    "CounterCapability",
    "LatchCapability",
    "PointRef",
    "Profile",
    "StateCapability",
    "WriteRef",
    "list_profiles",
    "list_yaml_names",
    "load_profile",
    "load_yaml_model",
    "parse_yaml_model",
]

CapabilityName = Literal["state", "latch", "counter", "analog"]
_PACKAGE = "drivers.modbus"
_PROFILE_DIR = "profiles"

_Strict = ConfigDict(extra="forbid", frozen=True)

_M = TypeVar("_M", bound=BaseModel)


class PointRef(BaseModel):
    """Where one per-channel point lives: channel ``ch`` is at ``address + ch * stride``."""

    model_config = _Strict

    table: Table | None = Field(
        default=None, description="Modbus table; may be left out when 'modicon' is given"
    )
    address: Annotated[int, Field(ge=0, le=65535)] | None = Field(
        default=None, description="zero-based wire address of channel 0"
    )
    modicon: str | None = Field(
        default=None,
        pattern=r"^[0134]\d{4,5}$",
        description="the manual's Modicon number of channel 0, e.g. '00036' (quote it in YAML)",
    )
    stride: int = Field(
        default=1, ge=0, le=64, description="address step per channel; 0 = one point for all"
    )

    @model_validator(mode="after")
    def _table_and_address(self) -> Self:
        if self.modicon is not None:
            table, address = modicon_to_wire(self.modicon)
            if self.table is not None and self.table != table:
                raise ValueError(
                    f"modicon {self.modicon} is a {table}, but table says {self.table}"
                )
            if self.address is not None and self.address != address:
                raise ValueError(
                    f"modicon {self.modicon} is {table} {address} on the wire, "
                    f"but address says {self.address}"
                )
            object.__setattr__(self, "table", table)
            object.__setattr__(self, "address", address)
        elif self.table is None or self.address is None:
            raise ValueError("give table and address, or modicon")
        return self

    @property
    def wire_table(self) -> Table:
        """The table (always set after validation)."""
        assert self.table is not None
        return self.table

    def address_of(self, channel: int) -> int:
        """Wire address of ``channel``'s point."""
        assert self.address is not None
        return self.address + channel * self.stride

    def describe(self, channel: int = 0) -> str:
        """Human-readable ``table address (Modicon)`` of a channel's point."""
        address = self.address_of(channel)
        return f"{self.wire_table} {address} ({wire_to_modicon(self.wire_table, address)})"


class WriteRef(PointRef):
    """A point to write, and the value that performs the action."""

    value: int = Field(ge=0, le=0xFFFF, description="value to write (coils: 0 or 1)")

    @model_validator(mode="after")
    def _writable(self) -> Self:
        if self.table not in ("coil", "holding_register"):
            raise ValueError(f"cannot write to a {self.table}")
        if self.table == "coil" and self.value not in (0, 1):
            raise ValueError(f"a coil takes 0 or 1, not {self.value}")
        return self


class PackedWord(BaseModel):
    """A register holding every DI as one bit, channel 0 in the least significant bit."""

    model_config = _Strict

    table: Literal["holding_register", "input_register"] | None = None
    address: Annotated[int, Field(ge=0, le=65535)] | None = None
    modicon: str | None = Field(default=None, pattern=r"^[34]\d{4,5}$")

    @model_validator(mode="after")
    def _table_and_address(self) -> Self:
        ref = PointRef(table=self.table, address=self.address, modicon=self.modicon)
        object.__setattr__(self, "table", ref.table)
        object.__setattr__(self, "address", ref.address)
        return self


class StateCapability(PointRef):
    """The live DI state, one bit per channel (FC01 or FC02)."""

    packed_word: PackedWord | None = Field(
        default=None, description="optional register with all DI as one word (<= 16 channels)"
    )

    @model_validator(mode="after")
    def _bits(self) -> Self:
        if self.table not in BIT_TABLES:
            raise ValueError(f"DI state must be a coil or discrete_input, not {self.table}")
        return self


class LatchCapability(BaseModel):
    """A flag the module sets on an input edge and keeps until cleared."""

    model_config = _Strict

    read: PointRef = Field(description="latched flag, 1 = an edge was seen")
    clear: WriteRef = Field(description="write that clears it; stride 0 = clears all channels")
    edge: Literal["rising", "falling", "module"] = Field(
        default="module", description="edge that latches; 'module' = set in the module's config"
    )

    @model_validator(mode="after")
    def _bits(self) -> Self:
        if self.read.table not in BIT_TABLES:
            raise ValueError(f"latch flags must be bits, not {self.read.table}")
        return self


class CounterCapability(BaseModel):
    """A 32-bit edge counter per channel in two registers."""

    model_config = _Strict

    read: PointRef = Field(description="first of the two registers; stride >= 2")
    word_order: WordOrder
    reset: WriteRef | None = Field(default=None, description="write that zeroes the counter")

    @model_validator(mode="after")
    def _registers(self) -> Self:
        if self.read.table not in REGISTER_TABLES:
            raise ValueError(f"counters live in registers, not in a {self.read.table}")
        if self.read.stride == 1:
            raise ValueError("a 32-bit counter takes 2 registers: stride must be >= 2")
        return self


class AnalogCapability(BaseModel):
    """A loop resistance or voltage per channel, usable for end-of-line supervision; or a
    module that classifies the loop itself and reports a state code (``quantity: state``)."""

    model_config = _Strict

    read: PointRef
    quantity: Literal["resistance", "voltage", "state"]
    state_codes: dict[int, Literal["normal", "alarm", "cut", "short"]] | None = Field(
        default=None,
        description="quantity 'state': register value -> loop state; other values are unknown",
    )
    scale: float = Field(default=1.0, gt=0, description="ohms or volts per count")
    offset: float = Field(default=0.0, description="ohms or volts at count 0")
    full_scale: int = Field(
        default=0xFFFF,
        ge=1,
        le=0xFFFF,
        description="raw counts at or above which the input is over range (loop open)",
    )

    @model_validator(mode="after")
    def _registers(self) -> Self:
        if self.read.table not in REGISTER_TABLES:
            raise ValueError(f"analog values live in registers, not in a {self.read.table}")
        if (self.quantity == "state") != (self.state_codes is not None):
            raise ValueError("state_codes go with quantity 'state', and only with it")
        return self

    def to_units(self, raw: int) -> float:
        """Convert a raw count to ohms or volts; over range gives ``inf``."""
        if raw >= self.full_scale:
            return float("inf")
        return self.offset + raw * self.scale


class Capabilities(BaseModel):
    """What a channel of this module can do; a missing one must be listed as unavailable."""

    model_config = _Strict

    state: StateCapability
    latch: LatchCapability | None = None
    counter: CounterCapability | None = None
    analog: AnalogCapability | None = None


class Profile(BaseModel):
    """A DI module's register map and defaults."""

    model_config = _Strict

    name: str = Field(default="", description="filled in by the loader from the file name")
    vendor: str = Field(min_length=1)
    model: str = Field(min_length=1)
    description: str = ""
    channels: int = Field(ge=1, le=64, description="number of DI channels")
    default_unit: int = Field(default=1, ge=0, le=255)
    default_port: int = Field(default=502, ge=1, le=65535)
    transports: tuple[Literal["tcp", "rtu"], ...] = ("tcp",)
    capabilities: Capabilities
    unavailable: dict[CapabilityName, str] = Field(
        default_factory=dict, description="capability -> why it is missing and what serves instead"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        caps = self.capabilities
        present: dict[str, PointRef | None] = {
            "latch": caps.latch.read if caps.latch else None,
            "counter": caps.counter.read if caps.counter else None,
            "analog": caps.analog.read if caps.analog else None,
        }
        for name, ref in present.items():
            if ref is None and name not in self.unavailable:
                raise ValueError(
                    f"capabilities.{name} is missing; add it or say why under unavailable.{name}"
                )
            if ref is not None and name in self.unavailable:
                raise ValueError(f"{name} is both defined and listed as unavailable")
        if "state" in self.unavailable:
            raise ValueError("every DI module has a state: remove unavailable.state")
        if caps.state.packed_word is not None and self.channels > 16:
            raise ValueError("packed_word holds 16 channels; this module has more")
        last = self.channels - 1
        # (where, point, points per channel value, most points one request may read)
        checks: list[tuple[str, PointRef, int, int]] = [("state", caps.state, 1, MAX_READ_BITS)]
        if caps.latch:
            checks += [("latch.read", caps.latch.read, 1, MAX_READ_BITS)]
            checks += [("latch.clear", caps.latch.clear, 1, MAX_READ_BITS)]
        if caps.counter:
            checks += [("counter.read", caps.counter.read, 2, MAX_READ_REGISTERS)]
            if caps.counter.reset:
                checks += [("counter.reset", caps.counter.reset, 1, MAX_READ_BITS)]
        if caps.analog:
            checks += [("analog.read", caps.analog.read, 1, MAX_READ_REGISTERS)]
        for where, ref, width, max_count in checks:
            if ref.address_of(last) + width - 1 > 65535:
                raise ValueError(f"{where}: channel {last} falls beyond address 65535")
            # The reader fetches all channels of a capability in one request.
            if ref.address_of(last) + width - ref.address_of(0) > max_count:
                raise ValueError(f"{where}: {self.channels} channels span more than one read")
        return self

    def supports(self, capability: CapabilityName) -> bool:
        """Whether channels of this module have ``capability``."""
        return getattr(self.capabilities, capability) is not None


# --------------------------------------------------------------------------- loading


def _builtin_dir() -> Traversable:
    return resources.files(_PACKAGE).joinpath(_PROFILE_DIR)


def list_yaml_names(folder: Traversable) -> list[str]:
    """Names of the ``.yaml`` files in ``folder``, without the suffix, sorted."""
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    )


def list_profiles() -> list[str]:
    """Names of the built-in profiles, e.g. ``["adam-6050", ...]``, sorted."""
    return list_yaml_names(_builtin_dir())


def _format_location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif "[" in item or "function-after" in item:
            # pydantic names validator wrappers in the location; the key is what matters.
            continue
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def parse_yaml_model(
    model_cls: type[_M], text: str, source: str, name: str, *, locate_model_errors: bool = True
) -> _M:
    """Validate a YAML document as ``model_cls``, its ``name`` field defaulting to ``name``.

    Args:
        model_cls: The pydantic model of the document (a mapping with a ``name`` field).
        text: The YAML document.
        source: File name for error messages.
        name: Name to record when the document gives none.
        locate_model_errors: Prefix an error of a model-wide check with ``(top level)``,
            like every other error with its key; ``False`` when those checks name their
            keys in the message.

    Raises:
        ProfileError: One message naming ``source`` and the offending key(s): YAML
            errors with their line, a document that is not a mapping, invalid values.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError(f"{source}:{where} not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a mapping of keys, got {type(data).__name__}")
    data.setdefault("name", name)
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        problems: list[str] = []
        for err in exc.errors(include_url=False):
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] != "missing" and not isinstance(err["input"], dict):
                message += f" (got {err['input']!r})"
            if err["loc"] or locate_model_errors:
                message = f"{_format_location(err['loc'])}: {message}"
            problems.append(message)
        raise ProfileError(f"{source}: {'; '.join(problems)}") from None


def load_yaml_model(
    name_or_path: str | Path,
    builtin: Traversable,
    parse: Callable[[str, str, str], _M],
    *,
    kind: str = "profile",
) -> _M:
    """Load a built-in YAML document by name, or a YAML file by path.

    Args:
        name_or_path: A name of a file in ``builtin``, without ``.yaml``
            (case-insensitive), or a path: a :class:`~pathlib.Path`, or a string
            ending in ``.yaml``/``.yml`` or holding a slash.
        builtin: The folder of built-in documents.
        parse: Validates a document: ``parse(text, source, name)``, e.g. a
            :func:`parse_yaml_model` with its model.
        kind: What the documents are, for the unknown-name message.

    Raises:
        ProfileError: Unknown name, unreadable file, or whatever ``parse`` raises.
    """
    text_name = str(name_or_path)
    looks_like_path = (
        isinstance(name_or_path, Path)
        or text_name.endswith((".yaml", ".yml"))
        or "/" in text_name
        or "\\" in text_name
    )
    if looks_like_path:
        path = Path(name_or_path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileError(f"{path}: cannot read profile: {exc.strerror}") from None
        return parse(text, str(path), path.stem)
    key = text_name.strip().lower()
    entry = builtin.joinpath(f"{key}.yaml")
    if not entry.is_file():
        raise ProfileError(
            f"no built-in {kind} {text_name!r}; available: {', '.join(list_yaml_names(builtin))}"
        )
    return parse(entry.read_text(encoding="utf-8"), f"{builtin.name}/{key}.yaml", key)


def parse_profile(text: str, source: str, name: str) -> Profile:
    """Validate a profile from YAML text.

    Args:
        text: The YAML document.
        source: File name for error messages.
        name: Profile name to record.

    Raises:
        ProfileError: Naming ``source`` and the offending key.
    """
    return parse_yaml_model(Profile, text, source, name)


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a built-in profile by name, or a profile YAML file by path.

    Args:
        name_or_path: ``"adam-6050"`` (case-insensitive; see :func:`list_profiles`)
            or a path to a ``.yaml`` file.

    Returns:
        The validated profile.

    Raises:
        ProfileError: Unknown name, unreadable file, bad YAML or an invalid key; the
            message names the file and the key.
    """
    return load_yaml_model(name_or_path, _builtin_dir(), parse_profile)
