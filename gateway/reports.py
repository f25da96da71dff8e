"""Uptime and compliance reports: availability per device, campus and district.

The way professional monitoring computes it (and how the education commission reads it):

- A device's **period** is the report range from the moment the centre first heard of it.
- **Maintenance windows** (planned work on a campus or one device) are cut out of the period
  and out of any outage: planned downtime is not unavailability.
- **Downtime** is the union of the device's outages inside what is left; **availability** =
  1 - downtime / (period - maintenance).
- **MTTR** = mean duration of the outages that ended in the range; **MTBF** = up time / number
  of failures (outages that began in the range). An outage still open at the end of the range
  counts up to the end.
- A campus' and the district's availability is the device-time-weighted mean (total up time over
  total counted time), so a campus with many devices weighs more than one with a few. The campus
  edge's own link is one of its "devices" (kind ``edge``).

The computation is pure (no I/O) and property-tested; :mod:`gateway.app` feeds it from the store.
"""

from __future__ import annotations

import csv
import html
import io
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

Interval = tuple[datetime, datetime]


def clip(iv: tuple[datetime, datetime | None], lo: datetime, hi: datetime) -> Interval | None:
    """``iv`` cut to ``[lo, hi)``; an open end is ``hi``; None if nothing is left."""
    start, end = iv
    s, e = max(start, lo), min(end or hi, hi)
    return (s, e) if e > s else None


