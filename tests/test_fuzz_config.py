"""Fuzzing the config loader (issue 11, bad input): whatever is in the file, ``load_config``
gives a valid config or a ``ConfigError`` whose one message starts with the file's name (and,
for a wrong value, names the key); never another exception. Inputs: random bytes and text,
random YAML documents, the shipped example configs mutated key by key (dropped, retyped, added,
at any depth), and YAML oddities (dates that do not exist, deep nesting, self-referring
aliases, tags, undefined ``${ENV}`` references, non-UTF-8 bytes).

Two sizes: a few hundred cases per target by default; ``-m slow`` runs 100,000.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from contract.config import ConfigError, EdgeConfig, GatewayConfig, load_config
from tests.test_fuzz_ingest import SIZES, json_values, report, sized

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES: dict[str, tuple[type[BaseModel], Any]] = {
    "gateway": (GatewayConfig, yaml.safe_load((ROOT / "config/gateway.example.yaml").read_text())),
    "edge": (EdgeConfig, yaml.safe_load((ROOT / "config/edge.example.yaml").read_text())),
}


def _dump(data: Any) -> str:
    # libyaml's dumper: the test's own YAML writing should not be what takes the time.
    return yaml.dump(data, Dumper=yaml.CSafeDumper, allow_unicode=True)


yaml_oddities = st.sampled_from(
    [
        b"\xff\xfe\x00",
        b"campus: {id: a}\nname: \xc3",
        b"campuses: &x [*x]",
        b"a: &x {b: *x}",
        b"when: 2026-02-30",
        b"when: 2026-13-01 25:61:61",
        b"a: !!binary 'zzz'",
        b"a: !!python/object:os.system {}",
        b"a: !!set {x, y}",
        b"a: 0x_",
        b"a: .nan\nb: -.inf",
        b"a: ${NOT_SET_ANYWHERE_CG}",
        b"? [a, b]\n: c",
        b"---\na: 1\n---\nb: 2",
        b"\t- bad indent",
        b"",
        b"~",
    ]
)


@st.composite
def mutated_examples(draw: st.DrawFn) -> tuple[str, bytes]:
    """A shipped example config with up to 3 changes at any depth, written back as YAML."""
    kind = draw(st.sampled_from(sorted(EXAMPLES)))
    data = copy.deepcopy(EXAMPLES[kind][1])
    for _ in range(draw(st.integers(1, 3))):
        node: Any = data
        # Walk down a random path, then change the member where the walk stopped.
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            key = draw(
                st.sampled_from(
                    sorted(node, key=str) if isinstance(node, dict) else range(len(node))
                )
            )
            child = node[key]
            if not isinstance(child, dict | list) or not child:
                break
            node = child
        op = draw(st.sampled_from(["drop", "set", "add", "set-string"]))
        if isinstance(node, dict):
            keys = sorted(node, key=str)
            if op == "drop" and keys:
                node.pop(draw(st.sampled_from(keys)))
            elif op in ("set", "set-string") and keys:
                value = draw(json_values if op == "set" else st.text(max_size=20))
                node[draw(st.sampled_from(keys))] = value
            else:
                node[draw(st.text(max_size=10) | st.integers())] = draw(json_values)
        elif isinstance(node, list):
            if op == "drop" and node:
                node.pop(draw(st.integers(0, len(node) - 1)))
            elif node:
                node[draw(st.integers(0, len(node) - 1))] = draw(json_values)
            else:
                node.append(draw(json_values))
    return kind, _dump(data).encode()


@st.composite
def config_files(draw: st.DrawFn) -> tuple[str, bytes]:
    how = draw(st.sampled_from(["bytes", "text", "yaml", "mutated", "mutated", "odd"]))
    kind = draw(st.sampled_from(sorted(EXAMPLES)))
    if how == "bytes":
        return kind, draw(st.binary(max_size=300))
    if how == "text":
        return kind, draw(st.text(max_size=200)).encode()
    if how == "yaml":
        doc = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=5) | json_values)
        return kind, _dump(doc).encode()
    if how == "odd":
        return kind, draw(yaml_oddities)
    return draw(mutated_examples())


@pytest.mark.parametrize("n", SIZES)
def test_any_config_file_loads_or_says_what_is_wrong(tmp_path: Path, n: int) -> None:
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    path = tmp_path / "campusguard.yaml"

    @sized(n)
    @given(case=config_files())
    @example(case=("gateway", b"\xff\xfe\x00"))  # UnicodeDecodeError escaped
    # Deep nesting: a RecursionError in PyYAML. (Only here: PyYAML's scanner is quadratic in
    # the depth of flow collections, too slow to draw again and again.)
    @example(case=("gateway", b"[" * 1200 + b"]" * 1200))
    @example(case=("edge", b"a: " + b"{b: " * 600 + b"1" + b"}" * 600))
    @example(case=("gateway", b"campuses: &x [*x]"))  # RecursionError expanding ${ENV}
    @example(case=("edge", b"when: 2026-02-30"))  # ValueError from PyYAML's date
    def check(case: tuple[str, bytes]) -> None:
        outcomes["_cases"] += 1
        kind, text = case
        model = EXAMPLES[kind][0]
        path.write_bytes(text)
        try:
            cfg: BaseModel = load_config(path, model)
        except ConfigError as exc:
            message = str(exc)
            assert message.startswith(f"{path}:"), message
            assert len(message) > len(f"{path}: ") + 5, message
            outcomes[f"{kind}: ConfigError"] += 1
        else:
            assert isinstance(cfg, model)
            outcomes[f"{kind}: valid"] += 1

    check()
    report("config loader", n, started, outcomes)
    assert outcomes["gateway: valid"] + outcomes["edge: valid"] > 0 or n < 50


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_a_wrong_value_is_named_by_its_key(tmp_path: Path, kind: str) -> None:
    model, data = EXAMPLES[kind]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert isinstance(load_config(path, model), model)  # the example itself is valid
    bad = copy.deepcopy(data)
    bad["mqtt"]["port"] = "not-a-port"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as exc:
        load_config(path, model)
    assert str(exc.value).startswith(f"{path}: mqtt.port: ")
