"""docker-compose.yml cannot run here (no Docker engine): check its structure and that every
file and command it refers to exists and validates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.config import EdgeConfig, GatewayConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_services_and_mounts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {"mosquitto", "postgres", "gateway", "gateway-2", "edge", "police-sim", "modbus-sim"}
    assert expected | {"emqx1", "emqx2"} <= set(services)
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name} mounts missing {src}"
            else:
                assert src in compose["volumes"], f"{name} uses undeclared volume {src}"
        for dep in svc.get("depends_on", {}):
            assert dep in services


HOST_ENV = {
    "CG_DB_PASSWORD": "db-pw",
    "CG_INFLUX_TOKEN": "t0ken",
    "CG_INFLUX_PASSWORD": "influx-pw",
    "CG_GRAFANA_PASSWORD": "grafana-pw",
}
"""What an operator exports before `docker compose up` (the required ones)."""

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} (what the container gets)."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        got = env.get(name)
        if op in (":-", "-"):
            return got if got else arg
        if op in (":?", "?"):
            assert got, f"compose would stop: {name} is required ({arg})"
        return got or ""

    return _VAR.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def container_env(svc: dict[str, Any], host: dict[str, str]) -> dict[str, str]:
    return {k: interpolate(str(v), host) for k, v in (svc.get("environment") or {}).items()}


def mounted_config(svc: dict[str, Any]) -> Path:
    """The host file behind the --config the service's command names."""
    cmd = svc["command"]
    inside = cmd[cmd.index("--config") + 1]
    return ROOT / _mounts(svc)[inside]


def load_as(svc: dict[str, Any], model: Any, host: dict[str, str], mp: pytest.MonkeyPatch) -> Any:
    """The service's config as the container loads it: with the environment compose gives it."""
    for key, value in container_env(svc, host).items():
        mp.setenv(key, value)
    return load_config(mounted_config(svc), model)


