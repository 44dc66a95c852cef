"""Feature extraction from the frozen tiny denoiser on real (small) NDSB images."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import kill_9_at_a_random_point
from plankdiff.data.splits import long_tailed_split
from plankdiff.diffusion.model import load_backbone
from plankdiff.features import extract as extract_module
from plankdiff.features import search as search_module
from plankdiff.features.blocks import list_blocks
from plankdiff.features.extract import ExtractionRequest, Extractor, extract_features, model_hash
from plankdiff.features.search import coarse_to_fine
from plankdiff.features.store import FeatureStore
from plankdiff.provenance import read_json


@pytest.fixture(scope="module")
def backbone(tiny_run):
    unet, scheduler = load_backbone(tiny_run)
    return unet, scheduler, model_hash(tiny_run)


def test_blocks_carry_stage_and_resolution(backbone):
    unet, _, _ = backbone
    blocks = list_blocks(unet)
    # tiny preset on 16 px: widths (16, 32), so two levels at 16 and 8 px.
    assert [(b.name, b.channels, b.resolution) for b in blocks] == [
        ("enc1@16", 16, 16),
        ("enc2@8", 32, 8),
        ("mid@8", 32, 8),
        ("dec1@8", 32, 8),
        ("dec2@16", 16, 16),
    ]
    with_subs = [b.name for b in list_blocks(unet, sub_blocks=True)]
    assert "dec2@16.res0" in with_subs and len(with_subs) > len(blocks)


def test_store_records_timesteps_with_alpha_bar_and_snr(backbone, prepared_small_ndsb, tmp_path):
    unet, scheduler, model_id = backbone
    store = extract_features(
        unet,
        scheduler,
        prepared_small_ndsb,
        out=tmp_path / "s",
        model_id=model_id,
        show_progress=False,
        request=ExtractionRequest(timesteps=(5, 100), batch_size=16),
    )
    assert store.complete and len(store.pairs) == 2 * 5
    pair = next(p for p in store.pair_table() if p["name"] == "mid@8/t=100")
    alpha_bar = float(scheduler.alphas_cumprod[100])
    assert pair["alpha_bar"] == pytest.approx(alpha_bar) and pair["snr"] == pytest.approx(
        alpha_bar / (1 - alpha_bar)
    )
    assert store.info["model_hash"] == model_id and store.info["dataset_key"] == prepared_small_ndsb.key
    x = store.load("mid@8/t=100")
    assert x.dtype == np.float16 and x.shape == (len(prepared_small_ndsb), 32) and np.isfinite(x).all()
    # Each stored value is recomputed here from the module docstring, with none of its code:
    # x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε, x_0 = pixels/127.5 − 1, ε drawn from default_rng([row, t, draw 0]);
    # one forward pass; the mid block's output averaged over its 8×8 positions.
    rows = np.array([0, 13, 47])
    x0 = torch.from_numpy(np.asarray(prepared_small_ndsb.images[rows], np.float32) / 127.5 - 1)
    captured = []
    handle = unet.mid_block.register_forward_hook(lambda _m, _i, out: captured.append(out.mean(dim=(2, 3))))
    for t in (5, 100):
        noise = np.stack(
            [np.random.default_rng([int(r), t, 0]).standard_normal((1, 16, 16), np.float32) for r in rows]
        )
        a = float(scheduler.alphas_cumprod[t])
        noisy = np.sqrt(a) * x0 + np.sqrt(1 - a) * torch.from_numpy(noise)
        captured.clear()
        with torch.inference_mode():
            unet(noisy, torch.full((len(rows),), t))
        stored = np.asarray(store.load(f"mid@8/t={t}")[store.positions(rows)], np.float32)
        np.testing.assert_allclose(stored, captured[0].numpy(), rtol=2e-3, atol=2e-3)
        assert np.abs(np.diff(stored, axis=0)).max() > 1e-2, "every image got the same features"
    handle.remove()


def test_bf16_precision_runs_on_the_cpu_close_to_fp32_and_gets_its_own_store_key(
    backbone, prepared_small_ndsb, tmp_path
):
    unet, scheduler, model_id = backbone
    stores = {
        precision: extract_features(
            unet,
            scheduler,
            prepared_small_ndsb,
            out=tmp_path / precision,
            rows=np.arange(16),
            model_id=model_id,
            show_progress=False,
            request=ExtractionRequest(timesteps=(5,), blocks=("mid@8",), batch_size=16, precision=precision),
        )
        for precision in ("auto", "fp32", "bf16")
    }
    fp32 = np.asarray(stores["fp32"].load("mid@8/t=5"), np.float32)
    bf16 = np.asarray(stores["bf16"].load("mid@8/t=5"), np.float32)
    assert not np.array_equal(fp32, bf16), "bf16 autocast did not change the CPU forward pass"
    assert np.abs(bf16 - fp32).max() < 0.05 * np.abs(fp32).max()
    np.testing.assert_array_equal(np.asarray(stores["auto"].load("mid@8/t=5"), np.float32), fp32)
    assert "precision" not in stores["auto"].info["request"], "auto must keep the keys of older stores"
    assert len({s.info["key"] for s in stores.values()}) == 3


def test_noise_is_seeded_per_image_not_per_batch(backbone, prepared_small_ndsb, tmp_path):
    unet, scheduler, model_id = backbone
    request = ExtractionRequest(timesteps=(50,), batch_size=4)
    forward = extract_features(
        unet,
        scheduler,
        prepared_small_ndsb,
        out=tmp_path / "a",
        rows=[2, 7, 11],
        model_id=model_id,
        request=request,
        show_progress=False,
    )
    other = extract_features(
        unet,
        scheduler,
        prepared_small_ndsb,
        out=tmp_path / "b",
        rows=[11, 2],
        model_id=model_id,
        request=ExtractionRequest(timesteps=(50,), batch_size=1),
        show_progress=False,
    )
    a, b = forward.load("dec2@16/t=50"), other.load("dec2@16/t=50")
    np.testing.assert_allclose(
        a[forward.positions([2, 11])], b[other.positions([2, 11])], rtol=1e-3, atol=1e-3
    )


def test_stopping_after_the_deepest_block_gives_the_same_features(backbone, prepared_small_ndsb):
    unet, scheduler, _ = backbone
    from plankdiff.diffusion.train import to_model_range

    rows = np.arange(8)
    x0 = to_model_range(torch.from_numpy(np.ascontiguousarray(prepared_small_ndsb.images[rows])))
    everything = Extractor(unet, scheduler, request=ExtractionRequest(timesteps=(5,)))
    full = everything(x0, rows, 5)
    everything.close()
    encoder = Extractor(
        unet, scheduler, request=ExtractionRequest(timesteps=(5,), blocks=("enc1@16", "enc2@8"))
    )
    calls = []
    handle = unet.up_blocks[0].register_forward_hook(lambda *_: calls.append(1))
    early = encoder(x0, rows, 5)
    handle.remove()
    encoder.close()
    assert not calls, "the decoder ran although only encoder blocks were requested"
    for name in ("enc1@16", "enc2@8"):
        torch.testing.assert_close(early[name], full[name])


def test_a_repeated_request_is_reused_and_another_model_is_refused(
    backbone, prepared_small_ndsb, tmp_path, monkeypatch
):
    unet, scheduler, model_id = backbone
    request = ExtractionRequest(timesteps=(5,), batch_size=16)
    extract_features(
        unet,
        scheduler,
        prepared_small_ndsb,
        out=tmp_path / "s",
        model_id=model_id,
        request=request,
        show_progress=False,
    )

    def refuse(*_args, **_kwargs):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(Extractor, "__call__", refuse)
    again = extract_features(
        unet,
        scheduler,
        prepared_small_ndsb,
        out=tmp_path / "s",
        model_id=model_id,
        request=request,
        show_progress=False,
    )
    assert again.complete
    with pytest.raises(FileExistsError, match="another model"):
        extract_features(
            unet,
            scheduler,
            prepared_small_ndsb,
            out=tmp_path / "s",
            model_id="other-weights",
            request=request,
            show_progress=False,
        )


def test_an_interrupted_extraction_resumes_where_it_stopped(
    backbone, prepared_small_ndsb, tmp_path, monkeypatch
):
    unet, scheduler, model_id = backbone
    request = ExtractionRequest(timesteps=(5, 25), batch_size=8)
    reference = extract_features(
        unet,
        scheduler,
        prepared_small_ndsb,
        out=tmp_path / "ref",
        model_id=model_id,
        request=request,
        show_progress=False,
    )
    original = Extractor.__call__
    batches = []

    def flaky(self, x0, rows, t):
        batches.append(int(rows[0]))
        if len(batches) > 4:  # two batches × two timesteps, then the "kill"
            raise KeyboardInterrupt
        return original(self, x0, rows, t)

    monkeypatch.setattr(Extractor, "__call__", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract_features(
            unet,
            scheduler,
            prepared_small_ndsb,
            out=tmp_path / "s",
            model_id=model_id,
            request=request,
            show_progress=False,
            checkpoint_rows=8,
        )
    assert FeatureStore(tmp_path / "s").rows_done() == 16
    batches.clear()
    monkeypatch.setattr(Extractor, "__call__", original)
    seen = []
    monkeypatch.setattr(
        Extractor,
        "__call__",
        lambda self, x0, rows, t: seen.append(int(rows[0])) or original(self, x0, rows, t),
    )
    resumed = extract_features(
        unet,
        scheduler,
        prepared_small_ndsb,
        out=tmp_path / "s",
        model_id=model_id,
        request=request,
        show_progress=False,
    )
    assert min(seen) == 16, "rows finished before the interruption were extracted again"
    for pair in reference.pairs:
        np.testing.assert_array_equal(np.asarray(resumed.load(pair)), np.asarray(reference.load(pair)))


def _search(backbone, dataset, out, **options):
    """Coarse-to-fine over t = 5, 100, 700 on 4 + 1 subset images per class, with quick probes."""
    unet, scheduler, model_id = backbone
    return coarse_to_fine(
        unet,
        scheduler,
        dataset,
        long_tailed_split(dataset),
        out=out,
        model_id=model_id,
        request=ExtractionRequest(timesteps=(5, 100, 700), batch_size=16),
        per_class_train=4,
        per_class_val=1,
        show_progress=False,
        probe_options={"epochs": 2, "min_steps": 10},
        **options,
    )


def test_coarse_to_fine_keeps_the_best_timesteps_for_every_image(backbone, prepared_small_ndsb, tmp_path):
    result = _search(backbone, prepared_small_ndsb, tmp_path, keep_timesteps=1)
    assert len(result.coarse.rows) == 4 * 4 + 4 * 1
    ranking = result.ranking
    # One row per coarse pair, best first, with validation scores on the 4 subset images.
    assert sorted(zip(ranking["block"], ranking["t"], strict=True)) == sorted(
        (p["block"], p["t"]) for p in result.coarse.pair_table()
    )
    assert len(ranking) == 5 * 3 and ranking["val_macro_f1"].is_monotonic_decreasing
    assert ranking["val_macro_f1"].between(0, 1).all()
    np.testing.assert_allclose(ranking["val_accuracy"] * 4, (ranking["val_accuracy"] * 4).round(), atol=1e-6)
    (kept,) = result.kept_timesteps
    assert ranking.loc[ranking["t"] == kept, "val_macro_f1"].max() == ranking["val_macro_f1"].max()
    assert {p["t"] for p in result.fine.pair_table()} == {kept}
    assert len(result.fine.rows) == len(prepared_small_ndsb)
    assert (tmp_path / "coarse_heatmap.png").exists()


# Subset validation macro-F1 per (block, t), made up so that each choice has one right answer:
# best block per t: t=100 0.9 (mid@8), t=700 0.88 (enc1@16), t=5 0.85 (dec2@16), so the two best
# timesteps are 100 and 700, although t=5 has by far the best mean (0.65 against 0.30 and 0.18).
# At t=100 alone the two best blocks are mid@8 (0.9) then dec1@8 (0.3); over every t they would be
# mid@8 and enc1@16 (0.88).
MADE_UP = {
    5: {"enc1@16": 0.6, "enc2@8": 0.6, "mid@8": 0.6, "dec1@8": 0.6, "dec2@16": 0.85},
    100: {"enc1@16": 0.1, "enc2@8": 0.1, "mid@8": 0.9, "dec1@8": 0.3, "dec2@16": 0.1},
    700: {"enc1@16": 0.88, "enc2@8": 0.0, "mid@8": 0.0, "dec1@8": 0.0, "dec2@16": 0.0},
}


@pytest.fixture
def made_up_ranking(monkeypatch):
    """The coarse ranking replaced by MADE_UP (validation accuracy = macro-F1, no ties)."""

    def rank(store, split, subset, **_options):
        rows = [
            {"pair": p["name"], "block": p["block"], "t": p["t"]}
            | {"val_macro_f1": MADE_UP[p["t"]][p["block"]], "val_accuracy": MADE_UP[p["t"]][p["block"]]}
            for p in store.pair_table()
        ]
        table = pd.DataFrame(rows).sort_values("val_macro_f1", ascending=False)
        return table.reset_index(drop=True)

    monkeypatch.setattr(search_module, "rank_pairs", rank)


def test_coarse_to_fine_keeps_the_timesteps_of_the_best_blocks_not_the_best_means(
    backbone, prepared_small_ndsb, tmp_path, made_up_ranking
):
    result = _search(backbone, prepared_small_ndsb, tmp_path, keep_timesteps=2)
    assert result.kept_timesteps == (100, 700) and result.kept_blocks is None
    fine_pairs = {(p["block"], p["t"]) for p in result.fine.pair_table()}
    assert fine_pairs == {(b, t) for b in MADE_UP[5] for t in (100, 700)}
    assert len(result.fine.rows) == len(prepared_small_ndsb)
    assert read_json(tmp_path / "search.json")["kept_timesteps"] == [100, 700]


def test_coarse_to_fine_can_keep_the_best_blocks_and_average_orientations_in_the_fine_pass(
    backbone, prepared_small_ndsb, tmp_path, made_up_ranking
):
    result = _search(
        backbone, prepared_small_ndsb, tmp_path, keep_timesteps=1, keep_blocks=2, fine_orientations=8
    )
    assert result.kept_timesteps == (100,)
    assert result.kept_blocks == ("mid@8", "dec1@8"), "blocks ranked, best first, at the kept timestep"
    fine_pairs = {(p["block"], p["t"]) for p in result.fine.pair_table()}
    assert fine_pairs == {("mid@8", 100), ("dec1@8", 100)}
    assert result.fine.info["request"]["orientations"] == 8
    assert result.coarse.info["request"]["orientations"] == 1, "the subset ranking stays at 1 orientation"
    search = read_json(tmp_path / "search.json")
    assert search["kept_blocks"] == ["mid@8", "dec1@8"] and search["fine_orientations"] == 8
    assert search["fine_forward_passes"] == len(prepared_small_ndsb) * 1 * 8


def test_a_tie_in_macro_f1_between_timesteps_is_broken_by_the_selection_rule(
    backbone, prepared_small_ndsb, tmp_path, monkeypatch
):
    # t=5 and t=100 tie on their best block's macro-F1; the one rule (selection.py) then looks at
    # validation accuracy, which t=100 wins (0.9 against 0.4).
    scores = {5: (0.5, 0.4), 100: (0.5, 0.9), 700: (0.1, 0.1)}

    def rank(store, split, subset, **_options):
        rows = [
            {"pair": p["name"], "block": p["block"], "t": p["t"]}
            | dict(zip(("val_macro_f1", "val_accuracy"), scores[p["t"]], strict=True))
            for p in store.pair_table()
        ]
        return pd.DataFrame(rows)

    monkeypatch.setattr(search_module, "rank_pairs", rank)
    assert _search(backbone, prepared_small_ndsb, tmp_path, keep_timesteps=1).kept_timesteps == (100,)


def test_noise_seeding_helper_is_deterministic():
    a = extract_module.seeded_noise(np.array([3, 4]), 10, 0, (1, 4, 4))
    b = extract_module.seeded_noise(np.array([3]), 10, 0, (1, 4, 4))
    assert (a[0] == b[0]).all() and not (a[0] == a[1]).all()


KILLED_EXTRACTION = """
import sys
from plankdiff.cli import app
from plankdiff.features import extract

