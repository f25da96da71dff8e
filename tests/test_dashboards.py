"""Every panel of every Grafana dashboard in ``dashboards/`` runs against a real InfluxDB.

A real InfluxDB 1.6 (Debian's ``influxd``, :class:`tests.influx.Influx`) is filled with four hours
of telemetry from two campuses, written the way the gateway writes it (``batch_points`` of
:class:`~contract.telemetry.TelemetryBatch` es, encoded by ``encode_points``, POST ``/write``):
edges, DI modules with supervised loops, bollard controllers with bollards, cameras, offline
periods, an uplink outage, faults, and alarms relayed to the police (real and drills, primary
and backup path). Then, for every dashboard, every combination of its template-variable values
(each obtained by running the dashboard's own variable query, as Grafana does) and every
panel target, the query is expanded the way Grafana's InfluxDB data source does it (``$timeFilter``,
``$__interval``, regex-escaped variables, multi-value ``(a|b)``) and run on ``/query``; the test
fails naming the dashboard, the panel, the variables and the query when InfluxDB answers an error
or no series.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ulid import ULID

from contract.models import Event
from contract.telemetry import (
    BOLLARD_STATE_CODES,
    LOOP_STATE_CODES,
    Sample,
    TelemetryBatch,
)
from gateway.telemetry.points import Point, encode_points
from gateway.telemetry.sink import alarm_point, batch_points
from tests.influx import Influx

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
DATASOURCE_UID = "campusguard-influx"

STEP_S = 30  # the edge's telemetry interval
STEPS = 4 * 3600 // STEP_S  # four hours
TIME_FILTER = "time >= now() - 6h"  # what Grafana writes for "Last 6 hours"
DEFAULT_INTERVAL = "1m"
MAX_VALUES_PER_VARIABLE = 12


# --- test data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CampusSpec:
    campus: str
    di_modules: dict[str, list[str]]  # DI module -> its supervised (EOL) inputs
    controllers: dict[str, list[str]]  # bollard controller -> its bollards
    cameras: list[str]
    offline: dict[str, list[range]]  # device -> steps during which it is offline
    uplink_down: list[range]


CAMPUSES = [
    CampusSpec(
        campus="dx-xinghua-ps",
        di_modules={"di-guardroom": ["loop-fence", "loop-door"], "di-gate": []},
        controllers={"gate-south-plc": ["bollard-s1", "bollard-s2"], "gate-north-plc": ["n1"]},
        # a dot in an id: regex escaping matters
        cameras=["cam-gate", "cam.guardroom"],
        offline={
            "di-gate": [range(300, 360), range(STEPS - 10, STEPS)],  # offline now
            "cam.guardroom": [range(100, 130)],
        },
        uplink_down=[range(150, 160)],
    ),
    CampusSpec(
        campus="dx-huangcun-kg",
        di_modules={"di-office": [], "di-hall": ["loop-window"]},
        controllers={"gate-plc": ["bollard-1", "bollard-2"]},
        cameras=["cam-yard", "cam-door", "cam-hall"],
        offline={
            "cam-yard": [range(200, 220), range(STEPS - 6, STEPS)],  # offline now
            "gate-plc": [range(380, 420)],
        },
        uplink_down=[range(250, 280)],
    ),
]


def _in(step: int, ranges: list[range]) -> bool:
    return any(step in r for r in ranges)


def _link_fields(
    rng: random.Random, online: bool, requests: int, errors_total: int
) -> dict[str, Any]:
    if not online:
        return {
            "online": False,
            "requests": requests // 10,
            "errors": requests // 10,
            "errors_total": errors_total,
        }
    errors = 1 if rng.random() < 0.05 else 0
    avg = round(rng.uniform(2.0, 9.0), 3)
    return {
        "online": True,
        "requests": requests,
        "errors": errors,
        "errors_total": errors_total + errors,
        "latency_ms_avg": avg,
        "latency_ms_max": round(avg + rng.uniform(0.5, 30.0), 3),
    }


def _loop_state(point: str, step: int) -> int:
    if point == "loop-fence" and 50 <= step < 55:
        return LOOP_STATE_CODES["alarm"]
    if point == "loop-fence" and 400 <= step < 404:
        return LOOP_STATE_CODES["cut"]
    if point == "loop-window" and 10 <= step < 12:
        return LOOP_STATE_CODES["short"]
    return LOOP_STATE_CODES["normal"]


def _bollard_state(step: int) -> str:
    """Up at the morning and afternoon peaks, moving on the way, down otherwise."""
    phase = step % 120
    if phase in (10, 70):
        return "moving_up"
    if 10 < phase < 40 or 70 < phase < 100:
        return "up"
    if phase in (40, 100):
        return "moving_down"
    return "down"


def telemetry(now_s: int) -> Iterator[TelemetryBatch]:
    rng = random.Random(5)
    for spec in CAMPUSES:
        errors_total: dict[str, int] = {}
        cycles: dict[str, int] = {}
        outbox = 0
        for step in range(STEPS):
            ts = now_s - (STEPS - 1 - step) * STEP_S
            uplink = not _in(step, spec.uplink_down)
            outbox = 3 if uplink else outbox + 40
            samples = [
                Sample(
                    device="edge-1",
                    kind="edge",
                    fields={
                        "cpu_pct": round(rng.uniform(3.0, 25.0), 2),
                        "rss_mib": round(rng.uniform(80.0, 95.0), 2),
                        "disk_free_mib": round(52_000.0 - step * 0.5, 1),
                        "disk_used_pct": round(31.0 + step * 0.001, 2),
                        "outbox_depth": outbox,
                        "uplink_up": uplink,
                        "telemetry_dropped": 0,
                        "downlink_rejected": step // 200,
                        "evidence_taken": step // 60,
                        "evidence_missing": step // 400,
                    },
                )
            ]
            for di, inputs in spec.di_modules.items():
                online = not _in(step, spec.offline.get(di, []))
                fields = _link_fields(rng, online, 600, errors_total.get(di, 0))
                errors_total[di] = int(fields["errors_total"])
                samples.append(Sample(device=di, kind="di_module", fields=fields))
                if online:  # the edge sends loop states only from a module that answers
                    samples += [
                        Sample(
                            device=di,
                            point=p,
                            kind="input",
                            fields={"loop_state": _loop_state(p, step)},
                        )
                        for p in inputs
                    ]
            for plc, bollards in spec.controllers.items():
                online = not _in(step, spec.offline.get(plc, []))
                fields = _link_fields(rng, online, 300, errors_total.get(plc, 0))
                errors_total[plc] = int(fields["errors_total"])
                samples.append(Sample(device=plc, kind="bollard_controller", fields=fields))
                for b in bollards:
                    if not online:
                        bf: dict[str, Any] = {"state": BOLLARD_STATE_CODES["offline"]}
                    else:
                        state = _bollard_state(step)
                        fault = b == "n1" and 320 <= step < 330
                        if state == "moving_up":
                            cycles[b] = cycles.get(b, 1200) + 1
                        bf = {
                            "state": BOLLARD_STATE_CODES["fault" if fault else state],
                            "pressure_bar": round(rng.uniform(95.0, 120.0), 1)
                            if not fault
                            else 72.5,
                            "motor_temp_c": round(
                                28.0 + 10 * math.sin(step / 40) + rng.uniform(0, 2), 1
                            ),
                            "cycles": cycles.get(b, 1200),
                            "fault_code": 17 if fault else 0,
                        }
                    samples.append(Sample(device=plc, point=b, kind="bollard", fields=bf))
            for cam in spec.cameras:
                online = not _in(step, spec.offline.get(cam, []))
                snapshots = 1 if step % 40 == 7 else 0
                snap_errors = 1 if snapshots and not online else 0
                errors_total[cam] = errors_total.get(cam, 0) + snap_errors
                cf: dict[str, Any] = {
                    "online": online,
                    "events": rng.randint(0, 4) if online else 0,
                    "last_event_age_s": round(rng.uniform(1.0, 300.0), 1),
                    "snapshot_requests": snapshots,
                    "snapshot_errors": snap_errors,
                    "snapshot_errors_total": errors_total[cam],
                }
                if online:
                    cf["clock_skew_s"] = round(rng.uniform(-1.5, 1.5), 3)
                    cf["subscription_alive"] = step % 97 != 0
                    if snapshots:
                        cf["snapshot_latency_ms_avg"] = round(rng.uniform(80.0, 400.0), 3)
                        cf["snapshot_latency_ms_max"] = round(rng.uniform(400.0, 900.0), 3)
                samples.append(Sample(device=cam, kind="camera", fields=cf))
            yield TelemetryBatch(
                campus=spec.campus,
                edge="edge-1",
                ts=datetime.fromtimestamp(ts, UTC),
                interval_s=float(STEP_S),
                samples=samples,
            )


def alarms(now_s: int) -> list[Point]:
    """Alarms relayed to the police, as the gateway records them (``alarm_point``): real alarms
    and drills, primary and backup path, and the restores that follow some of them."""
    rng = random.Random(9)
    out = []
    for spec in CAMPUSES:
        for i in range(24):
            path = "backup" if i % 4 == 1 else "primary"
            pressed = now_s - rng.randint(120, 4 * 3600 - 120) + rng.random()
            event = Event(
                id=str(ULID()),
                campus=spec.campus,
                edge="edge-1",
                seq=i + 1,
                ts=datetime.fromtimestamp(pressed, UTC),
                kind=rng.choice(["panic", "holdup", "intrusion", "bollard_impact"]),
                severity="critical",
                device="di-guardroom",
                drill=i % 3 == 2,
            )
            to_police_s = rng.lognormvariate(math.log(0.9), 0.5) + (2.5 if path == "backup" else 0)
            received = pressed + rng.uniform(0.04, min(0.6, to_police_s))
            out.append(
                alarm_point(
                    event,
                    path,
                    datetime.fromtimestamp(received, UTC),
                    datetime.fromtimestamp(pressed + to_police_s, UTC),
                )
            )
            if i % 5 == 0:  # the button reset: a restore, relayed too (not an alarm)
                restore = event.model_copy(
                    update={
                        "id": str(ULID()),
                        "restore": True,
                        "ts": event.ts + timedelta(seconds=30),
                    }
                )
                at = restore.ts + timedelta(seconds=600)  # a slow one: must not skew the figures
                out.append(alarm_point(restore, path, restore.ts, at))
    return out


def write(influx: Influx, points: list[Point]) -> None:
    for i in range(0, len(points), 5000):
        req = urllib.request.Request(
            f"{influx.url}/write?db={influx.database}&precision=ns",
            data=encode_points(points[i : i + 5000]),
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 204


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influx]:
    """One InfluxDB 1.6 for the module (filling it once keeps the test fast)."""
    server = Influx(tmp_path_factory.mktemp("influxdb"))
    server.start()
    try:
        server.create_database()
        now_s = int(time.time())
        points = [p for batch in telemetry(now_s) for p in batch_points(batch)]
        write(server, points + alarms(now_s))
        assert server.count("camera", "online") == STEPS * 5
        yield server
    finally:
        server.stop()


# --- what Grafana does with a panel's query ---------------------------------------------------

_VAR = re.compile(r"\$(\w+)|\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)\]\]")
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
_NUMBER_PREFIX = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)")


def escape_regex(value: str) -> str:
    """``escapeRegex`` of @grafana/data."""
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def format_value(value: str | list[str]) -> str:
    """The InfluxDB data source's ``interpolateQueryExpr`` for a variable used in a regex:
    a number as it is, otherwise regex-escaped; several values as ``(a|b)``."""
    if isinstance(value, str):
        return value if _NUMBER_PREFIX.match(value) else escape_regex(value)
    escaped = [escape_regex(v) for v in value]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def duration_s(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text)
    assert m, f"bad interval {text!r}"
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def interpolate(query: str, values: dict[str, str | list[str]], interval: str) -> str:
    """Grafana's macros, then the template variables (every one of ours sits in a regex)."""
    query = query.replace("$__timeFilter", TIME_FILTER).replace("$timeFilter", TIME_FILTER)
    query = query.replace("$__interval_ms", str(int(duration_s(interval) * 1000)))
    query = query.replace("$__interval", interval)

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        assert name in values, f"unknown variable ${name} in {query!r}"
        before = query[: m.start()]
        assert re.search(r"(=~|FROM)\s*/[^/]*$", before), (
            f"${name} is used outside a regex (=~ /^${name}$/ or FROM /^${name}$/) in {query!r}"
        )
        return format_value(values[name])

    return _VAR.sub(sub, query)