def union(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def subtract(intervals: Sequence[Interval], holes: Sequence[Interval]) -> list[Interval]:
    """``intervals`` minus ``holes`` (both already unions: sorted, disjoint)."""
    out: list[Interval] = []
    for s, e in intervals:
        cur = s
        for hs, he in holes:
            if he <= cur or hs >= e:
                continue
            if hs > cur:
                out.append((cur, hs))
            cur = max(cur, he)
            if cur >= e:
                break
        if cur < e:
            out.append((cur, e))
    return out


def seconds(intervals: Iterable[Interval]) -> float:
    return sum((e - s).total_seconds() for s, e in intervals)


@dataclass(frozen=True, slots=True)
class Outage:
    start: datetime
    end: datetime | None  # None: still down at the end of the range
    duration_s: float  # inside the range, maintenance cut out
    cause: str


@dataclass(frozen=True, slots=True)
class DeviceUptime:
    campus: str
    device: str
    kind: str
    period_s: float
    maintenance_s: float
    downtime_s: float
    availability: float | None  # None: no counted time (all maintenance, or not seen yet)
    failures: int
    mttr_s: float | None
    mtbf_s: float | None
    outages: list[Outage] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Aggregate:
    name: str
    devices: int
    counted_s: float
    downtime_s: float
    availability: float | None
    failures: int
    devices_below_target: int


@dataclass(frozen=True, slots=True)
class OutageInput:
    campus: str
    device: str
    start: datetime
    end: datetime | None
    cause: str = ""


@dataclass(frozen=True, slots=True)
class WindowInput:
    campus: str
    device: str | None  # None: the whole campus
    start: datetime
    end: datetime | None


def device_uptime(
    campus: str,
    device: str,
    kind: str,
    first_seen: datetime,
    start: datetime,
    end: datetime,
    outages: Sequence[OutageInput],
    windows: Sequence[WindowInput],
) -> DeviceUptime:
    lo = max(start, first_seen)
    period = (lo, end) if end > lo else None
    if period is None:
        return DeviceUptime(campus, device, kind, 0.0, 0.0, 0.0, None, 0, None, None)
    maint = union(c for w in windows if (c := clip((w.start, w.end), lo, end)))
    down_raw = [(o, c) for o in outages if (c := clip((o.start, o.end), lo, end))]
    down = subtract(union(c for _, c in down_raw), maint)
    period_s = (end - lo).total_seconds()
    maint_s = seconds(maint)
    down_s = seconds(down)
    counted = period_s - maint_s
    listed: list[Outage] = []
    ended: list[float] = []
    failures = 0
    for o, c in down_raw:
        dur = seconds(subtract([c], maint))
        if dur <= 0:
            continue  # entirely inside planned maintenance: not a failure
        listed.append(Outage(o.start, o.end, dur, o.cause))
        if o.start >= lo:
            failures += 1
        if o.end is not None and o.end <= end:
            ended.append(dur)
    # Times are whole microseconds: round away float dust (a device down all the time it was
    # counted has availability 0, not 1.9e-16).
    up_s = max(0.0, round(counted - down_s, 6))
    return DeviceUptime(
        campus=campus,
        device=device,
        kind=kind,
        period_s=period_s,
        maintenance_s=maint_s,
        downtime_s=down_s,
        availability=(up_s / counted) if counted > 0 else None,
        failures=failures,
        mttr_s=statistics.fmean(ended) if ended else None,
        mtbf_s=(up_s / failures) if failures else None,
        outages=listed,
    )


def aggregate(name: str, devices: Sequence[DeviceUptime], target: float) -> Aggregate:
    counted = sum(d.period_s - d.maintenance_s for d in devices)
    down = sum(d.downtime_s for d in devices)
    return Aggregate(
        name=name,
        devices=len(devices),
        counted_s=counted,
        downtime_s=down,
        availability=(max(0.0, round(counted - down, 6)) / counted) if counted > 0 else None,
        failures=sum(d.failures for d in devices),
        devices_below_target=sum(
            1 for d in devices if d.availability is not None and d.availability < target
        ),
    )


@dataclass(frozen=True, slots=True)
class UptimeReport:
    start: datetime
    end: datetime
    target: float
    district: Aggregate
    campuses: list[Aggregate]
    devices: list[DeviceUptime]


def uptime_report(
    start: datetime,
    end: datetime,
    seen: Sequence[tuple[str, str, str, datetime]],
    outages: Sequence[OutageInput],
    windows: Sequence[WindowInput],
    target: float = 0.99,
) -> UptimeReport:
    """``seen``: (campus, device, kind, first_seen) of every device to report on."""
    by_dev: dict[tuple[str, str], list[OutageInput]] = {}
    for o in outages:
        by_dev.setdefault((o.campus, o.device), []).append(o)
    campus_w: dict[str, list[WindowInput]] = {}
    dev_w: dict[tuple[str, str], list[WindowInput]] = {}
    for w in windows:
        if w.device is None:
            campus_w.setdefault(w.campus, []).append(w)
        else:
            dev_w.setdefault((w.campus, w.device), []).append(w)
    devices = [
        device_uptime(
            campus,
            device,
            kind,
            first,
            start,
            end,
            by_dev.get((campus, device), []),
            campus_w.get(campus, []) + dev_w.get((campus, device), []),
        )
        for campus, device, kind, first in sorted(seen)
    ]
    per_campus: dict[str, list[DeviceUptime]] = {}
    for d in devices:
        per_campus.setdefault(d.campus, []).append(d)
    return UptimeReport(
        start=start,
        end=end,
        target=target,
        district=aggregate("district", devices, target),
        campuses=[aggregate(c, ds, target) for c, ds in sorted(per_campus.items())],
        devices=devices,
    )


# --- compliance ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlarmInput:
    kind: str
    drill: bool
    restore: bool
    edge_ts: datetime
    police_at: datetime | None
    guard_ack_at: datetime | None
    state: str


@dataclass(frozen=True, slots=True)
class Compliance:
    campus: str
    start: datetime
    end: datetime
    availability: float | None
    devices: int
    devices_below_target: int
    alarms: int
    alarms_to_police: int
    police_share: float | None
    to_police_p50_s: float | None
    to_police_p95_s: float | None
    to_police_max_s: float | None
    guard_ack_p50_s: float | None
    guard_acknowledged: int
    drill_alarms: int
    drill_days: list[str]  # days with a drill (from the drill records when given)
    drills_held: int = 0  # drills that ended in the period (drill records)
    drills_required: str = ""  # monthly, quarterly, <N>d (drills.frequency of its type)


@dataclass(frozen=True, slots=True)
class DrillInput:
    """A drill that ended in the period: its kind and its day in the report's time zone."""

    kind: str
    day: str


def _q(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def compliance(
    campus: str,
    start: datetime,
    end: datetime,
    uptime: Aggregate,
    alarms: Sequence[AlarmInput],
    drills: Sequence[DrillInput] | None = None,
    required: str = "",
) -> Compliance:
    """The monthly page for the education commission: is the campus' alarm path sound, and
    were its drills held? ``drills`` (the drill records) give the drills held and their days;
    without them the days are those of drill alarms (before drill records existed)."""
    # Periodic tests and self-tests have alarm records too (for their police answer), and so
    # has a missed periodic test (for the technician): never alarms here.
    alarms = [a for a in alarms if a.kind not in ("test", "test_missed")]
    real = [a for a in alarms if not a.drill and not a.restore]
    delivered = [a for a in real if a.police_at is not None]
    to_police = [(a.police_at - a.edge_ts).total_seconds() for a in delivered if a.police_at]
    acked = [a for a in real if a.guard_ack_at is not None]
    to_ack = [(a.guard_ack_at - a.edge_ts).total_seconds() for a in acked if a.guard_ack_at]
    drill_alarms = [a for a in alarms if a.drill and not a.restore]
    return Compliance(
        campus=campus,
        start=start,
        end=end,
        availability=uptime.availability,
        devices=uptime.devices,
        devices_below_target=uptime.devices_below_target,
        alarms=len(real),
        alarms_to_police=len(delivered),
        police_share=(len(delivered) / len(real)) if real else None,
        to_police_p50_s=_q(to_police, 0.5),
        to_police_p95_s=_q(to_police, 0.95),
        to_police_max_s=max(to_police) if to_police else None,
        guard_ack_p50_s=_q(to_ack, 0.5),
        guard_acknowledged=len(acked),
        drill_alarms=len(drill_alarms),
        drill_days=sorted(
            {d.day for d in drills}
            if drills is not None
            else {f"{a.edge_ts:%Y-%m-%d}" for a in drill_alarms}
        ),
        drills_held=len(drills) if drills is not None else 0,
        drills_required=required,
    )


def compliance_csv(rows: Sequence[Compliance]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "campus",
            "from",
            "to",
            "availability_pct",
            "devices",
            "devices_below_target",
            "alarms",
            "alarms_to_police",
            "police_share_pct",
            "to_police_p50_s",
            "to_police_p95_s",
            "guard_ack_p50_s",
            "drills_held",
            "drills_required",
            "drill_days",
            "drill_alarms",
        ]
    )

    def num(v: float | None, scale: float = 1.0, digits: int = 3) -> str:
        return "" if v is None else f"{v * scale:.{digits}f}"

    for c in rows:
        w.writerow(
            [
                c.campus,
                c.start.isoformat(),
                c.end.isoformat(),
                num(c.availability, 100, 4),
                c.devices,
                c.devices_below_target,
                c.alarms,
                c.alarms_to_police,
                num(c.police_share, 100, 2),
                num(c.to_police_p50_s),
                num(c.to_police_p95_s),
                num(c.guard_ack_p50_s),
                c.drills_held,
                c.drills_required,
                " ".join(c.drill_days),
                c.drill_alarms,
            ]
        )
    return buf.getvalue()


def compliance_html(rows: Sequence[Compliance], names: dict[str, str], title: str) -> str:
    def secs(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f} s"

    parts = [f"<h1>{html.escape(title)}</h1>"]
    for c in rows:
        parts.append(f"<h2>{html.escape(names.get(c.campus) or c.campus)}</h2>")
        parts.append(f"<p>{c.start:%Y-%m-%d} – {c.end:%Y-%m-%d} (UTC)</p>")
        parts.append(
            _table(
                ["measure", "value"],
                [
                    ["device availability (maintenance excluded)", pct(c.availability)],
                    ["devices / below target", f"{c.devices} / {c.devices_below_target}"],
                    ["alarms (not drills)", str(c.alarms)],
                    [
                        "delivered to the police",
                        f"{c.alarms_to_police} ({pct(c.police_share)})",
                    ],
                    [
                        "time to police p50 / p95",
                        f"{secs(c.to_police_p50_s)} / {secs(c.to_police_p95_s)}",
                    ],
                    ["time to guard acknowledgement p50", secs(c.guard_ack_p50_s)],
                    [
                        "drills held"
                        + (f" (required {c.drills_required})" if c.drills_required else ""),
                        f"{c.drills_held} ({', '.join(c.drill_days) or 'none'})",
                    ],
                    ["alarms during drills (sent as tests)", str(c.drill_alarms)],
                ],
            )
        )
    return _PAGE.format(lang="en", title=html.escape(title), body="".join(parts))


# --- output -----------------------------------------------------------------------------


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.3f} %"


