"""Constants the deploy fixtures and tests share (imported by name: tests/deploy has no __init__)."""

from pathlib import Path

PAIRS = ["dec2@16/t=5", "enc2@8/t=10"]  # two timesteps: features from two forward passes, concatenated
SPLIT = "long-tailed-s0"
IFCB = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "ifcb"
