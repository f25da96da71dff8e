"""Shipped profiles load and match the spec; broken profiles name the file and the key."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from drivers.modbus.codec import modicon_to_wire
from drivers.modbus.errors import ProfileError
from drivers.modbus.profile import PointRef, Profile, list_profiles, load_profile

REQUIRED = {
    "adam-6050",
    "adam-6051",
    "adam-6060",
    "moxa-e1210",
    "moxa-e1212",
    "icpdas-et2260",
    "zlan6042",
    "zlan6042-res",
}

PROFILES_DIR = Path(__file__).resolve().parents[1] / "drivers" / "modbus" / "profiles"


def test_every_required_model_ships():
    assert set(list_profiles()) >= REQUIRED


@pytest.mark.parametrize("name", list_profiles())
def test_shipped_profile_validates(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.channels >= 1
    for capability in ("latch", "counter", "analog"):
        # Each capability is either mapped or explained.
        assert profile.supports(capability) != (capability in profile.unavailable)
    last = profile.capabilities.state.address_of(profile.channels - 1)
    assert 0 <= last <= 65535


@pytest.mark.parametrize("name", list_profiles())
def test_modicon_numbers_in_yaml_agree_with_wire_addresses(name):
    # The loader checks this; here we check that the YAML actually states both where
    # the manual numbers points Modicon style, so a reader of the file sees them.
    profile = load_profile(name)
    caps = profile.capabilities
    refs: list[PointRef] = [caps.state]
    if caps.latch:
        refs += [caps.latch.read, caps.latch.clear]
    if caps.counter:
        refs += [caps.counter.read] + ([caps.counter.reset] if caps.counter.reset else [])
    if caps.analog:
        refs += [caps.analog.read]
    for ref in refs:
        if ref.modicon is not None:
            assert modicon_to_wire(ref.modicon) == (ref.table, ref.address)


def test_adam_6050_map_from_the_spec():
    caps = load_profile("adam-6050").capabilities
    assert (caps.state.table, caps.state.address_of(3)) == ("coil", 3)
    assert caps.latch is not None
    assert caps.counter is not None
    assert [caps.latch.read.address_of(ch) for ch in (0, 1, 11)] == [35, 39, 79]
    assert (caps.latch.clear.table, caps.latch.clear.address_of(2)) == ("coil", 43)
    assert (caps.counter.read.table, caps.counter.read.address_of(1)) == ("holding_register", 2)
    assert caps.counter.word_order == "low_first"
    assert caps.counter.reset is not None
    assert caps.counter.reset.address_of(1) == 37  # 00034 + 4


def test_moxa_e1210_map_from_the_spec():
    profile = load_profile("moxa-e1210")
    caps = profile.capabilities
    assert profile.channels == 16
    assert (caps.state.table, caps.state.address) == ("discrete_input", 0)
    assert caps.state.packed_word is not None
    assert (caps.state.packed_word.table, caps.state.packed_word.address) == ("input_register", 48)
    assert caps.counter is not None
    assert (caps.counter.read.table, caps.counter.read.address_of(2)) == ("input_register", 20)
    assert caps.counter.word_order == "high_first"
    assert caps.counter.reset is not None
    assert caps.counter.reset.address_of(0) == 272
    assert "counter" in profile.unavailable["latch"]  # says what serves instead


def test_et2260_clears_all_latches_with_one_write():
    caps = load_profile("icpdas-et2260").capabilities
    assert caps.latch is not None
    assert (caps.latch.read.table, caps.latch.read.address_of(5)) == ("discrete_input", 0x25)
    assert (caps.latch.clear.address, caps.latch.clear.stride, caps.latch.clear.value) == (
        0x20,
        0,
        1,
    )


def test_zlan_reads_di_as_coils_and_the_variant_has_ohms():
    assert load_profile("zlan6042").capabilities.state.table == "coil"
    analog = load_profile("zlan6042-res").capabilities.analog
    assert analog is not None
    assert analog.quantity == "resistance"
    assert analog.to_units(1000) == 1000.0
    assert analog.to_units(10000) == float("inf")


def test_load_by_path_and_case_insensitive_name(tmp_path):
    target = tmp_path / "site-adam.yaml"
    target.write_text((PROFILES_DIR / "adam-6050.yaml").read_text())
    assert load_profile(target).model == "ADAM-6050"
    assert load_profile(str(target)).name == "site-adam"
    assert load_profile("ADAM-6050").name == "adam-6050"


def test_json_schema_exports():
    schema = Profile.model_json_schema()
    assert schema["additionalProperties"] is False
    json.dumps(schema)


# --------------------------------------------------------------------------- broken profiles

GOOD = """\
vendor: Acme
model: DI-8
channels: 8
capabilities:
  state: {table: coil, address: 0}
  latch:
    read: {modicon: "00036", stride: 4}
    clear: {table: coil, address: 35, stride: 4, value: 1}
unavailable:
  counter: none
  analog: none
"""


def _load(tmp_path: Path, text: str) -> Profile:
    path = tmp_path / "broken.yaml"
    path.write_text(textwrap.dedent(text))
    return load_profile(path)


def test_good_fixture_loads(tmp_path):
    assert _load(tmp_path, GOOD).capabilities.latch is not None


@pytest.mark.parametrize(
    ("old", "new", "key", "why"),
    [
        ("channels: 8", "channels: 8\ncolour: red", "colour", "Extra inputs"),
        ("{table: coil, address: 0}", "{table: coils, address: 0}",
         "capabilities.state.table", "coil"),
        ('{modicon: "00036", stride: 4}', '{modicon: "00036", address: 36, stride: 4}',
         "capabilities.latch.read", "coil 35"),
        ("value: 1}", "value: 2}", "capabilities.latch.clear", "0 or 1"),
        ("channels: 8", "channels: 0", "channels", "greater than or equal to 1"),
        ("  counter: none\n", "", "capabilities.counter", "unavailable.counter"),
        ("address: 35, stride: 4", "address: 35, stride: 4, colour: red",
         "capabilities.latch.clear.colour", "Extra inputs"),
    ],
    ids=["extra-key", "bad-table", "modicon-mismatch", "coil-value", "channels", "unexplained",
         "nested-extra"],
)  # fmt: skip
def test_broken_profile_names_file_and_key(tmp_path, old, new, key, why):
    text = GOOD.replace(old, new)
    assert text != GOOD
    with pytest.raises(ProfileError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert "broken.yaml" in message
    assert key in message
    assert why in message


def test_bad_yaml_names_the_line(tmp_path):
    with pytest.raises(ProfileError, match=r"broken\.yaml: line 2: not valid YAML: mapping"):
        _load(tmp_path, "vendor: a\nmodel: b: c\nchannels: 8\n")


def test_not_a_mapping(tmp_path):
    with pytest.raises(ProfileError, match=r"broken\.yaml: a profile is a mapping"):
        _load(tmp_path, "- just\n- a list\n")


def test_unknown_name_lists_the_builtins():
    with pytest.raises(ProfileError, match="adam-6050"):
        load_profile("adam-9999")


def test_missing_file(tmp_path):
    with pytest.raises(ProfileError, match=r"nope\.yaml: cannot read"):
        load_profile(tmp_path / "nope.yaml")
