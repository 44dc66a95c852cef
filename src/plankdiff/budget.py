"""Compute budgets that do not depend on how busy the machine is: training FLOPs.

A step's FLOPs (forward and backward of every network the method runs, counted once with
`torch.utils.flop_counter` on a copy, so the run itself is untouched) times the steps taken is the
same on an idle CPU, a shared one and a GPU, so an equal-FLOPs comparison stays fair where equal
minutes carry ~10 % noise on a shared 2-core machine. Matrix products and convolutions are counted
(what FlopCounterMode counts); element-wise work is not, for every method alike. Nor, on a CPU, is
attention (`count_flops`' `cpu_attention`): 8.6 % of a DDPM `cpu`-preset step, 4.4 % of MAE's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

TERA = 1e12


def count_flops(step: Callable[[], object], *, cpu_attention: bool = False) -> int:
    """FLOPs of running `step()` once (it should run the forward and the backward pass).

    `cpu_attention`: also count PyTorch's CPU kernel of scaled-dot-product attention, which
    FlopCounterMode has no formula for (it counts the CUDA flash, efficient and cuDNN kernels), with
    the formulas torch gives those. Off by default and in every trainer: the budgets of runs already
    trained and of a study under way must keep their meaning, so on a CPU the attention matmuls of
    the DDPM's attention blocks and of MAE's ViT stay uncounted (bench/results/attention_flops.md
    measures how much that is).
    """
    from torch.utils.flop_counter import FlopCounterMode

    mapping = cpu_attention_formulas() if cpu_attention else None
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        step()
    return int(counter.get_total_flops())


def cpu_attention_formulas() -> dict:
    """FlopCounterMode formulas for the CPU attention kernel and its backward: torch's own for the
    CUDA kernels (`sdpa_flop_count`, `sdpa_backward_flop_count`), which take the same q, k, v."""
    import torch
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)

    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }


def step_cap(max_steps: int | None, max_tflops: float | None, flops_per_step: int) -> float:
    """The step at which the first of the step and FLOP budgets runs out (inf without either)."""
    caps = [math.inf if max_steps is None else max_steps]
    if max_tflops is not None and flops_per_step > 0:
        caps.append(math.ceil(max_tflops * TERA / flops_per_step))
    return min(caps)


__all__ = ["TERA", "count_flops", "cpu_attention_formulas", "step_cap"]