def metric_find_values(series: list[dict[str, Any]]) -> list[str]:
    """The data source's metricFindQuery parser: ``value[1]`` if there is one (SHOW TAG VALUES
    answers key, value), otherwise ``value[0]``; unique."""
    out: list[str] = []
    for s in series:
        for row in s.get("values") or []:
            v = str(row[1] if len(row) > 1 and row[1] is not None else row[0])
            if v not in out:
                out.append(v)
    return out


def run(influx: Influx, query: str) -> list[dict[str, Any]]:
    """POST /query as Grafana does; the first statement's series. An error (a 400 for a query
    that does not parse, or an error in the answer) raises RuntimeError with InfluxDB's text."""
    body = urllib.parse.urlencode({"q": query, "db": influx.database, "epoch": "ms"}).encode()
    req = urllib.request.Request(f"{influx.url}/query", data=body, method="POST")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"HTTP {e.code}: {e.read().decode(errors='replace')}") from None
    if "error" in answer:
        raise RuntimeError(answer["error"])
    results = answer.get("results") or [{}]
    if "error" in results[0]:
        raise RuntimeError(results[0]["error"])
    series: list[dict[str, Any]] = results[0].get("series") or []
    return series


def empty_columns(series: list[dict[str, Any]]) -> list[str]:
    """Columns that are null in every row of every series (a misspelt field reads as null)."""
    filled: dict[str, bool] = {}
    for s in series:
        for i, col in enumerate(s["columns"]):
            has = any(row[i] is not None for row in s.get("values") or [])
            filled[col] = filled.get(col, False) or has
    return [c for c, has in filled.items() if not has]


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from all_panels(p.get("panels") or [])  # panels inside collapsed rows


