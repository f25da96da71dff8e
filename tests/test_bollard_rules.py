"""Bollard rules of edge/bollards.py: state machine, alarms, schedule, command policy, outcomes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contract.bollard_config import (
    BollardRulesConfig,
    CommandPolicyConfig,
    DateRange,
    ScheduleConfig,
    TermCalendar,
)
from drivers.modbus.bollard_model import BollardCommand, BollardReading
from edge.bollards import (
    BollardSignal,
    BollardState,
    BollardTracker,
    BollardView,
    CommandOutcome,
    CommandPolicy,
    CommandRequest,
    ConfirmRequest,
    ScheduleWatch,
)

S = BollardState
C = BollardCommand


def rd(raised: bool | None = False, lowered: bool | None = False, **kw: Any) -> BollardReading:
    return BollardReading(raised_limit=raised, lowered_limit=lowered, **kw)


UP = rd(True, False)
DOWN = rd(False, True)
MID = rd(False, False)


def kinds(signals: list[BollardSignal]) -> list[tuple[str, bool]]:
    return [(s.kind, s.restore) for s in signals]


def states(signals: list[BollardSignal]) -> list[str]:
    return [str(s.detail["state"]) for s in signals if s.kind == "bollard_state"]


def only(signals: list[BollardSignal], kind: str) -> list[BollardSignal]:
    return [s for s in signals if s.kind == kind]


def trouble_codes(signals: list[BollardSignal], restore: bool = False) -> list[str]:
    return [str(s.detail["code"]) for s in signals if s.kind == "trouble" and s.restore == restore]


def at(start: BollardReading, **cfg: Any) -> BollardTracker:
    t = BollardTracker(BollardRulesConfig(**cfg))
    t.update(start, 0.0)
    return t


# --- state machine ------------------------------------------------------------------------


def test_starts_offline_and_first_reading_sets_position_without_judgement() -> None:
    t = BollardTracker()
    assert t.state is S.OFFLINE and t.position is None
    out = t.update(DOWN, 0.0)
    assert states(out) == ["down"]
    assert out[0].detail["previous"] == "offline"
    assert t.position == "down" and t.troubles == {}
    assert states(BollardTracker().update(UP, 0.0)) == ["up"]


def test_first_reading_between_limits_is_stopped_midway() -> None:
    assert states(BollardTracker().update(MID, 0.0)) == ["stopped_midway"]


def test_raise_down_moving_up_up_with_confirmed_elapsed_time() -> None:
    t = at(DOWN)
    assert t.command_sent(C.RAISE, 1.0, "c1") == []
    assert t.update(DOWN, 1.2) == []  # the pump starts: still down, honestly
    assert states(t.update(MID, 2.0)) == ["moving_up"]
    out = t.update(UP, 7.5)
    assert states(out) == ["up"]
    [done] = only(out, "position_confirmed")
    assert done.detail == {
        "command": "raise",
        "command_id": "c1",
        "position": "up",
        "elapsed_s": 6.5,
    }
    assert t.pending is None and t.troubles == {}


def test_lower_up_moving_down_down() -> None:
    t = at(UP)
    t.command_sent(C.LOWER, 0.0, "c2")
    assert states(t.update(MID, 1.0)) == ["moving_down"]
    out = t.update(DOWN, 4.0)
    assert states(out) == ["down"]
    assert only(out, "position_confirmed")[0].detail["elapsed_s"] == 4.0


def test_reported_direction_wins_at_a_limit() -> None:
    t = at(UP)
    t.command_sent(C.LOWER, 0.0)
    # Leaving the top: the controller says moving down while the raised limit is still made.
    assert states(t.update(rd(True, False, moving_down=True), 0.2)) == ["moving_down"]
    assert states(t.update(rd(False, True, moving_down=False), 3.0)) == ["down"]


def test_stop_midway_then_raise_again() -> None:
    t = at(DOWN)
    t.command_sent(C.RAISE, 0.0, "r1")
    t.update(rd(False, False, moving_up=True), 1.0)
    assert t.state is S.MOVING_UP
    [superseded] = t.command_sent(C.STOP, 1.5, "s1")
    assert superseded.kind == "command_failed"
    assert superseded.detail["command_id"] == "r1"
    assert "superseded by stop" in str(superseded.detail["reason"])
    out = t.update(rd(False, False, moving_up=False, moving_down=False), 1.8)
    assert states(out) == ["stopped_midway"]
    [stopped] = only(out, "position_confirmed")
    assert stopped.detail["command"] == "stop" and stopped.detail["position"] == "between"
    # Standing still midway is not a fault, and stays stopped_midway.
    assert t.update(MID, 5.0) == []
    t.command_sent(C.RAISE, 6.0, "r2")
    assert states(t.update(rd(False, False, moving_up=True), 6.5)) == ["moving_up"]
    out = t.update(UP, 9.0)
    assert states(out) == ["up"] and only(out, "position_confirmed")


def test_stop_that_does_not_stop_is_a_fault() -> None:
    t = at(DOWN, stop_time=1.0)
    t.command_sent(C.RAISE, 0.0)
    t.update(rd(False, False, moving=True), 0.5)
    t.command_sent(C.STOP, 1.0, "s")
    assert t.update(rd(False, False, moving=True), 1.5) == []
    out = t.update(rd(False, False, moving=True), 2.5)
    assert only(out, "command_failed")[0].detail["command_id"] == "s"
    assert trouble_codes(out) == ["travel_timeout"]
    assert t.state is S.FAULT


def test_explicit_no_motion_with_a_command_is_stopped_midway_not_moving() -> None:
    t = at(MID)
    t.command_sent(C.RAISE, 0.0)
    assert t.update(rd(False, False, moving=False), 0.5) == []  # honest: it is not moving
    assert t.state is S.STOPPED_MIDWAY
    assert states(t.update(rd(False, False, moving=True), 1.0)) == ["moving_up"]


def test_moving_flag_without_direction_uses_the_limit_it_left() -> None:
    t = at(UP)
    # A local operation at the gate: the controller moves and says so; not a fault.
    out = t.update(rd(False, False, moving=True), 1.0)
    assert states(out) == ["moving_down"]
    assert trouble_codes(out) == []
    assert states(t.update(rd(False, True, moving=False), 4.0)) == ["down"]
    assert t.troubles == {}


def test_maintenance_and_manual_mode() -> None:
    t = at(UP)
    t.command_sent(C.LOWER, 0.0, "c")
    out = t.update(rd(True, False, maintenance=True), 0.5)
    assert states(out) == ["maintenance"]
    assert only(out, "command_failed")[0].detail["reason"] == "maintenance or manual mode"
    # The technician moves it by hand: never "moved without command".
    assert t.update(rd(False, False, manual_mode=True), 2.0) == []
    assert t.update(rd(False, True, manual_mode=True), 4.0) == []
    out = t.update(DOWN, 5.0)
    assert states(out) == ["down"] and trouble_codes(out) == []
    assert t.update(DOWN, 6.0) == []


def test_maintenance_clears_latched_faults() -> None:
    t = at(UP)
    t.update(MID, 1.0)  # sank by itself
    assert t.faults == ["moved_without_command"]
    out = t.update(rd(False, False, maintenance=True), 2.0)
    assert trouble_codes(out, restore=True) == ["moved_without_command"]
    assert t.state is S.MAINTENANCE


def test_controller_fault_code() -> None:
    t = at(UP)
    out = t.update(rd(True, False, fault_code=7), 1.0)
    assert states(out) == ["fault"]
    assert "controller fault code 7" in str(out[-1].detail["reason"])
    [tr] = only(out, "trouble")
    assert tr.detail["fault_code"] == 7 and tr.detail["fault"] is True
    # Another code: the old one restores, the new one is reported.
    out = t.update(rd(True, False, fault_code=9), 2.0)
    assert kinds(out) == [("trouble", True), ("trouble", False)]
    assert out[1].detail["fault_code"] == 9
    assert t.update(rd(True, False, fault_code=None), 3.0) == []  # unknown: keeps the fault
    out = t.update(rd(True, False, fault_code=0), 4.0)
    assert trouble_codes(out, restore=True) == ["controller_fault"]
    assert states(out) == ["up"]


def test_contradictory_limits_are_a_fault_not_a_guess() -> None:
    t = at(UP)
    out = t.update(rd(True, True), 1.0)
    assert states(out) == ["fault"]
    assert trouble_codes(out) == ["contradictory_limits"]
    assert "contradictory limit switches" in str(out[-1].detail["reason"])
    assert t.position is None
    # Resolving is not "moved without command".
    out = t.update(UP, 2.0)
    assert trouble_codes(out, restore=True) == ["contradictory_limits"]
    assert states(out) == ["up"] and t.faults == []


def test_first_reading_contradictory() -> None:
    t = BollardTracker()
    assert states(t.update(rd(True, True), 0.0)) == ["fault"]


@pytest.mark.parametrize(
    ("start", "moved", "text"),
    [(UP, MID, "up -> between"), (DOWN, MID, "down -> between"), (MID, UP, "between -> up")],
)
def test_limit_change_without_command_is_a_fault(
    start: BollardReading, moved: BollardReading, text: str
) -> None:
    t = at(start)
    out = t.update(moved, 1.0)
    assert trouble_codes(out) == ["moved_without_command"]
    assert text in str(only(out, "trouble")[0].detail["reason"])
    assert states(out) == ["fault"]


def test_moved_without_command_stays_until_a_commanded_move_completes_in_time() -> None:
    t = at(UP)
    t.update(MID, 1.0)
    assert t.update(DOWN, 2.0) == []  # still the same fault, not a second one
    assert t.state is S.FAULT and t.position == "down"
    t.command_sent(C.RAISE, 3.0, "r")
    t.update(MID, 4.0)
    out = t.update(UP, 8.0)
    assert trouble_codes(out, restore=True) == ["moved_without_command"]
    assert states(out) == ["up"]
    assert only(out, "position_confirmed")


def test_travel_timeout_is_a_fault_and_fails_the_pending_command() -> None:
    t = at(DOWN, travel_time=10.0, margin=2.0)
    outcome = CommandOutcome()
    outcome.accepted("c1", "b1", C.RAISE, 0.0)
    t.command_sent(C.RAISE, 0.0, "c1")
    assert outcome.observe("b1", t.update(MID, 1.0), 1.0) == []
    assert outcome.observe("b1", t.update(MID, 11.9), 11.9) == []
    out = t.update(MID, 12.1)
    assert states(out) == ["fault"]
    assert trouble_codes(out) == ["travel_timeout"]
    [failed] = only(out, "command_failed")
    assert "travel timeout" in str(failed.detail["reason"])
    [result] = outcome.observe("b1", out, 12.1)
    assert result.status == "failed" and "travel timeout" in result.reason
    # Arriving late: no second fault, no "moved without command", no confirmation.
    out = t.update(UP, 14.0)
    assert only(out, "trouble") == [] and only(out, "position_confirmed") == []
    assert t.state is S.FAULT and t.position == "up"
    assert t.pending is None


def test_reset_clears_latched_faults() -> None:
    t = at(DOWN)
    t.command_sent(C.RAISE, 0.0)
    t.update(MID, 20.0)
    assert t.state is S.FAULT
    t.update(UP, 21.0)
    out = t.reset(22.0)
    assert trouble_codes(out, restore=True) == ["travel_timeout"]
    assert states(out) == ["up"]


def test_reset_keeps_present_conditions() -> None:
    t = at(rd(True, True))
    assert t.reset(1.0) == []
    assert t.state is S.FAULT


def test_efo_has_its_own_shorter_limit() -> None:
    cfg = {"travel_time": 10.0, "margin": 2.0, "efo_travel_time": 2.5, "efo_margin": 0.5}
    efo = at(DOWN, **cfg)
    efo.command_sent(C.EMERGENCY_RAISE, 0.0, "e")
    efo.update(MID, 1.0)
    out = efo.update(MID, 3.2)
    assert only(out, "command_failed")[0].detail["command"] == "emergency_raise"
    assert efo.state is S.FAULT
    normal = at(DOWN, **cfg)
    normal.command_sent(C.RAISE, 0.0)
    normal.update(MID, 1.0)
    assert normal.update(MID, 3.2) == []
    assert normal.state is S.MOVING_UP
    quick = at(DOWN, **cfg)
    quick.command_sent(C.EMERGENCY_RAISE, 0.0, "e2")
    out = quick.update(UP, 2.4)
    assert only(out, "position_confirmed")[0].detail["elapsed_s"] == 2.4


def test_efo_limit_cannot_exceed_the_normal_one() -> None:
    with pytest.raises(ValidationError, match="efo_travel_time"):
        BollardRulesConfig(travel_time=3.0, margin=0.0, efo_travel_time=5.0)


def test_raise_when_already_up_is_confirmed_at_the_next_reading() -> None:
    t = at(UP)
    t.command_sent(C.RAISE, 1.0, "c")
    out = t.update(UP, 1.1)
    assert only(out, "position_confirmed")[0].detail["elapsed_s"] == pytest.approx(0.1)


def test_offline_never_keeps_a_position_and_fails_pending_commands() -> None:
    t = at(DOWN)
    outcome = CommandOutcome()
    outcome.accepted("c", "b1", C.RAISE, 0.0)
    t.command_sent(C.RAISE, 0.0, "c")
    t.update(MID, 1.0)
    out = t.update(None, 2.0)
    assert states(out) == ["offline"]
    assert t.position is None and t.vehicle_loop is None
    assert t.view() == BollardView(S.OFFLINE, None)
    assert t.pending is None
    [r] = outcome.observe("b1", out, 2.0)
    assert r.status == "failed" and "offline" in r.reason
    assert t.update(None, 3.0) == []  # one event per change
    snap = t.snapshot()
    assert snap["state"] == "offline" and snap["position"] is None
    assert "pressure_bar" not in snap  # no stale values
    # Back: position from the reading, not judged against the one before the outage.
    out = t.update(UP, 4.0)
    assert states(out) == ["up"] and only(out, "trouble") == []


def test_snapshot_online() -> None:
    t = at(rd(True, False, pressure_bar=120.0, vehicle_loop=False))
    snap = t.snapshot()
    assert snap["state"] == "up" and snap["pressure_bar"] == 120.0
    assert snap["vehicle_loop"] is False and snap["faults"] == ""


# --- alarms and trouble -------------------------------------------------------------------


def test_impact_once_per_occurrence() -> None:
    t = at(UP)
    out = t.update(rd(True, False, impact=True), 1.0)
    assert kinds(out) == [("bollard_impact", False)]
    assert t.update(rd(True, False, impact=True), 2.0) == []
    assert only(t.update(None, 3.0), "bollard_impact") == []  # offline: no restore
    out = t.update(rd(True, False, impact=True), 4.0)
    assert only(out, "bollard_impact") == []  # the same impact, seen again after the outage
    assert t.update(rd(True, False, impact=None), 5.0) == []  # unknown is not cleared
    assert kinds(t.update(rd(True, False, impact=False), 6.0)) == [("bollard_impact", True)]
    assert kinds(t.update(rd(True, False, impact=True), 7.0)) == [("bollard_impact", False)]


@pytest.mark.parametrize(
    ("field", "bad", "good", "code"),
    [("mains_ok", False, True, "mains_lost"), ("battery_ok", False, True, "battery_low")],
)
def test_power_troubles_and_restores(field: str, bad: bool, good: bool, code: str) -> None:
    t = at(UP)
    out = t.update(rd(True, False, **{field: bad}), 1.0)
    assert trouble_codes(out) == [code]
    assert only(out, "trouble")[0].detail["fault"] is False
    assert t.state is S.UP  # a warning, not a fault
    assert t.update(rd(True, False, **{field: bad}), 2.0) == []
    assert t.update(rd(True, False, **{field: None}), 3.0) == []
    assert t.update(None, 4.0) and code in t.troubles  # offline does not restore
    out = t.update(rd(True, False, **{field: good}), 5.0)
    assert trouble_codes(out, restore=True) == [code]


def test_pressure_low_with_hysteresis() -> None:
    t = at(UP, pressure_min_bar=80.0, pressure_hysteresis_bar=5.0)
    assert t.update(rd(True, False, pressure_bar=81.0), 1.0) == []
    out = t.update(rd(True, False, pressure_bar=79.0), 2.0)
    assert trouble_codes(out) == ["pressure_low"]
    assert only(out, "trouble")[0].detail["value"] == 79.0
    assert t.update(rd(True, False, pressure_bar=82.0), 3.0) == []  # inside the band
    assert t.update(rd(True, False, pressure_bar=70.0), 4.0) == []  # still the same trouble
    out = t.update(rd(True, False, pressure_bar=85.0), 5.0)
    assert trouble_codes(out, restore=True) == ["pressure_low"]
    assert out[0].detail["value"] == 79.0  # the restore names the trouble it ends


def test_pressure_not_supervised_without_a_minimum() -> None:
    t = at(UP)
    assert t.update(rd(True, False, pressure_bar=0.5), 1.0) == []


def test_motor_overtemperature_with_hysteresis() -> None:
    t = at(UP, motor_temp_max_c=90.0, motor_temp_hysteresis_c=10.0)
    assert t.update(rd(True, False, motor_temp_c=90.0), 1.0) == []
    assert trouble_codes(t.update(rd(True, False, motor_temp_c=91.0), 2.0)) == ["motor_overtemp"]
    assert t.update(rd(True, False, motor_temp_c=85.0), 3.0) == []
    out = t.update(rd(True, False, motor_temp_c=80.0), 4.0)
    assert trouble_codes(out, restore=True) == ["motor_overtemp"]


# --- schedule -----------------------------------------------------------------------------

MON = date(2025, 3, 3)  # a Monday
SAT = date(2025, 3, 8)


def local(day: date, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm, ss))


def watch(**kw: Any) -> ScheduleWatch:
    return ScheduleWatch(ScheduleConfig(**kw))


def test_schedule_violation_predicate() -> None:
    w = watch()
    assert w.schedule_violation(S.DOWN, local(MON, 7, 30))
    assert w.schedule_violation(S.MOVING_UP, local(MON, 7, 30))
    assert w.schedule_violation(S.FAULT, local(MON, 16))
    assert not w.schedule_violation(S.UP, local(MON, 7, 30))
    assert not w.schedule_violation(S.OFFLINE, local(MON, 7, 30))  # unknown, not down
    assert not w.schedule_violation(S.DOWN, local(MON, 9))  # between windows
    assert not w.schedule_violation(S.DOWN, local(MON, 8, 30))  # end is exclusive
    assert w.schedule_violation(S.DOWN, local(MON, 7))  # start is inclusive


def test_schedule_violation_after_grace_and_restore_when_up() -> None:
    w = watch(grace=60.0)
    assert w.update(S.DOWN, local(MON, 7, 30), 0.0) == []
    assert w.update(S.DOWN, local(MON, 7, 30, 59), 59.0) == []
    [v] = w.update(S.DOWN, local(MON, 7, 31), 60.0)
    assert (v.kind, v.restore) == ("schedule_violation", False)
    assert v.detail["window"] == "07:00-08:30" and v.detail["state"] == "down"
    assert w.update(S.DOWN, local(MON, 7, 32), 120.0) == []  # reported once
    [r] = w.update(S.UP, local(MON, 7, 33), 180.0)
    assert r.restore and r.detail["cleared_by"] == "bollard up"


def test_short_lowering_inside_a_window_is_not_a_violation() -> None:
    w = watch(grace=60.0)
    w.update(S.MOVING_DOWN, local(MON, 7, 30), 0.0)
    w.update(S.DOWN, local(MON, 7, 30, 10), 10.0)
    assert w.update(S.UP, local(MON, 7, 30, 40), 40.0) == []
    assert w.update(S.DOWN, local(MON, 7, 31), 70.0) == []  # the grace starts again


def test_down_before_the_window_counts_from_the_window_start() -> None:
    w = watch(grace=60.0)
    assert w.update(S.DOWN, local(MON, 6, 50), 0.0) == []
    assert w.update(S.DOWN, local(MON, 7, 0), 600.0) == []
    assert len(w.update(S.DOWN, local(MON, 7, 1), 660.0)) == 1


def test_violation_restores_when_the_window_ends() -> None:
    w = watch(grace=0.0)
    assert len(w.update(S.DOWN, local(MON, 8, 0), 0.0)) == 1
    [r] = w.update(S.DOWN, local(MON, 8, 30), 1800.0)
    assert r.restore and r.detail["cleared_by"] == "window ended"


def test_offline_neither_raises_nor_restores_a_violation() -> None:
    w = watch(grace=60.0)
    w.update(S.DOWN, local(MON, 7, 30), 0.0)
    assert w.update(S.OFFLINE, local(MON, 7, 32), 120.0) == []
    assert len(w.update(S.DOWN, local(MON, 7, 33), 180.0)) == 1
    assert w.update(S.OFFLINE, local(MON, 7, 34), 240.0) == []
    assert w.active


def test_weekend_holiday_and_vacation_are_skipped() -> None:
    cal = TermCalendar(
        terms=[DateRange(start=date(2025, 2, 17), end=date(2025, 7, 4))],
        holidays=[DateRange(start=date(2025, 4, 4)), DateRange(start=MON)],
    )
    w = watch(calendar=cal, grace=0.0)
    assert w.update(S.DOWN, local(SAT, 7, 30), 0.0) == []  # weekend
    assert w.update(S.DOWN, local(MON, 7, 30), 1.0) == []  # holiday
    assert not w.schedule_violation(S.DOWN, local(date(2025, 4, 4), 7, 30))
    assert not w.schedule_violation(S.DOWN, local(date(2025, 8, 4), 7, 30))  # summer vacation
    assert w.schedule_violation(S.DOWN, local(date(2025, 3, 4), 7, 30))  # an ordinary Tuesday
    assert w.windows(SAT) == []


def test_makeup_school_day_on_a_weekend_follows_its_timetable() -> None:
    sunday = date(2025, 9, 28)  # a working Sunday before National Day (调休)
    w = watch(calendar=TermCalendar(makeup_days={sunday: "wed"}))
    assert w.schedule_violation(S.DOWN, local(sunday, 15, 45))
    assert not w.schedule_violation(S.DOWN, local(date(2025, 9, 21), 15, 45))


def test_schedule_accepts_times_as_text_and_rejects_bad_windows() -> None:
    cfg = ScheduleConfig.model_validate({"must_be_up": {"sat": [["08:00", "09:00"]]}})
    assert ScheduleWatch(cfg).schedule_violation(S.DOWN, local(SAT, 8, 15))
    with pytest.raises(ValidationError, match="crosses midnight"):
        ScheduleConfig.model_validate({"must_be_up": {"mon": [["22:00", "06:00"]]}})
    with pytest.raises(ValidationError):
        ScheduleConfig.model_validate({"must_be_up": {"monday": []}})
    with pytest.raises(ValidationError):
        ScheduleConfig.model_validate({"grace": 10, "graec": 5})
    with pytest.raises(ValidationError, match="before start"):
        DateRange(start=date(2025, 2, 2), end=date(2025, 2, 1))


# --- command policy -----------------------------------------------------------------------

NOW = datetime(2025, 3, 3, 7, 30, tzinfo=UTC)
ONLINE = BollardView(S.UP, vehicle_loop=False)
_ids = iter(range(1_000_000))


def req(command: C = C.LOWER, **kw: Any) -> CommandRequest:
    fields: dict[str, Any] = {
        "command_id": f"cmd-{next(_ids)}",
        "campus": "school-1",
        "bollard": "b1",
        "command": command,
        "who": "guard-7",
        "role": "guard",
        "reason": "",
        "issued_at": NOW,
        "expires_at": NOW + timedelta(seconds=30),
    }
    fields.update(kw)
    return CommandRequest(**fields)


def tokens() -> Any:
    n = iter(range(1000))
    return lambda: f"tok-{next(n)}"


def policy(**kw: Any) -> CommandPolicy:
    return CommandPolicy("school-1", CommandPolicyConfig(**kw), token_factory=tokens())


def confirm(r: CommandRequest, token: str, **kw: Any) -> ConfirmRequest:
    fields = {"command_id": r.command_id, "campus": "school-1", "who": r.who, "token": token}
    fields.update(kw)
    return ConfirmRequest(**fields)


def test_lower_is_one_step() -> None:
    d = policy().decide(req(C.LOWER), ONLINE, NOW)
    assert d.accepted and d.outcome == "accepted" and d.code is None


def test_raise_needs_arm_then_confirm() -> None:
    p = policy()
    r = req(C.RAISE)
    d = p.decide(r, BollardView(S.DOWN, False), NOW)
    assert d.outcome == "armed" and not d.accepted
    assert d.token == "tok-0" and d.confirm_by == NOW + timedelta(seconds=10)
    c = p.confirm(confirm(r, "tok-0"), BollardView(S.DOWN, False), NOW + timedelta(seconds=4))
    assert c.accepted and c.request == r
    # One confirm per arm.
    again = p.confirm(confirm(r, "tok-0"), ONLINE, NOW + timedelta(seconds=5))
    assert again.code == "not_armed"


def test_confirm_by_is_capped_by_the_request_expiry() -> None:
    r = req(C.RAISE, expires_at=NOW + timedelta(seconds=3))
    d = policy().decide(r, ONLINE, NOW)
    assert d.confirm_by == NOW + timedelta(seconds=3)


def test_confirm_with_wrong_token_uses_up_the_arm() -> None:
    p = policy()
    r = req(C.RAISE)
    p.decide(r, ONLINE, NOW)
    d = p.confirm(confirm(r, "guess"), ONLINE, NOW + timedelta(seconds=1))
    assert d.code == "bad_token" and "arm again" in d.reason
    assert p.confirm(confirm(r, "tok-0"), ONLINE, NOW + timedelta(seconds=2)).code == "not_armed"


def test_confirm_too_late() -> None:
    p = policy(arm_confirm_window=5.0)
    r = req(C.RAISE)
    p.decide(r, ONLINE, NOW)
    d = p.confirm(confirm(r, "tok-0"), ONLINE, NOW + timedelta(seconds=5.5))
    assert d.code == "confirm_late" and "too late" in d.reason


def test_confirm_without_arm() -> None:
    p = policy()
    r = req(C.RAISE)
    d = p.confirm(confirm(r, "tok-0"), ONLINE, NOW)
    assert d.code == "not_armed" and d.request is None


def test_confirm_by_someone_else_keeps_the_arm() -> None:
    p = policy()
    r = req(C.RAISE)
    p.decide(r, ONLINE, NOW)
    d = p.confirm(confirm(r, "tok-0", who="intruder"), ONLINE, NOW + timedelta(seconds=1))
    assert d.code == "wrong_user"
    assert p.confirm(confirm(r, "tok-0"), ONLINE, NOW + timedelta(seconds=2)).accepted


def test_confirm_for_another_campus() -> None:
    p = policy()
    r = req(C.RAISE)
    p.decide(r, ONLINE, NOW)
    d = p.confirm(confirm(r, "tok-0", campus="school-2"), ONLINE, NOW)
    assert d.code == "wrong_campus"


def test_confirm_checks_the_bollard_again() -> None:
    p = policy()
    r = req(C.RAISE)
    assert p.decide(r, BollardView(S.DOWN, False), NOW).outcome == "armed"
    # A car rolled onto the loop between arm and confirm.
    d = p.confirm(confirm(r, "tok-0"), BollardView(S.DOWN, True), NOW + timedelta(seconds=2))
    assert d.code == "vehicle_on_loop"


def test_replayed_command_id_is_refused() -> None:
    p = policy()
    r = req(C.LOWER)
    assert p.decide(r, ONLINE, NOW).accepted
    d = p.decide(r, ONLINE, NOW + timedelta(seconds=1))
    assert d.code == "replay" and "replay" in d.reason
    # Long after, the id is forgotten but the request has expired: still refused.
    assert p.decide(r, ONLINE, NOW + timedelta(minutes=5)).code == "expired"


def test_a_refused_request_uses_up_its_id() -> None:
    p = policy()
    r = req(C.LOWER)
    assert p.decide(r, BollardView(S.OFFLINE), NOW).code == "offline"
    assert p.decide(r, ONLINE, NOW).code == "replay"


def test_wrong_campus_is_refused() -> None:
    d = policy().decide(req(campus="school-2"), ONLINE, NOW)
    assert d.code == "wrong_campus" and "school-2" in d.reason


@pytest.mark.parametrize(
    ("issued", "expires", "code"),
    [
        (NOW - timedelta(seconds=40), NOW - timedelta(seconds=10), "expired"),
        (NOW - timedelta(seconds=40), NOW, "expired"),
        (NOW + timedelta(seconds=30), NOW + timedelta(seconds=40), "not_yet_valid"),
        (NOW, NOW - timedelta(seconds=1), "bad_validity"),
        (NOW, NOW + timedelta(hours=1), "bad_validity"),
    ],
)
def test_time_checks(issued: datetime, expires: datetime, code: str) -> None:
    d = policy().decide(req(issued_at=issued, expires_at=expires), ONLINE, NOW)
    assert d.code == code and d.reason


def test_small_clock_skew_is_tolerated() -> None:
    r = req(issued_at=NOW + timedelta(seconds=3), expires_at=NOW + timedelta(seconds=30))
    assert policy().decide(r, ONLINE, NOW).accepted


def test_naive_timestamps_are_rejected() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        req(issued_at=datetime(2025, 3, 3, 7, 30))


@pytest.mark.parametrize("command", list(C))
def test_offline_bollard_refuses_everything(command: C) -> None:
    d = policy().decide(req(command), BollardView(S.OFFLINE), NOW)
    assert d.code == "offline" and "offline" in d.reason


def test_unknown_bollard() -> None:
    assert policy().decide(req(), None, NOW).code == "unknown_bollard"


@pytest.mark.parametrize("command", [C.RAISE, C.LOWER, C.EMERGENCY_RAISE])
def test_maintenance_refuses_moves(command: C) -> None:
    d = policy().decide(req(command), BollardView(S.MAINTENANCE), NOW)
    assert d.code == "maintenance" and "cabinet" in d.reason


@pytest.mark.parametrize("state", [s for s in S if s is not S.OFFLINE])
def test_stop_is_always_allowed_while_online(state: BollardState) -> None:
    d = policy().decide(req(C.STOP, role="visitor"), BollardView(state, True), NOW)
    assert d.accepted


def test_role_not_allowed() -> None:
    d = policy().decide(req(C.LOWER, role="technician"), ONLINE, NOW)
    assert d.code == "role" and "technician" in d.reason
    assert policy().decide(req(C.LOWER, role="nobody"), ONLINE, NOW).code == "role"
    custom = policy(roles={"guard": {"stop", "raise"}}, loop_override_roles=[])
    assert custom.decide(req(C.LOWER), ONLINE, NOW).code == "role"
    assert custom.decide(req(C.RAISE), ONLINE, NOW).outcome == "armed"


def test_lower_refused_in_fault_unless_configured() -> None:
    view = BollardView(S.FAULT, False)
    assert policy().decide(req(C.LOWER), view, NOW).code == "fault"
    assert policy(refuse_lower_in_fault=False).decide(req(C.LOWER), view, NOW).accepted
    assert policy().decide(req(C.RAISE), view, NOW).outcome == "armed"  # fail secure


def test_raise_refused_while_the_loop_is_occupied() -> None:
    d = policy().decide(req(C.RAISE, role="supervisor", reason="x"), BollardView(S.DOWN, True), NOW)
    assert d.code == "vehicle_on_loop" and "strike" in d.reason


def test_emergency_raise_over_the_loop_needs_an_allowed_role_and_a_reason() -> None:
    loop = BollardView(S.DOWN, True)
    p = policy(loop_override_roles=["supervisor"])
    assert p.decide(req(C.EMERGENCY_RAISE, reason="ram attack"), loop, NOW).code == (
        "vehicle_on_loop"
    )
    assert p.decide(req(C.EMERGENCY_RAISE, role="supervisor"), loop, NOW).code == (
        "reason_required"
    )
    r = req(C.EMERGENCY_RAISE, role="supervisor", reason="vehicle forcing the gate")
    d = p.decide(r, loop, NOW)
    assert d.outcome == "armed" and d.token is not None
    assert p.confirm(confirm(r, d.token), loop, NOW + timedelta(seconds=1)).accepted


def test_unknown_loop_does_not_block_a_raise() -> None:
    # No loop signal in the profile: the controller's own interlock is the guard there.
    assert policy().decide(req(C.RAISE), BollardView(S.DOWN, None), NOW).outcome == "armed"


def test_policy_config_is_strict() -> None:
    with pytest.raises(ValidationError):
        CommandPolicyConfig.model_validate({"arm_window": 5})
    with pytest.raises(ValidationError, match="unknown roles"):
        CommandPolicyConfig(loop_override_roles=frozenset({"janitor"}))
    with pytest.raises(ValidationError):
        CommandPolicyConfig.model_validate({"roles": {"guard": ["fly"]}})


def test_default_tokens_are_unpredictable() -> None:
    p = CommandPolicy("school-1")
    a = p.decide(req(C.RAISE), ONLINE, NOW).token
    b = p.decide(req(C.RAISE), ONLINE, NOW).token
    assert a and b and a != b and len(a) >= 20


# --- command outcomes ---------------------------------------------------------------------


def test_outcome_is_pending_after_send_and_done_only_on_confirmed_position() -> None:
    t, o = at(DOWN), CommandOutcome()
    assert o.accepted("c", "b1", C.RAISE, 0.0).status == "pending"
    assert o.observe("b1", t.command_sent(C.RAISE, 0.1, "c"), 0.1) == []
    pending = o.get("c")
    assert pending is not None and pending.status == "pending"
    assert o.observe("b1", t.update(MID, 1.0), 1.0) == []
    [r] = o.observe("b1", t.update(UP, 5.1), 5.1)
    assert (r.status, r.elapsed_s) == ("done", 5.0)
    assert o.pending == [] and o.get("c") == r


def test_outcome_ignores_other_bollards_and_ids() -> None:
    o = CommandOutcome()
    o.accepted("c", "b1", C.LOWER, 0.0)
    done = BollardSignal("position_confirmed", detail={"command_id": "c", "elapsed_s": 1.0})
    assert o.observe("b2", [done], 1.0) == []
    assert o.observe("b1", [BollardSignal("position_confirmed", detail={})], 1.0) == []
    assert len(o.observe("b1", [done], 1.0)) == 1


def test_outcome_superseded_send_failed_and_deadline() -> None:
    t, o = at(DOWN), CommandOutcome(deadline=30.0)
    o.accepted("r", "b1", C.RAISE, 0.0)
    t.command_sent(C.RAISE, 0.0, "r")
    o.accepted("s", "b1", C.STOP, 1.0)
    [r] = o.observe("b1", t.command_sent(C.STOP, 1.0, "s"), 1.0)
    assert r.status == "failed" and "superseded" in r.reason
    o.accepted("w", "b1", C.LOWER, 2.0)
    failed = o.send_failed("w", "modbus exception 2")
    assert failed is not None and failed.status == "failed" and "not sent" in failed.reason
    o.accepted("lost", "b1", C.LOWER, 3.0)
    [stale] = o.expire(32.0)  # the stop was sent but never seen to take effect
    assert stale.command_id == "s" and "no confirmation" in stale.reason
    [late] = o.expire(33.5)
    assert late.command_id == "lost" and late.status == "failed"


def test_outcome_keeps_a_bounded_history() -> None:
    o = CommandOutcome(keep=2)
    for i in range(3):
        o.accepted(f"c{i}", "b1", C.STOP, 0.0)
        o.send_failed(f"c{i}", "x")
    assert o.get("c0") is None and o.get("c2") is not None


# --- properties ---------------------------------------------------------------------------

opt_bool = st.none() | st.booleans()
readings = st.builds(
    BollardReading,
    raised_limit=opt_bool,
    lowered_limit=opt_bool,
    moving=opt_bool,
    moving_up=opt_bool,
    moving_down=opt_bool,
    fault_code=st.none() | st.sampled_from([0, 0, 0, 3]),
    manual_mode=st.none() | st.just(False) | st.just(True),
    maintenance=st.none() | st.just(False),
    impact=opt_bool,
    vehicle_loop=opt_bool,
    pressure_bar=st.none() | st.floats(50, 120),
    motor_temp_c=st.none() | st.floats(20, 120),
    mains_ok=opt_bool,
    battery_ok=opt_bool,
)
steps = st.lists(
    st.tuples(
        st.floats(0.0, 8.0),
        # Mostly readings; failed reads and commands in between.
        st.one_of(readings, readings, readings, st.none(), st.sampled_from(list(C))),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_tracker_invariants(seq: list[tuple[float, BollardReading | C | None]]) -> None:
    t = BollardTracker(BollardRulesConfig(pressure_min_bar=80.0))
    outcome = CommandOutcome()
    now = 0.0
    impact_active = False
    troubles: set[str] = set()
    settled: set[str] = set()
    confirmed: set[str] = set()
    have_read = False
    last: BollardReading | None = None
    for n, (dt, step) in enumerate(seq):
        now += dt
        if isinstance(step, BollardCommand):
            cid = f"c{n}"
            outcome.accepted(cid, "b", step, now)
            out = t.command_sent(step, now, cid)
        else:
            out = t.update(step, now)
            have_read, last = True, step
        for s in out:
            if s.kind == "bollard_impact":
                # Never two impact alarms without the impact clearing in between.
                assert s.restore == impact_active
                impact_active = not s.restore
            if s.kind == "trouble":
                code = str(s.detail["code"])
                assert (code in troubles) == s.restore
                troubles.symmetric_difference_update({code})
            if s.kind == "position_confirmed":
                assert isinstance(step, BollardReading)
                if s.detail["command"] in ("raise", "emergency_raise"):
                    assert step.raised_limit is True and step.lowered_limit is not True
                if s.detail["command"] == "lower":
                    assert step.lowered_limit is True and step.raised_limit is not True
            if s.kind in ("position_confirmed", "command_failed"):
                cid = str(s.detail["command_id"])
                if s.kind == "position_confirmed":
                    confirmed.add(cid)
                assert cid not in settled  # one outcome per command
                settled.add(cid)
        for r in outcome.observe("b", out, now):
            assert r.status != "pending"
        assert set(t.troubles) == troubles
        assert t.impact == impact_active
        if have_read and last is None:
            assert t.state is S.OFFLINE and t.position is None and t.vehicle_loop is None
        if t.state is S.UP:
            # Never "up" unless the raised limit is made (and the lowered one is not).
            assert last is not None and t.position == "up"
            assert last.raised_limit is True and last.lowered_limit is not True
        if t.state in (S.UP, S.DOWN, S.MOVING_UP, S.MOVING_DOWN, S.STOPPED_MIDWAY):
            assert t.faults == []
    for cid in settled:
        # Every command the tracker settled is settled in the ledger: done only if confirmed.
        result = outcome.get(cid)
        assert result is not None
        assert (result.status == "done") == (cid in confirmed)
    for pending in outcome.pending:
        assert pending.command_id not in settled


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2026, 12, 31)),
    st.sampled_from(list(S)),
)
def test_no_violation_on_weekends_holidays_or_when_up(when: datetime, state: BollardState) -> None:
    holiday = DateRange(start=date(2025, 10, 1), end=date(2025, 10, 7))
    w = watch(calendar=TermCalendar(holidays=[holiday]))
    violation = w.schedule_violation(state, when)
    if when.weekday() >= 5 or holiday.includes(when.date()) or state in (S.UP, S.OFFLINE):
        assert not violation
    if violation:
        assert w.window_at(when) is not None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(list(C)), st.integers(0, 40)), max_size=30
    )
)
def test_a_command_id_is_accepted_at_most_once(attempts: list[tuple[int, C, int]]) -> None:
    p = policy()
    passed: set[str] = set()
    for ident, command, offset in sorted(attempts, key=lambda a: a[2]):
        r = req(command, command_id=f"id-{ident}", expires_at=NOW + timedelta(seconds=60))
        d = p.decide(r, ONLINE, NOW + timedelta(seconds=offset))
        if d.outcome != "refused":
            assert r.command_id not in passed
            passed.add(r.command_id)


def test_a_fault_during_a_move_fails_the_command_once() -> None:
    t, o = at(DOWN), CommandOutcome()
    o.accepted("c", "b1", C.RAISE, 0.0)
    t.command_sent(C.RAISE, 0.0, "c")
    t.update(MID, 1.0)
    out = t.update(rd(False, False, fault_code=4), 2.0)
    [r] = o.observe("b1", out, 2.0)
    assert r.status == "failed" and r.reason == "fault: controller fault code 4"
    # Neither a timeout later nor the late arrival settles it a second time.
    assert only(t.update(rd(False, False, fault_code=4), 30.0), "command_failed") == []
    out = t.update(rd(True, False, fault_code=0), 31.0)
    assert only(out, "position_confirmed") == [] and trouble_codes(out) == []
    assert states(out) == ["up"]


def test_a_fault_during_a_stop_fails_it_once() -> None:
    t = at(MID)
    t.command_sent(C.STOP, 0.0, "s")
    out = t.update(rd(False, False, moving=True, fault_code=2), 0.5)
    assert len(only(out, "command_failed")) == 1
    assert only(t.update(rd(False, False, moving=False), 1.0), "position_confirmed") == []
