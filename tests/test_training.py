"""The one training loop, in bf16 and fp32, for the DDPM and a baseline: finite losses, float32
master weights and optimiser state, products run in bf16 under autocast, and the precision recorded."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from plankdiff.baselines.train import BaselineConfig, BaselineTrainer, training_rows
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import long_tailed_split
from plankdiff.diffusion.config import TrainConfig
from plankdiff.training import StopReason, Trainer


def _spy_autocast(monkeypatch, trainer: Trainer) -> list[bool]:
    """Records, at each call of the trainer's loss, whether CPU autocast to bf16 is on."""
    seen, real = [], trainer.loss

    def loss(indices):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return real(indices)

    monkeypatch.setattr(trainer, "loss", loss)
    return seen


def _check_weights_and_losses(run, parameters, optimizer) -> list[float]:
    assert all(p.dtype == torch.float32 for p in parameters), "master weights must stay float32"
    moments = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses and all(np.isfinite(losses))
    return losses


@pytest.mark.parametrize("chosen", ["bf16", "fp32"])
def test_ddpm_trains_in_the_chosen_precision(
    prepared_small_ndsb, make_trainer, tmp_path, monkeypatch, chosen
):
    trainer = make_trainer(prepared_small_ndsb, tmp_path / "run", precision=chosen, log_every=1, max_steps=3)
    seen = _spy_autocast(monkeypatch, trainer)
    result = trainer.train()
    assert (result.step, result.stopped_by, result.precision) == (3, StopReason.STEPS, chosen)
    assert seen == [chosen == "bf16"] * 3
    _check_weights_and_losses(tmp_path / "run", list(trainer.model.parameters()), trainer.optimizer)
    assert all(p.dtype == torch.float32 for p in trainer.ema.shadow_params)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (record["precision"], record["diffusion"]["train"]["precision"]) == (chosen, chosen)
    assert (record["step"], record["stopped_by"]) == (3, "steps")


@pytest.mark.parametrize("method", ["simclr", "mae"])
def test_baseline_trains_in_bf16_with_float32_master_weights(
    prepared_small_ndsb, tmp_path, monkeypatch, method
):
    dataset = PreparedDataset(shutil.copytree(prepared_small_ndsb.root, tmp_path / "ndsb-small"))
    long_tailed_split(dataset, seed=0).save(dataset)
    width = {"simclr": 8, "mae": 24}[method]
    config = BaselineConfig.for_method(
        method, width=width, batch_size=8, max_steps=3, log_every=1, precision="bf16"
    )
    data = training_rows(dataset, method=method, split="long-tailed-s0")
    trainer = BaselineTrainer(
        config=config, dataset=dataset, data=data, out=tmp_path / "run", show_progress=False
    )
    seen = _spy_autocast(monkeypatch, trainer)
    assert trainer.train().precision == "bf16"
    assert seen == [True] * 3
    _check_weights_and_losses(tmp_path / "run", trainer.trainable_parameters(), trainer.optimizer)
    assert json.loads((tmp_path / "run" / "baseline.json").read_text())["precision"] == "bf16"


def test_auto_resolves_to_fp32_where_the_cpu_has_no_bf16_units(
    prepared_small_ndsb, make_trainer, tmp_path, monkeypatch
):
    from plankdiff import precision

    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: False)
    trainer = make_trainer(prepared_small_ndsb, tmp_path / "run", max_steps=1)
    assert trainer.config.train.precision == "auto" and trainer.precision == "fp32"


def test_the_former_mixed_precision_field_still_loads():
    assert TrainConfig(mixed_precision="no").precision == "fp32"
    assert TrainConfig(mixed_precision="bf16").precision == "bf16"
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")


def test_a_baseline_run_recorded_before_precision_existed_resumes(prepared_small_ndsb, tmp_path):
    dataset = PreparedDataset(shutil.copytree(prepared_small_ndsb.root, tmp_path / "ndsb-small"))
    data = training_rows(dataset, method="simclr", split=None, all_rows=True)

    def trainer(steps: int, chosen: str, resume: bool) -> BaselineTrainer:
        config = BaselineConfig.for_method("simclr", width=8, batch_size=8, max_steps=steps, precision=chosen)
        return BaselineTrainer(
            config=config,
            dataset=dataset,
            data=data,
            out=tmp_path / "run",
            resume=resume,
            show_progress=False,
        )

    trainer(2, "fp32", False).train()
    record_file = tmp_path / "run" / "baseline.json"
    old = json.loads(record_file.read_text())
    del old["precision"], old["config"]["precision"]  # as written before this option
    record_file.write_text(json.dumps(old))
    resumed = trainer(3, "auto", True).train()  # another precision is not another recipe
    assert resumed.step == 3