def variable_sets(influx: Influx, dash: dict[str, Any]) -> Iterator[dict[str, str | list[str]]]:
    """Every combination of the dashboard's variable values, each variable's options from its
    own query with the earlier variables filled in; multi-value variables also as "All"."""
    variables = dash.get("templating", {}).get("list", [])

    def expand(i: int, chosen: dict[str, str | list[str]]) -> Iterator[dict[str, str | list[str]]]:
        if i == len(variables):
            yield dict(chosen)
            return
        var = variables[i]
        name = var["name"]
        if var["type"] == "datasource":
            assert var["query"] == "influxdb"
            assert var["current"]["value"] == DATASOURCE_UID
            yield from expand(i + 1, {**chosen, name: DATASOURCE_UID})
            return
        assert var["type"] == "query", f"{dash['title']}: variable {name}: unexpected type"
        q = var["query"] if isinstance(var["query"], str) else var["query"]["query"]
        expanded = interpolate(q, chosen, DEFAULT_INTERVAL)
        try:
            options = metric_find_values(run(influx, expanded))
        except RuntimeError as e:
            pytest.fail(f"{dash['title']}: variable ${name}: {expanded}: {e}")
        if var.get("regex"):
            options = [o for o in options if re.search(var["regex"], o)]
        if var.get("sort") in (1, 3, 5):
            options.sort()
        assert options, (
            f"{dash['title']}: variable ${name} has no values: {expanded} (with {chosen})"
        )
        choices: list[str | list[str]] = list(options[:MAX_VALUES_PER_VARIABLE])
        if var.get("multi") or var.get("includeAll"):
            choices.append(options)  # "All" (no custom all value): every option
        for value in choices:
            yield from expand(i + 1, {**chosen, name: value})

    yield from expand(0, {})


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


