"""Autoscaling decisions with a fake clock."""

from __future__ import annotations

from task_supervisor.loop.scaling import UP_COOLDOWN, ScaleState, decide


def step(now, current, busy, idle, depth, state, lo=1, hi=8, cooldown=30.0):
    return decide(now, current, lo, hi, busy, idle, depth, state, cooldown)


def test_grows_to_cover_the_backlog_but_not_past_max():
    state = ScaleState()
    assert step(0, 1, busy=1, idle=0, depth=3, state=state) == 4
    assert step(0, 1, busy=1, idle=0, depth=30, state=state) == 8


def test_idle_children_absorb_a_small_backlog():
    assert step(0, 4, busy=2, idle=2, depth=2, state=ScaleState()) == 4


def test_growth_waits_for_the_up_cooldown():
    state = ScaleState(last_up=10.0)
    assert step(10.0 + UP_COOLDOWN / 2, 2, busy=2, idle=0, depth=5, state=state) == 2
    assert step(10.0 + UP_COOLDOWN, 2, busy=2, idle=0, depth=5, state=state) == 7


def test_shrinks_one_idle_child_at_a_time_after_the_cooldown_and_never_below_min():
    state = ScaleState(last_up=100.0)
    assert step(110, 4, busy=0, idle=4, depth=0, state=state) == 4  # within cooldown: no flapping
    assert step(131, 4, busy=0, idle=4, depth=0, state=state) == 3
    state.last_down = 131
    assert step(140, 3, busy=0, idle=3, depth=0, state=state) == 3
    assert step(162, 3, busy=0, idle=3, depth=0, state=state) == 2
    assert step(1000, 1, busy=0, idle=1, depth=0, state=state) == 1  # min


def test_never_shrinks_busy_children_or_with_work_waiting():
    state = ScaleState()
    assert step(100, 3, busy=3, idle=0, depth=0, state=state) == 3
    assert step(100, 3, busy=2, idle=1, depth=1, state=state) == 3


def test_out_of_bounds_sizes_are_brought_back():
    assert step(0, 0, 0, 0, 0, ScaleState(), lo=2) == 2
    assert step(0, 9, 0, 0, 0, ScaleState(), hi=4) == 4
