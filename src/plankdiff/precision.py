"""Which floating-point precision a network runs in: one detection of bf16 hardware, one rule.

bf16 autocast (matrix products and convolutions in bfloat16, weights, optimiser state and losses
in float32) pays where the hardware multiplies bfloat16 natively: CUDA GPUs from Ampere on, and
CPUs with AVX512-BF16 or AMX units (bench/results/extract.md, bench/results/train_precision.md).
Elsewhere the CPU emulates it and runs slower than float32, so `auto` keeps float32 there.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from plankdiff.choices import Precision

Resolved = Literal["fp32", "bf16"]


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX tiles), as PyTorch's
    own CPU feature detection (cpuinfo) reports it."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def device_has_bf16_units(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_bf16_units()


def resolve_precision(precision: Precision, device: torch.device | str, *, cpu_auto: bool = True) -> Resolved:
    """`auto` → bf16 where `device` has bf16 units, else fp32; fp32 and bf16 are taken as asked.
    `cpu_auto=False` keeps `auto` at fp32 on every CPU (feature extraction: features already stored
    by a study were read in fp32, and a study mixing the two would compare unlike features)."""
    device = torch.device(device)
    if precision != "auto":
        return precision
    if device.type == "cpu" and not cpu_auto:
        return "fp32"
    return "bf16" if device_has_bf16_units(device) else "fp32"


def autocast(device: torch.device | str, precision: Resolved) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when `precision` is bf16; a no-op context for fp32."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


__all__ = ["Resolved", "autocast", "cpu_has_bf16_units", "device_has_bf16_units", "resolve_precision"]