# --- the tests ----------------------------------------------------------------------------------


def test_the_four_dashboards_are_there() -> None:
    assert {p.stem for p in DASHBOARDS} == {
        "district-overview",
        "campus-detail",
        "device-detail",
        "alarm-latency",
    }


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_structure(path: Path) -> None:
    dash = load(path)
    title = dash["title"]
    assert dash["uid"] and len(dash["uid"]) <= 40
    assert dash.get("id") is None, f"{title}: provisioned dashboards carry no numeric id"
    assert dash["schemaVersion"] >= 36
    ids = [p["id"] for p in all_panels(dash["panels"])]
    assert len(ids) == len(set(ids)), f"{title}: duplicate panel ids"
    var_names = {v["name"] for v in dash["templating"]["list"]}
    assert "datasource" in var_names
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}"
            assert v["refresh"] in (1, 2), f"{title}: ${v['name']} is never refreshed"
    for panel in all_panels(dash["panels"]):
        if panel["type"] == "row":
            continue
        where = f"{title}: panel {panel.get('title')!r}"
        assert panel.get("title"), f"{title}: a panel without a title"
        assert panel.get("gridPos"), f"{where}: no gridPos"
        assert panel.get("targets"), f"{where} has no query"
        assert panel["datasource"] == {"type": "influxdb", "uid": "${datasource}"}, where
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", where
            assert t.get("rawQuery") is True and t.get("query"), f"{where}: not a raw InfluxQL"
            q = t["query"]
            if "GROUP BY time(" in q:
                assert "GROUP BY time($__interval)" in q, f"{where}: fixed interval in {q}"
                assert "fill(" in q, f"{where}: GROUP BY time without fill() in {q}"
            if not q.lstrip().upper().startswith("SHOW"):
                assert "$timeFilter" in q or "now()" in q, f"{where}: no time filter in {q}"
            for tag in re.findall(r"\$tag_(\w+)", t.get("alias", "")):
                assert f'"{tag}"' in q.split("GROUP BY")[-1], (
                    f"{where}: alias uses $tag_{tag}, which the query does not group by"
                )


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_every_panel_query_returns_data(filled: Influx, path: Path) -> None:
    dash = load(path)
    title = dash["title"]
    failures: list[str] = []
    runs = 0
    for values in variable_sets(filled, dash):
        shown = {k: v for k, v in values.items() if k != "datasource"}
        for panel in all_panels(dash["panels"]):
            if panel["type"] == "row":
                continue
            interval = DEFAULT_INTERVAL
            if panel.get("interval") and duration_s(panel["interval"]) > duration_s(interval):
                interval = panel["interval"]  # a panel's min interval raises $__interval
            for t in panel["targets"]:
                q = interpolate(t["query"], values, interval)
                where = f"{title}: panel {panel['title']!r} ({t['refId']}) with {shown}:\n  {q}"
                runs += 1
                try:
                    series = run(filled, q)
                except RuntimeError as e:
                    failures.append(f"{where}\n  -> InfluxDB error: {e}")
                    continue
                if not any(s.get("values") for s in series):
                    failures.append(f"{where}\n  -> no series")
                    continue
                empty = empty_columns(series)
                if empty:
                    failures.append(f"{where}\n  -> only nulls in {', '.join(empty)}")
                for tag in re.findall(r"\$tag_(\w+)", t.get("alias", "")):
                    if not all(tag in (s.get("tags") or {}) for s in series):
                        failures.append(f"{where}\n  -> series without tag {tag!r} (alias)")
    assert runs, f"{title}: nothing was run"
    assert not failures, "\n".join(failures)


