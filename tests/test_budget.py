"""FLOP budgets: counted once per step, the same however busy the machine is."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from plankdiff.budget import TERA, count_flops, step_cap


def test_count_flops_counts_a_matrix_product_forward_and_backward():
    a = torch.randn(8, 16, requires_grad=True)
    b = torch.randn(16, 4, requires_grad=True)
    # forward: 2·8·16·4 multiply-adds; backward: one product for each input's gradient, the same size
    assert count_flops(lambda: (a @ b).sum().backward()) == 3 * 2 * 8 * 16 * 4


def test_cpu_attention_counts_the_cpu_kernel_as_the_math_it_replaces():
    """FlopCounterMode has no formula for PyTorch's CPU attention kernel: the default count (every
    trainer's) misses it; `cpu_attention` counts it as its two matrix products, written out."""
    import torch.nn.functional as F

    q, k, v = (torch.randn(2, 3, 16, 8, requires_grad=True) for _ in range(3))
    products = 2 * (2 * 2 * 3 * 16 * 16 * 8)  # scores q·kᵀ and their product with v
    fused = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    written_out = lambda: torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1) @ v  # noqa: E731
    assert count_flops(fused) == 0  # the CPU kernel: uncounted
    assert count_flops(written_out) == products
    assert count_flops(fused, cpu_attention=True) == products
    # Backward: torch's flash formula, the scores recomputed and four products (five in all).
    assert count_flops(lambda: fused().sum().backward(), cpu_attention=True) == products + 5 * products // 2


@pytest.mark.parametrize(
    ("max_steps", "max_tflops", "per_step", "cap"),
    [
        (None, None, 10, math.inf),
        (100, None, 10, 100),
        (None, 1.0, int(TERA / 4), 4),  # exactly 4 steps fit
        (None, 1.0, int(TERA / 3.5), 4),  # 3.5 fit: the step that crosses the budget is taken
        (2, 1.0, int(TERA / 4), 2),  # the step cap comes first
    ],
)
def test_step_cap_is_the_first_budget_to_run_out(max_steps, max_tflops, per_step, cap):
    assert step_cap(max_steps, max_tflops, per_step) == cap


def test_a_diffusion_run_stops_at_its_flop_budget_and_records_it(prepared_small_ndsb, make_trainer, tmp_path):
    probe = make_trainer(prepared_small_ndsb, tmp_path / "probe")
    budget = 3 * probe.flops_per_step / TERA
    result = make_trainer(prepared_small_ndsb, tmp_path / "run", max_tflops=budget).train()
    assert (result.step, result.stopped_by) == (3, "flops")
    assert result.flops == 3 * probe.flops_per_step
    # the cap holds on a resume too: the run is done, a second call takes no step
    again = make_trainer(prepared_small_ndsb, tmp_path / "run", resume=True, max_tflops=budget).train()
    assert again.step == 3


def test_a_baseline_run_stops_at_its_flop_budget(ndsb_copy, tmp_path):
    from plankdiff.baselines.train import BaselineConfig, BaselineTrainer, training_rows
    from plankdiff.data.splits import long_tailed_split

    split = long_tailed_split(ndsb_copy)
    split.save(ndsb_copy)
    data = training_rows(ndsb_copy, method="simclr", split=split.name)

    def trainer(out, **budget):
        config = BaselineConfig.for_method("simclr", batch_size=8, width=8, **budget)
        return BaselineTrainer(config=config, dataset=ndsb_copy, data=data, out=out, show_progress=False)

    per_step = trainer(tmp_path / "probe", max_steps=1).flops_per_step
    assert per_step > 0
    result = trainer(tmp_path / "run", max_tflops=2 * per_step / TERA).train()
    assert (result.step, result.stopped_by) == (2, "flops")
    assert np.isclose(result.flops, 2 * per_step)