def hms(secs: float | None) -> str:
    if secs is None:
        return "n/a"
    return str(timedelta(seconds=round(secs)))


def uptime_csv(rep: UptimeReport) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "campus",
            "device",
            "kind",
            "availability_pct",
            "downtime_s",
            "maintenance_s",
            "period_s",
            "failures",
            "mttr_s",
            "mtbf_s",
        ]
    )
    for d in rep.devices:
        w.writerow(
            [
                d.campus,
                d.device,
                d.kind,
                "" if d.availability is None else f"{d.availability * 100:.4f}",
                f"{d.downtime_s:.0f}",
                f"{d.maintenance_s:.0f}",
                f"{d.period_s:.0f}",
                d.failures,
                "" if d.mttr_s is None else f"{d.mttr_s:.0f}",
                "" if d.mtbf_s is None else f"{d.mtbf_s:.0f}",
            ]
        )
    return buf.getvalue()


_PAGE = """<!doctype html><html lang="{lang}"><head><meta charset="utf-8">
<title>{title}</title><style>
body{{font-family:"Noto Sans CJK SC","Microsoft YaHei",sans-serif;margin:2em;color:#111}}
table{{border-collapse:collapse;margin:1em 0;width:100%}}
th,td{{border:1px solid #999;padding:.3em .5em;text-align:left}}
td.n{{text-align:right}} .bad{{color:#b00;font-weight:bold}}
@media print{{body{{margin:0}} h1{{font-size:16pt}}}}
</style></head><body>{body}</body></html>"""


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = []
    for r in rows:
        tds = "".join(
            f'<td class="n">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
            for i, c in enumerate(r)
        )
        trs.append(f"<tr>{tds}</tr>")
    return f"<table><tr>{th}</tr>{''.join(trs)}</table>"