def test_offline_now_panels_see_what_is_offline(filled: Influx) -> None:
    """The "now" panels name exactly the devices whose last report says offline."""
    dash = load(ROOT / "dashboards/district-overview.json")
    panel = next(
        p for p in dash["panels"] if p["title"] == "Devices offline now" and p["type"] == "table"
    )
    q = interpolate(panel["targets"][0]["query"], {}, DEFAULT_INTERVAL)
    got = {(s["tags"]["campus"], s["tags"]["device"]) for s in run(filled, q)}
    assert got == {("dx-xinghua-ps", "di-gate"), ("dx-huangcun-kg", "cam-yard")}


def test_online_ratio_reflects_the_outage(filled: Influx) -> None:
    dash = load(ROOT / "dashboards/district-overview.json")
    panel = next(p for p in dash["panels"] if p["title"] == "Online ratio per campus")
    # 5-minute buckets: a 20-minute outage covers at least three of them whole, wherever the
    # buckets fall (with 30-minute buckets it could be split 10/10 across two: ratio 0.67).
    q = interpolate(panel["targets"][0]["query"], {}, "5m")
    ratios = {
        (s["name"], s["tags"]["campus"]): [v[1] for v in s["values"] if v[1] is not None]
        for s in run(filled, q)
    }
    # gate-plc, the only bollard controller of dx-huangcun-kg, was offline for 20 minutes
    plc = ratios[("bollard_controller", "dx-huangcun-kg")]
    assert min(plc) == 0.0 and max(plc) == 1.0
    assert all(0.0 <= r <= 1.0 for rs in ratios.values() for r in rs)


