"""The study CLI's dry-run listing."""

from __future__ import annotations

from rich.console import Console

from plankdiff.study.cli import print_plan


def test_a_split_summary_is_printed_under_its_own_stage_name():
    console = Console(record=True, width=60)
    summary = "{'train': 15167, 'val': 2098, 'test': 4200, 'classes': 121, 'caps': '300/40/80'}"
    print_plan(
        console,
        [("split/seed0/ndsb/long-tailed", summary), ("pretrain/seed0/ndsb/diffusion", "reuse")],
    )
    lines = console.export_text().splitlines()
    assert lines[0].split() == ["split", "split/seed0/ndsb/long-tailed"]
    assert lines[1].strip() == summary  # soft wrap: one line however narrow the console
    assert lines[2].split() == ["reuse", "pretrain/seed0/ndsb/diffusion"]
