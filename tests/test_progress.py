"""The progress display: measured against the nearer of the step cap and the time budget; plain
lines at an interval when the output is not a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from plankdiff.progress import Budget, progress_bar


def test_a_time_budget_nearer_than_the_step_cap_drives_the_countdown():
    # a 1-minute budget with the cpu preset's 100,000-step cap: 5 steps/s would need 5.5 hours
    spent = [20.0]
    state = Budget(total=100_000, budget_s=60.0, clock=lambda: spent[0])
    state.advance(0)
    spent[0] = 30.0
    state.advance(50)
    assert state.fraction() == 0.5
    left, end = state.seconds_left()
    assert end == "time" and left == 30.0
    assert Budget(
        total=100, budget_s=3600.0, clock=lambda: spent[0], done=50, _rate_from=(20.0, 0)
    ).seconds_left() == (10.0, "steps")
    spent[0] = 75.0  # a resumed run past its budget: nothing left, not negative
    assert state.fraction() == 1.0 and state.seconds_left() == (0.0, "time")


def test_without_a_budget_the_step_cap_drives_the_fraction():
    state = Budget(total=200)
    state.advance(50)
    assert state.fraction() == 0.25
    assert Budget(total=None).fraction() is None


def test_plain_lines_at_the_interval_when_not_a_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    spent = [0.0]
    with progress_bar(
        "train", total=100_000, budget_s=60.0, clock=lambda: spent[0], log_every_s=0.0, console=console
    ) as advance:
        for _ in range(3):
            spent[0] += 10.0
            advance(1, loss=0.25)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # one per advance (interval 0 here) and one at the end
    assert lines[0].startswith("train: 1/100,000, 17%, ")
    assert "0:00:50 left (time budget)" in lines[0] and "loss=0.25" in lines[0]
    assert lines[-1].startswith("train: 3/100,000, 50%, ")


def test_disabled_prints_nothing():
    out = io.StringIO()
    with progress_bar("x", total=3, enabled=False, console=Console(file=out)) as advance:
        advance(3)
    assert out.getvalue() == ""
