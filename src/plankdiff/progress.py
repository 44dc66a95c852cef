"""One progress display for every long-running stage.

A stage ends at `total` steps or when its time budget is spent, whichever comes first. Training runs
have both (`--max-minutes 1` with the preset's 100,000-step cap), so the display measures progress
against the nearer end: a one-minute run shows one minute to go, not the 34 hours the step cap
would take. On a terminal it is a rich bar; elsewhere (batch jobs, `nohup`, pipes, CI logs), where
a bar cannot redraw, it writes one plain line every `log_every_s` seconds and one at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

LOG_EVERY_S = 30.0  # plain log lines when the output is not a terminal


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class Budget:
    """Where a stage stands against its step count and its time budget."""

    total: int | None
    budget_s: float | None = None  # time budget of the whole stage
    # seconds of the budget spent so far, resumed runs included; default: wall time since the start
    clock: Callable[[], float] | None = None
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    _rate_from: tuple[float, int] | None = None  # (spent, steps) the step rate is measured from

    def advance(self, n: int) -> None:
        self.done += n
        if self._rate_from is None:  # the first call may jump to a resumed step: not a rate
            self._rate_from = (self.spent(), self.done)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def step_fraction(self) -> float | None:
        return self.done / self.total if self.total else None

    def time_fraction(self) -> float | None:
        return self.spent() / self.budget_s if self.budget_s else None

    def spent(self) -> float:
        return self.clock() if self.clock is not None else self.elapsed

    def fraction(self) -> float | None:
        """Of the nearer end; None when neither a step count nor a budget is known."""
        known = [f for f in (self.step_fraction(), self.time_fraction()) if f is not None]
        return min(1.0, max(known)) if known else None

    def seconds_left(self) -> tuple[float | None, str]:
        """Seconds to the nearer end and which end that is ("time" or "steps")."""
        by_time = self.budget_s - self.spent() if self.budget_s else math.inf
        by_steps = math.inf
        if self.total and self._rate_from is not None:
            since, steps = self._rate_from
            rate = (self.done - steps) / max(self.spent() - since, 1e-9)
            if rate > 0:
                by_steps = (self.total - self.done) / rate
        if by_time == by_steps == math.inf:
            return None, ""
        return (max(0.0, by_time), "time") if by_time <= by_steps else (by_steps, "steps")

    def describe(self) -> str:
        """E.g. `120/100,000, 42%, 0:00:25 elapsed, 0:00:35 left (time budget)`."""
        parts = [f"{self.done:,}/{self.total:,}" if self.total else f"{self.done:,}"]
        fraction = self.fraction()
        if fraction is not None:
            parts.append(f"{fraction:.0%}")
        parts.append(f"{_clock(self.elapsed)} elapsed")
        left, end = self.seconds_left()
        if left is not None:
            parts.append(f"{_clock(left)} left" + (" (time budget)" if end == "time" else ""))
        return ", ".join(parts)


def _status(fields: dict[str, object]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


@contextmanager
def progress_bar(
    description: str,
    total: int | None,
    enabled: bool = True,
    *,
    budget_s: float | None = None,
    clock: Callable[[], float] | None = None,
    log_every_s: float = LOG_EVERY_S,
    console: Console | None = None,
) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1, **fields)`; extra fields (loss, img/s) are shown after the progress.

    `budget_s` is the stage's time budget in seconds and `clock()` what it has spent of it so far
    (the trainers count training time summed over resumes; default: wall time since the start); with
    them the display counts down to whichever of `total` and the budget comes first.
    """
    if not enabled:
        yield lambda n=1, **fields: None
        return
    console = console or Console()
    finite = budget_s is not None and 0 < budget_s < math.inf  # no --max-minutes: math.inf
    state = Budget(total=total, budget_s=budget_s if finite else None, clock=clock)
    status: dict[str, object] = {}
    if not console.is_terminal:
        last = time.perf_counter()

        def log(n: int = 1, **fields: object) -> None:
            nonlocal last
            state.advance(n)
            status.update(fields)
            if time.perf_counter() - last >= log_every_s:
                last = time.perf_counter()
                console.print(
                    f"{description}: {state.describe()}  {_status(status)}".rstrip(), highlight=False
                )

        yield log
        console.print(f"{description}: {state.describe()}  {_status(status)}".rstrip(), highlight=False)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[where]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[left]}"),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=False,
    )
    known = total is not None or finite
    with progress:
        task = progress.add_task(description, total=1.0 if known else None, where="", left="", status="")

        def advance(n: int = 1, **fields: object) -> None:
            state.advance(n)
            status.update(fields)
            fraction = state.fraction()
            left, end = state.seconds_left()
            where = f"{state.done:,}/{total:,}" if total else f"{state.done:,}"
            progress.update(
                task,
                completed=fraction or 0.0,
                where=where + (f" {fraction:.0%}" if fraction is not None else ""),
                left="" if left is None else f"{_clock(left)} left" + (" (budget)" if end == "time" else ""),
                status=_status(status),
            )

        yield advance
