"""Which precision `auto` picks: bf16 only where the device multiplies bfloat16 in hardware."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plankdiff import precision
from plankdiff.precision import autocast, cpu_has_bf16_units, resolve_precision


@pytest.mark.parametrize("units", [True, False])
def test_auto_follows_the_cpu_detection_and_explicit_choices_are_kept(monkeypatch, units):
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: units)
    assert resolve_precision("auto", "cpu") == ("bf16" if units else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"  # asked for: emulated where there are no units
    # extraction keeps fp32 on every CPU under auto
    assert resolve_precision("auto", "cpu", cpu_auto=False) == "fp32"


def test_auto_on_a_cuda_device_needs_a_bf16_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, s=supported: s)
        assert resolve_precision("auto", "cuda", cpu_auto=False) == ("bf16" if supported else "fp32")


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the Linux CPU flags")
def test_the_detection_agrees_with_the_kernels_cpu_flags():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    assert cpu_has_bf16_units() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def test_autocast_runs_products_in_bf16_only_when_chosen():
    a, b = torch.randn(4, 8), torch.randn(8, 2)
    with autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32