def uptime_html(rep: UptimeReport, title: str) -> str:
    def cls(av: float | None) -> str:
        text = pct(av)
        return f'<span class="bad">{text}</span>' if av is not None and av < rep.target else text

    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{rep.start:%Y-%m-%d %H:%M} – {rep.end:%Y-%m-%d %H:%M} UTC · "
        f"target {pct(rep.target)} · maintenance windows excluded</p>",
        f"<p>District: <b>{cls(rep.district.availability)}</b> over {rep.district.devices} "
        f"devices, {rep.district.failures} failures, "
        f"{rep.district.devices_below_target} below target</p>",
        _table(
            ["campus", "devices", "availability", "downtime", "failures", "below target"],
            (
                [
                    html.escape(c.name),
                    str(c.devices),
                    cls(c.availability),
                    hms(c.downtime_s),
                    str(c.failures),
                    str(c.devices_below_target),
                ]
                for c in rep.campuses
            ),
        ),
        "<h2>Devices</h2>",
        _table(
            ["campus", "device", "availability", "downtime", "failures", "MTTR", "MTBF"],
            (
                [
                    html.escape(d.campus),
                    html.escape(d.device),
                    cls(d.availability),
                    hms(d.downtime_s),
                    str(d.failures),
                    hms(d.mttr_s),
                    hms(d.mtbf_s),
                ]
                for d in sorted(rep.devices, key=lambda d: (d.availability or 1.0, d.campus))
            ),
            numeric_from=2,
        ),
    ]
    outages = [(d, o) for d in rep.devices for o in d.outages]
    if outages:
        body.append("<h2>Outages</h2>")
        body.append(
            _table(
                ["campus", "device", "from", "to", "duration", "cause"],
                (
                    [
                        html.escape(d.campus),
                        html.escape(d.device),
                        f"{o.start:%Y-%m-%d %H:%M:%S}",
                        f"{o.end:%Y-%m-%d %H:%M:%S}" if o.end else "ongoing",
                        hms(o.duration_s),
                        html.escape(o.cause),
                    ]
                    for d, o in sorted(outages, key=lambda x: x[1].start)
                ),
                numeric_from=4,
            )
        )
    return _PAGE.format(lang="en", title=html.escape(title), body="".join(body))
