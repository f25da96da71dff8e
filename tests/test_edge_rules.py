"""Input readings become events: the pure rules of edge/alarms.py."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from contract.config import EolConfig, InputConfig
from edge.alarms import InputTracker


def tracker(**kw: object) -> InputTracker:
    cfg = InputConfig.model_validate({"channel": 0, "id": "btn", **kw})
    return InputTracker(cfg)


def test_press_and_release() -> None:
    t = tracker(mode="state")
    assert t.update(False, 0, None, 0.0) == []
    [s] = t.update(True, 0, None, 0.05)
    assert (s.kind, s.restore) == ("panic", False)
    assert t.update(True, 0, None, 0.10) == []
    [r] = t.update(False, 0, None, 0.15)
    assert r.restore


def test_short_press_seen_only_by_latch_is_an_alarm() -> None:
    t = tracker(mode="latch")
    t.update(False, 0, None, 0.0)
    signals = t.update(False, 1, None, 0.05)
    assert [(s.kind, s.restore) for s in signals] == [("panic", False), ("panic", True)]
    assert signals[0].detail["short_press"] is True


def test_held_press_with_latch_is_one_alarm() -> None:
    t = tracker(mode="latch")
    t.update(False, 0, None, 0.0)
    assert len(t.update(True, 1, None, 0.05)) == 1
    assert t.update(True, 0, None, 0.10) == []


def test_debounce_ignores_bounce() -> None:
    t = tracker(mode="state", debounce=0.1)
    t.update(False, 0, None, 0.0)
    assert t.update(True, 0, None, 0.2) == []  # just changed
    assert t.update(False, 0, None, 0.25) == []  # bounced back
    assert t.update(True, 0, None, 0.3) == []
    assert len(t.update(True, 0, None, 0.45)) == 1  # held 150 ms


def test_held_button_across_restart_not_raised_twice() -> None:
    cfg = InputConfig(channel=0, id="btn", mode="state")
    t = InputTracker(cfg, last="active")
    assert t.update(True, 0, None, 0.0) == []


def test_failed_read_is_not_normal() -> None:
    t = tracker(mode="state")
    t.update(True, 0, None, 0.0)
    assert t.update(None, 0, None, 0.05) == []
    assert t.state == "active"


def test_eol_states() -> None:
    t = tracker(mode="eol", eol=EolConfig(samples=2).model_dump())
    seq = ["normal", "normal", "alarm", "alarm", "cut", "cut", "normal", "normal", "short", "short"]
    out = []
    for i, value in enumerate(seq):
        out += [(s.kind, s.restore, s.detail.get("wire")) for s in t.update(None, 0, value, i)]
    assert out == [
        ("panic", False, "alarm"),
        ("panic", True, "alarm"),
        ("trouble", False, "cut"),
        ("trouble", True, "cut"),
        ("tamper", False, "short"),
    ]
    assert t.update(None, 0, "unknown", 99) == []


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=60))
def test_alarms_and_restores_alternate(readings: list[tuple[bool, int]]) -> None:
    """Whatever the readings, the event stream never has two alarms without a restore between."""
    t = tracker(mode="latch")
    active = False
    for i, (state, pulses) in enumerate(readings):
        for s in t.update(state, pulses, None, i * 0.05):
            assert s.restore == active
            active = not s.restore


def test_release_and_press_again_between_polls_is_a_second_alarm() -> None:
    t = tracker(mode="latch")
    t.update(False, 0, None, 0.0)
    assert [s.restore for s in t.update(True, 1, None, 0.05)] == [False]  # press 1, still held
    # Before the next poll: released, pressed again, released. The latch caught press 2.
    signals = t.update(False, 1, None, 0.10)
    assert [(s.restore, s.detail.get("pressed_again")) for s in signals] == [
        (True, None),
        (False, True),
        (True, None),
    ]
    # Released and pressed again, still held at the poll.
    t.update(True, 1, None, 0.15)
    signals = t.update(True, 1, None, 0.20)
    assert [s.restore for s in signals] == [True, False]
    assert t.state == "active"


def test_press_caught_between_the_state_read_and_the_latch_read_is_one_alarm() -> None:
    """The press began after this poll's state read and before its latch read: the latch makes
    it a short press (alarm and release). The next poll finds the button still held, with no
    new pulse: that is the same press, not a second alarm; and its release is not news."""
    t = tracker(mode="latch")
    t.update(False, 0, None, 0.0)
    assert [s.restore for s in t.update(False, 1, None, 0.05)] == [False, True]
    assert t.update(True, 0, None, 0.10) == []  # still the same press
    assert t.update(True, 0, None, 0.15) == []
    assert t.update(False, 0, None, 0.20) == []  # its release was reported already
    # A real second press afterwards is an alarm again.
    assert [s.restore for s in t.update(True, 1, None, 0.25)] == [False]
    assert [s.restore for s in t.update(False, 0, None, 0.30)] == [True]


def test_a_new_press_during_the_quiet_hold_is_a_new_alarm() -> None:
    t = tracker(mode="latch")
    t.update(False, 0, None, 0.0)
    t.update(False, 1, None, 0.05)  # short press reported
    assert t.update(True, 0, None, 0.10) == []  # same press held
    # Released and pressed again between polls: the latch has a new pulse.
    assert [s.restore for s in t.update(True, 1, None, 0.15)] == [False]
    assert [s.restore for s in t.update(False, 0, None, 0.20)] == [True]


def test_each_signal_carries_the_state_it_leaves() -> None:
    """Stored with its event in one transaction: killed between a short press's alarm and its
    release, the edge restarts knowing the alarm went out, and sends the release then."""
    t = tracker(mode="latch")
    t.update(False, 0, None, 0.0)
    signals = t.update(False, 1, None, 0.05)
    assert [(s.restore, s.state) for s in signals] == [(False, "active"), (True, "normal")]
    e = tracker(mode="eol", kind="intrusion", eol={"samples": 1})
    [cut] = e.update(None, 0, "cut", 0.0)
    assert (cut.kind, cut.state) == ("trouble", "cut")
    restore, alarm = e.update(None, 0, "alarm", 0.1)
    assert (restore.state, alarm.state) == ("normal", "alarm")