def test_compose_configs_validate(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose["services"]
    gws = {}
    for name in ("gateway", "gateway-2"):
        with monkeypatch.context() as mp:
            gws[name] = load_as(services[name], GatewayConfig, HOST_ENV, mp)
    gw, gw2 = gws["gateway"], gws["gateway-2"]
    assert gw.database.url == "postgresql+asyncpg://campusguard@postgres/campusguard"
    assert (
        gw.database.connect_url() == "postgresql+asyncpg://campusguard:db-pw@postgres/campusguard"
    )
    assert gw.mqtt.host == "mosquitto" and gw.mqtt.port == 1883
    assert gw.influxdb is not None
    assert (gw.influxdb.api, gw.influxdb.url) == ("v2", "http://influxdb:8086")
    assert (gw.influxdb.org, gw.influxdb.bucket) == ("campusguard", "telemetry")
    assert gw.influxdb.token_text() == "t0ken"
    # Two gateways: one database, one shared subscription, one data volume (evidence), but
    # their own ids, broker user names and telemetry spools.
    assert gw2.database.url == gw.database.url
    assert gw.gateway.share_group and gw2.gateway.share_group == gw.gateway.share_group
    assert gw.gateway.data_dir == gw2.gateway.data_dir
    assert (gw.gateway.id, gw2.gateway.id) == ("gw-1", "gw-2")
    for g in (gw, gw2):
        assert g.mqtt.username == f"gateway-{g.gateway.id}"
        assert g.influxdb is not None and g.influxdb.spool_dir is not None
        assert g.influxdb.spool_dir.parent == g.gateway.data_dir
    assert gw.influxdb.spool_dir != gw2.influxdb.spool_dir  # type: ignore[union-attr]
    with monkeypatch.context() as mp:
        edge = load_as(services["edge"], EdgeConfig, HOST_ENV, mp)
    assert edge.devices[0].host == "modbus-sim"
    assert edge.mqtt.host == "mosquitto" and edge.mqtt.username == f"edge-{edge.campus.id}"
    # The city: CG_MQTT_HOST=emqx moves the gateways and the edge to the EMQX cluster.
    city = {**HOST_ENV, "CG_MQTT_HOST": "emqx"}
    for name in ("gateway", "gateway-2", "edge"):
        with monkeypatch.context() as mp:
            model = EdgeConfig if name == "edge" else GatewayConfig
            assert load_as(services[name], model, city, mp).mqtt.host == "emqx"


def test_compose_services_are_runnable(compose: dict[str, Any]) -> None:
    """Every service has an image (pinned) or a build, sane ports, known profiles; nothing in
    an optional profile requires a variable (Compose interpolates inactive profiles too, so a
    ${VAR:?} there would stop a plain `docker compose up`)."""
    host_ports: dict[str, str] = {}
    for name, svc in compose["services"].items():
        assert svc.get("image") or svc.get("build"), f"{name}: no image and no build"
        if "build" not in svc:
            image = svc["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
        if "build" in svc:
            assert (ROOT / svc["build"] / "Dockerfile").is_file()
        for spec in svc.get("ports", []):
            host, _, inside = str(spec).rpartition(":")
            assert host.isdigit() and inside.isdigit(), f"{name}: port {spec}"
            assert host not in host_ports, f"{name} and {host_ports.get(host)} both publish {host}"
            host_ports[host] = name
        profiles = svc.get("profiles", [])
        assert set(profiles) <= {"demo", "city"}, f"{name}: profiles {profiles}"
        if profiles:
            text = yaml.safe_dump(svc)
            assert not re.search(r"\$\{[A-Za-z_0-9]+:?\?", text), f"{name}: ${{VAR:?}} in a profile"
        deps = svc.get("depends_on", {})
        for dep, cond in deps.items():
            dep_profiles = set(compose["services"][dep].get("profiles", []))
            if dep_profiles and not dep_profiles & set(profiles):
                assert cond.get("required") is False, f"{name} needs {dep} of another profile"


def _emqx_nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if str(svc.get("image", "")).startswith("emqx/emqx:")
    }


def test_compose_emqx_cluster(compose: dict[str, Any]) -> None:
    nodes = _emqx_nodes(compose)
    assert 2 <= len(nodes) <= 3
    names = []
    for svc in nodes.values():
        assert re.fullmatch(r"emqx/emqx:5\.\d+\.\d+", svc["image"]), "a full EMQX 5 version"
        assert svc["profiles"] == ["city"]
        env = svc["environment"]
        node = env["EMQX_NODE_NAME"]
        host = node.removeprefix("emqx@")
        assert svc["hostname"] == host and "." in host  # Erlang long names want a dot
        aliases = svc["networks"]["default"]["aliases"]
        assert host in aliases and "emqx" in aliases  # the cluster's one name for clients
        assert env["EMQX_CLUSTER__DISCOVERY_STRATEGY"] == "static"
        seeds = [s.strip() for s in env["EMQX_CLUSTER__STATIC__SEEDS"].strip("[]").split(",")]
        names.append(node)
        assert env["EMQX_NODE__COOKIE"].startswith("${CG_EMQX_COOKIE")
        # The ACL: the file authorizer reads the mounted config/emqx-acl.conf; unmatched = deny.
        assert env["EMQX_AUTHORIZATION__NO_MATCH"] == "deny"
        sources = env["EMQX_AUTHORIZATION__SOURCES"]
        assert "type = file" in sources and "enable = true" in sources
        acl_path = re.search(r'path = "([^"]+)"', sources)
        assert acl_path is not None
        assert _mounts(svc)[acl_path.group(1)] == "./config/emqx-acl.conf"
        assert svc["healthcheck"]["test"]
        assert any(v.endswith(":/opt/emqx/data") for v in svc["volumes"])
    assert len(set(names)) == len(names)
    assert sorted(seeds) == sorted(names), "static seeds must name every node"
    data = [v for svc in nodes.values() for v in svc["volumes"] if v.endswith(":/opt/emqx/data")]
    assert len(set(data)) == len(nodes), "each node its own data volume"
    # The gateways wait for the cluster when the city profile runs (and only then).
    for gw in ("gateway", "gateway-2"):
        dep = compose["services"][gw]["depends_on"]
        assert any(d in nodes and c.get("required") is False for d, c in dep.items())


_ACL_LINE = re.compile(
    r'^\{(allow|deny), \{username, (?:"([^"]+)"|\{re, "([^"]+)"\})\}, '
    r"(publish|subscribe), \[([^\]]*)\]\}\.$"
)


def _covers(acl: str, topic: str) -> bool:
    """Whether the ACL topic filter ``acl`` grants ``topic`` (itself maybe a filter)."""
    a, t = acl.split("/"), topic.split("/")
    for i, level in enumerate(a):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(a) == len(t)


def test_emqx_acl_grants_what_the_compose_clients_use(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """config/emqx-acl.conf (mounted into every EMQX node) grants the compose edge and both
    gateways exactly what they use, under the user names their configs give."""
    from contract import topics

    rules: list[tuple[str, str | None, str | None, str, list[str]]] = []
    for line in (ROOT / "config/emqx-acl.conf").read_text().splitlines():
        if not line.strip() or line.startswith("%%"):
            continue
        if line.strip() == "{deny, all}.":
            continue
        m = _ACL_LINE.match(line.strip())
        assert m, f"cannot read ACL line {line!r}"
        rules.append((m[1], m[2], m[3], m[4], re.findall(r'"([^"]+)"', m[5])))

    def granted(user: str, action: str, topic: str) -> bool:
        return any(
            verdict == "allow"
            and act == action
            and (user == name if name else re.search(rx or "$^", user))
            and any(_covers(f, topic) for f in filters)
            for verdict, name, rx, act, filters in rules
        )

    services = compose["services"]
    with monkeypatch.context() as mp:
        edge = load_as(services["edge"], EdgeConfig, HOST_ENV, mp)
    user = edge.mqtt.username
    assert user is not None
    campus = edge.campus.id
    assert granted(user, "publish", topics.event_topic(campus))
    assert granted(user, "publish", topics.edge_state_topic(campus))
    for sub in topics.edge_subscriptions(campus):
        assert granted(user, "subscribe", sub)
    assert not granted(user, "publish", topics.event_topic("another-campus"))
    assert not granted(user, "subscribe", "cg/v1/another-campus/down/#")
    for name in ("gateway", "gateway-2"):
        with monkeypatch.context() as mp:
            gw = load_as(services[name], GatewayConfig, HOST_ENV, mp)
        assert gw.mqtt.username is not None
        for sub in topics.gateway_subscriptions(gw.gateway.share_group):
            assert granted(gw.mqtt.username, "subscribe", sub), sub
        assert granted(gw.mqtt.username, "publish", f"cg/v1/{campus}/down/command")


def test_compose_commands_exist(compose: dict[str, Any]) -> None:
    from typer.main import get_command

    from campusguard.cli import app

    cli = get_command(app)
    for name, svc in compose["services"].items():
        cmd = svc.get("command")
        if not cmd or cmd[0] != "campusguard":
            continue
        group = cli
        for word in cmd[1:]:
            if word.startswith("-"):
                break
            sub = group.commands.get(word)  # type: ignore[attr-defined]
            assert sub is not None, f"{name}: unknown command {word!r}"
            group = sub


# --- InfluxDB and Grafana ---------------------------------------------------------------------

DASHBOARDS = ROOT / "dashboards"
DATASOURCE_UID = "campusguard-influx"


def _mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts (read-only ones only)."""
    out = {}
    for vol in svc.get("volumes", []):
        src, dst, *mode = vol.split(":")
        if src.startswith("./"):
            assert mode == ["ro"], f"{vol}: config and dashboards are mounted read-only"
            out[dst] = src
    return out


def test_compose_influxdb_and_grafana(compose: dict[str, Any]) -> None:
    services = compose["services"]
    influx = services["influxdb"]
    assert influx["image"].startswith("influxdb:2")
    env = influx["environment"]
    assert env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert env["DOCKER_INFLUXDB_INIT_ORG"] == "campusguard"
    assert env["DOCKER_INFLUXDB_INIT_BUCKET"] == "telemetry"
    assert env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"].startswith("${CG_INFLUX_TOKEN:?")
    assert influx["healthcheck"]["test"]
    assert any(v.endswith(":/var/lib/influxdb2") for v in influx["volumes"])
    # the gateway gets the token its config refers to
    assert "CG_INFLUX_TOKEN" in services["gateway"]["environment"]

    grafana = services["grafana"]
    assert re.fullmatch(r"grafana/grafana:1[01]\.\d+\.\d+", grafana["image"]), "a full version"
    assert "3000:3000" in grafana["ports"]
    assert "influxdb" in grafana["depends_on"]
    assert "CG_INFLUX_TOKEN" in grafana["environment"]  # read by the data source file
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${")
    mounts = _mounts(grafana)
    assert (
        mounts["/etc/grafana/provisioning/datasources"] == "./dashboards/provisioning/datasources"
    )
    assert mounts["/etc/grafana/provisioning/dashboards"] == "./dashboards/provisioning/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    folder = next(dst for dst, src in mounts.items() if src == "./dashboards")
    assert home.startswith(folder + "/")
    assert (DASHBOARDS / home.removeprefix(folder + "/")).is_file()


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    ds_file = DASHBOARDS / "provisioning/datasources/influxdb.yaml"
    sources = yaml.safe_load(ds_file.read_text())["datasources"]
    assert len(sources) == 1
    ds = sources[0]
    assert ds["uid"] == DATASOURCE_UID and ds["type"] == "influxdb"
    assert ds["url"] == "http://influxdb:8086"  # the compose service
    assert ds["jsonData"]["version"] == "InfluxQL"
    assert ds["jsonData"]["dbName"] == "telemetry"
    assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Token ${CG_INFLUX_TOKEN}"

    providers = yaml.safe_load(
        (DASHBOARDS / "provisioning/dashboards/campusguard.yaml").read_text()
    )["providers"]
    assert [p["type"] for p in providers] == ["file"]
    mounts = _mounts(compose["services"]["grafana"])
    path = providers[0]["options"]["path"]
    assert mounts.get(path) == "./dashboards", f"provider path {path} is not the mounted folder"


@pytest.mark.parametrize(
    "name", ["district-overview", "campus-detail", "device-detail", "alarm-latency"]
)
def test_dashboards_use_the_provisioned_datasource(name: str) -> None:
    dash = json.loads((DASHBOARDS / f"{name}.json").read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds_var = variables["datasource"]
    assert ds_var["type"] == "datasource" and ds_var["query"] == "influxdb"
    assert ds_var["current"]["value"] == DATASOURCE_UID
    allowed = {DATASOURCE_UID, "${datasource}"}

    def refs(node: object) -> list[dict[str, Any]]:
        if isinstance(node, dict):
            found = [node["datasource"]] if isinstance(node.get("datasource"), dict) else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    used = [
        r for r in refs(dash["panels"]) + refs(dash["templating"]) if r.get("type") != "grafana"
    ]
    assert used, f"{name}: no data source referenced"
    for ref in used:
        assert ref == {"type": "influxdb", "uid": ref["uid"]} and ref["uid"] in allowed, (
            f"{name}: panel or variable uses data source {ref}"
        )


def test_dockerfile_copies_every_package() -> None:
    """The image installs the project from the copied sources: a package left out of the
    Dockerfile (as webkit/ once was) would build an image that fails at import."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    docker = (ROOT / "Dockerfile").read_text()
    copied = {
        line.split()[1]
        for line in docker.splitlines()
        if line.startswith("COPY ") and len(line.split()) == 3
    }
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    assert all((ROOT / p / "__init__.py").exists() for p in packages)