def test_interpolation_is_grafanas() -> None:
    q = 'SELECT 1 FROM "x" WHERE "device" =~ /^$device$/ AND "campus" =~ /^${campus}$/ AND $timeFilter GROUP BY time($__interval)'
    out = interpolate(q, {"device": "cam.guardroom", "campus": ["a-1", "b/2"]}, "1m")
    assert out == (
        'SELECT 1 FROM "x" WHERE "device" =~ /^cam\\.guardroom$/ AND "campus" =~ '
        "/^(a-1|b\\/2)$/ AND time >= now() - 6h GROUP BY time(1m)"
    )
    with pytest.raises(AssertionError, match="outside a regex"):
        interpolate("SELECT 1 FROM x WHERE campus = '$campus'", {"campus": "a"}, "1m")
    assert metric_find_values(
        [
            {"columns": ["key", "value"], "values": [["device", "b"], ["device", "a"]]},
            {"columns": ["key", "value"], "values": [["device", "a"]]},
        ]
    ) == ["b", "a"]


def test_alarm_figures_leave_out_drills_and_restores(filled: Influx) -> None:
    """24 alarms per campus, every third a drill; restores (slow, 600 s) are relayed too but
    must not count as alarms or skew the time to police."""
    dash = load(ROOT / "dashboards/district-overview.json")
    relayed = next(p for p in dash["panels"] if p["title"] == "Alarms relayed")
    counts = {
        t["alias"]: run(filled, interpolate(t["query"], {}, DEFAULT_INTERVAL))[0]["values"][0][1]
        for t in relayed["targets"]
    }
    assert counts == {"alarms": 2 * 16, "drills": 2 * 8}
    latency = next(p for p in dash["panels"] if p["title"] == "Time to police (real alarms)")
    series = run(filled, interpolate(latency["targets"][0]["query"], {}, DEFAULT_INTERVAL))
    row = dict(zip(series[0]["columns"], series[0]["values"][0], strict=True))
    assert 0 < row["p50"] <= row["p95"] <= row["max"] < 60_000