real = extract.extract_features


def extract_features(*args, **kwargs):
    # The clock of the kill starts when the extraction does, not while the child imports torch.
    print("extracting", flush=True)
    # The CLI flushes every 2,048 rows; every 4 here (2 batches): the kill lands between and inside flushes.
    return real(*args, **kwargs, checkpoint_rows=4)


extract.extract_features = extract_features  # the CLI imports it when it runs
app(sys.argv[1:], prog_name="plankdiff")
"""


@pytest.mark.slow
def test_kill_9_at_a_random_point_then_rerun_equals_an_uninterrupted_extraction(
    tiny_run, prepared_small_ndsb, tmp_path
):
    from typer.testing import CliRunner

    from plankdiff.cli import app

    command = ["features", "extract", str(tiny_run), str(prepared_small_ndsb.root)]
    command += ["--timesteps", "5,50,200", "--batch-size", "2"]
    started = time.perf_counter()
    straight = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "straight")])
    duration = time.perf_counter() - started
    assert straight.exit_code == 0, straight.output
    out = tmp_path / "killed"
    killed = kill_9_at_a_random_point(
        KILLED_EXTRACTION, *command, "--out", out, ready="extracting", within=duration
    )
    progress = out / "progress.json"
    at_kill = f"killed after {killed.delay:.2f} s, " + (
        f"{read_json(progress)['rows_done']} rows recorded done" if progress.exists() else "before the store"
    )
    again = CliRunner().invoke(app, [*command, "--out", str(out)])
    assert again.exit_code == 0, f"{at_kill}: {again.output}"
    reference, resumed = FeatureStore(tmp_path / "straight"), FeatureStore(out)
    assert resumed.complete and resumed.info["key"] == reference.info["key"], at_kill
    assert resumed.pairs == reference.pairs and len(reference.pairs) == 3 * 5
    # Exactly equal: every image's noise is seeded by its row, and a resumed run starts at a
    # recorded flush, a multiple of the batch size, so every batch has the same rows as before.
    for pair in reference.pairs:
        np.testing.assert_array_equal(
            np.asarray(resumed.load(pair)), np.asarray(reference.load(pair)), at_kill
        )
