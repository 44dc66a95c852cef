"""Where computation runs: one rule for every stage (training, extraction, probes), the CLI's
`--device auto` and the study alike."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """CUDA when torch sees a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_device(device: str | torch.device) -> torch.device:
    """`auto` → `default_device()`; anything else ("cpu", "cuda", "cuda:1", a torch.device) as given."""
    return default_device() if device == "auto" else torch.device(device)
