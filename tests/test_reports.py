"""Availability arithmetic: pure, property-tested, and checked on cases a person can verify."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from gateway import reports
from gateway.reports import OutageInput, WindowInput

T0 = datetime(2026, 11, 1, tzinfo=UTC)
DAY = timedelta(days=1)
H = timedelta(hours=1)


def up(outages: list[OutageInput], windows: list[WindowInput] = [], first: datetime = T0):  # noqa: B006
    return reports.device_uptime("c1", "d1", "device", first, T0, T0 + DAY, outages, windows)


def test_one_hour_down_in_a_day() -> None:
    d = up([OutageInput("c1", "d1", T0 + 2 * H, T0 + 3 * H, "timeout")])
    assert d.downtime_s == 3600 and d.failures == 1
    assert d.availability == 23 / 24
    assert d.mttr_s == 3600 and d.mtbf_s == 23 * 3600
    assert [o.cause for o in d.outages] == ["timeout"]


def test_maintenance_is_cut_out_of_the_period_and_the_outage() -> None:
    o = OutageInput("c1", "d1", T0 + 2 * H, T0 + 4 * H)
    w = WindowInput("c1", None, T0 + 3 * H, T0 + 5 * H)
    d = up([o], [w])
    assert d.maintenance_s == 2 * 3600
    assert d.downtime_s == 3600  # the hour before the window began
    assert d.availability == 21 / 22


def test_an_outage_inside_maintenance_is_not_a_failure() -> None:
    o = OutageInput("c1", "d1", T0 + 3 * H, T0 + 4 * H)
    d = up([o], [WindowInput("c1", "d1", T0 + 2 * H, T0 + 5 * H)])
    assert d.downtime_s == 0 and d.failures == 0 and d.outages == [] and d.availability == 1


def test_an_open_outage_counts_to_the_end_and_has_no_repair_time_yet() -> None:
    d = up([OutageInput("c1", "d1", T0 + 20 * H, None)])
    assert d.downtime_s == 4 * 3600 and d.mttr_s is None and d.failures == 1


def test_the_period_starts_when_the_device_was_first_seen() -> None:
    d = up([OutageInput("c1", "d1", T0 + 18 * H, T0 + 21 * H)], first=T0 + 12 * H)
    assert d.period_s == 12 * 3600 and d.availability == 0.75


def test_an_outage_that_began_before_the_range_is_clipped_and_not_a_new_failure() -> None:
    d = up([OutageInput("c1", "d1", T0 - 5 * H, T0 + 1 * H)])
    assert d.downtime_s == 3600 and d.failures == 0 and d.mttr_s == 3600


def test_campus_and_district_are_device_time_weighted() -> None:
    seen = [("a", "d1", "device", T0), ("a", "d2", "device", T0), ("b", "d1", "device", T0)]
    rep = reports.uptime_report(
        T0, T0 + DAY, seen, [OutageInput("a", "d1", T0, T0 + 12 * H)], [], target=0.99
    )
    by = {c.name: c for c in rep.campuses}
    assert by["a"].availability == 0.75 and by["a"].devices_below_target == 1
    assert by["b"].availability == 1.0
    assert rep.district.availability == 1 - 0.5 / 3
    assert "d1" in reports.uptime_csv(rep) and "<table>" in reports.uptime_html(rep, "t")


times = st.integers(min_value=-2 * 86400, max_value=3 * 86400).map(
    lambda s: T0 + timedelta(seconds=s)
)
spans = st.tuples(times, st.one_of(st.none(), st.integers(1, 86400))).map(
    lambda t: (t[0], None if t[1] is None else t[0] + timedelta(seconds=t[1]))
)


@given(
    outages=st.lists(spans, max_size=8),
    windows=st.lists(spans, max_size=4),
    first=times,
)
def test_availability_is_a_share_and_downtime_fits_the_counted_time(
    outages: list[tuple[datetime, datetime | None]],
    windows: list[tuple[datetime, datetime | None]],
    first: datetime,
) -> None:
    d = up(
        [OutageInput("c1", "d1", s, e) for s, e in outages],
        [WindowInput("c1", None, s, e) for s, e in windows],
        first=first,
    )
    counted = d.period_s - d.maintenance_s
    assert 0 <= d.maintenance_s <= d.period_s <= 86400
    assert 0 <= d.downtime_s <= counted + 1e-6
    if d.availability is not None:
        assert 0 <= d.availability <= 1
        assert abs(d.availability - (counted - d.downtime_s) / counted) < 1e-9
    assert d.failures <= len(outages)
    # Listed outage durations add up to at least the union's downtime (they may overlap).
    assert sum(o.duration_s for o in d.outages) >= d.downtime_s - 1e-6


@given(st.lists(spans, max_size=10))
def test_union_is_sorted_disjoint_and_covers_the_same_time(
    ivs: list[tuple[datetime, datetime | None]],
) -> None:
    clipped = [c for iv in ivs if (c := reports.clip(iv, T0 - 2 * DAY, T0 + 4 * DAY))]
    u = reports.union(clipped)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(u))
    # Every instant in an input is in the union, and the union adds nothing.
    for s, e in clipped:
        assert any(us <= s and e <= ue for us, ue in u)
    assert reports.seconds(u) <= sum(reports.seconds([c]) for c in clipped) + 1e-6


def test_tests_and_missed_tests_are_never_counted_as_alarms() -> None:
    """Periodic tests, self-tests and a missed periodic test have alarm records (for their
    police answer, for the technician) but the commission's page counts real alarms only."""
    start = datetime(2026, 10, 1, tzinfo=UTC)
    end = datetime(2026, 11, 1, tzinfo=UTC)
    at = start + timedelta(days=3)
    agg = reports.aggregate("c", [], 0.99)

    def alarm(kind: str) -> reports.AlarmInput:
        return reports.AlarmInput(kind, False, False, at, at + timedelta(seconds=1), None, "closed")

    comp = reports.compliance(
        "c", start, end, agg, [alarm("test"), alarm("test_missed"), alarm("panic")]
    )
    assert comp.alarms == 1 and comp.alarms_to_police == 1
