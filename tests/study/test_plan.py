"""Planning reads only what the selected experiments use."""

from __future__ import annotations

from pathlib import Path

from plankdiff.study.config import load_experiment
from plankdiff.study.plan import plan_replicate


def test_an_unused_pretrain_entry_is_not_planned_so_its_dataset_need_not_be_there(
    prepared_small_ndsb, tmp_path: Path
):
    """`experiments: [ndsb]` beside ZooLake temporal entries: planned with NDSB alone (before,
    every pretrain entry's split was drawn, and ZooLake's needed its prepared dataset)."""
    experiment = tmp_path / "ndsb-only.yaml"
    experiment.write_text("""
name: ndsb-only
experiments: [ndsb]
datasets:
  ndsb: {source: a.zip}
  zoolake: {source: b.zip}
pretrain:
  ndsb: {dataset: ndsb, split: long-tailed}
  zoolake-2018: {dataset: zoolake, split: "temporal:2018-2019"}
diffusion: {preset: tiny, max_minutes: 0.1}
baselines: {methods: [simclr], max_minutes: 0.1}
splits: {balanced_min_train: 2}
""")
    replicate = plan_replicate(load_experiment(experiment), {"ndsb": prepared_small_ndsb}, seed=0)
    assert set(replicate.pretrain) == {"ndsb"}
    assert [e.name for e in replicate.experiments] == ["ndsb/long-tailed", "ndsb/balanced"]
