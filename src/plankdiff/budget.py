"""Compute budgets that do not depend on how busy the machine is: training FLOPs.

A step's FLOPs (forward and backward of every network the method runs, counted once with
`torch.utils.flop_counter` on a copy, so the run itself is untouched) times the steps taken is the
same on an idle CPU, a shared one and a GPU, so an equal-FLOPs comparison stays fair where equal
minutes carry ~10 % noise on a shared 2-core machine. Matrix products and convolutions are counted
(what FlopCounterMode counts); element-wise work is not, for every method alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable

TERA = 1e12


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs of running `step()` once (it should run the forward and the backward pass)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def step_cap(max_steps: int | None, max_tflops: float | None, flops_per_step: int) -> float:
    """The step at which the first of the step and FLOP budgets runs out (inf without either)."""
    caps = [math.inf if max_steps is None else max_steps]
    if max_tflops is not None and flops_per_step > 0:
        caps.append(math.ceil(max_tflops * TERA / flops_per_step))
    return min(caps)


__all__ = ["TERA", "count_flops", "step_cap"]
