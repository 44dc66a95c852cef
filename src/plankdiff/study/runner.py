"""`plankdiff run EXPERIMENT.yaml`: the whole study, stage after stage.

Stages: prepare → per study seed (a replicate, `plan.py`): splits → pre-training of every backbone
with that seed (DDPM and baselines, equal minutes) → features (coarse-to-fine for diffusion, every
stage for baselines, raw pixels; one protocol for all) → probes per experiment → label efficiency →
k-means; then the headline rows (mean ± std over replicates) and the report. A stage whose inputs
hash matches its record in `<work>/stages/` is skipped; training and extraction resume where they
stopped.

What a replicate varies: the backbone seed (initial weights, data order), the probe seed, and with
`vary_partition` the train/val/test partition. Every backbone records the images it trained on and
every probe refuses to score one of them (`plankdiff.data.lineage`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from plankdiff.baselines.extract import LOGITS_FILE, extract_baseline_features, own_head_scores
from plankdiff.baselines.train import BaselineConfig, BaselineTrainer, training_rows
from plankdiff.data.info import contact_sheet
from plankdiff.data.lineage import readouts
from plankdiff.data.prepare import PreparedDataset, prepare, source_fingerprint
from plankdiff.data.splits import Split
from plankdiff.diffusion.config import load_config
from plankdiff.diffusion.model import load_backbone
from plankdiff.diffusion.train import DiffusionTrainer, sample_images, save_grid
from plankdiff.evaluation.clustering import kmeans_scores
from plankdiff.evaluation.label_efficiency import label_curve, plot_label_efficiency
from plankdiff.evaluation.open_set import open_set_scores
from plankdiff.evaluation.processing_shift import extract_like, prepare_shifts, processing_shift_scores
from plankdiff.features.extract import ExtractionRequest, extract_features, model_hash
from plankdiff.features.pairs import Selection
from plankdiff.features.raw import RAW_METHOD, raw_pixel_store
from plankdiff.features.search import coarse_to_fine
from plankdiff.features.store import FeatureStore
from plankdiff.probe.run import Shifted, load_pairs, probe_features
from plankdiff.provenance import cache_root, git_sha, read_json, sha256_json, write_json
from plankdiff.report.evaluations import OPEN_SET_TABLE, PROCESSING_SHIFT_TABLE
from plankdiff.study.config import ExperimentConfig
from plankdiff.study.plan import Experiment, Replicate, plan_replicate
from plankdiff.study.stages import StageCache

DIFFUSION = "diffusion"
RAW = RAW_METHOD
OWN_HEAD = "supervised (own head)"

Stores = dict[tuple[str, str, str], FeatureStore]  # (experiment, method, dataset key) → store


class StudyInterrupted(Exception):
    """A training stage stopped on a signal: it is not recorded as done, so a rerun resumes it."""


class Study:
    def __init__(
        self,
        config: ExperimentConfig,
        *,
        results_root: Path = Path("results"),
        work_root: Path | None = None,
        project_root: Path = Path.cwd(),
        dry_run: bool = False,
        console: Console | None = None,
    ):
        self.config = config
        self.results = Path(results_root) / config.name
        self.work = Path(work_root or cache_root() / "studies") / config.name
        self.project_root = project_root
        self.dry_run = dry_run
        self.console = console or Console()
        self.stage = StageCache(self.work / "stages", dry_run=dry_run, console=self.console)
        self.per_seed: list[dict] = []  # one summary per (seed, experiment, method)
        self.kmeans_rows: list[dict] = []
        self.efficiency_rows: list[dict] = []
        self.shift_rows: list[dict] = []  # per (seed, experiment, method, clean or shift)
        self.open_set_rows: list[dict] = []  # per (seed, experiment, method, OOD score)
        self.datasets: dict[str, PreparedDataset] = {}
        # The experiment label efficiency, k-means, the own head and the t-SNE figure are read on
        # (`Replicate.headline`: the same name in every replicate), once the replicates are planned.
        self.headline: Experiment | None = None

    @property
    def planned(self) -> list[tuple[str, str]]:
        return self.stage.planned

    def plan(self) -> list[tuple[str, str]]:
        return self.stage.planned

    # -- the study ------------------------------------------------------------------------------
    def run(self) -> Path | None:
        started = datetime.now(timezone.utc)
        self._prepare()
        if self.dry_run and len(self.datasets) < len(self.config.used_datasets):
            self.planned.append(("splits, pretraining, features, probes, report", "run after prepare"))
            return None
        replicates = [plan_replicate(self.config, self.datasets, seed) for seed in self.config.seeds]
        self.headline = replicates[0].headline
        for replicate in replicates:
            self._save_splits(replicate)
        if self.dry_run:
            for replicate in replicates:
                self._pretrain(replicate)
            self.planned.append(
                ("features, probes, label efficiency, k-means, report", "run where inputs changed")
            )
            return None
        # Replicate by replicate, with a report after each: a study cut short by the end of a
        # session leaves complete seeds (and a report that says how many) rather than every
        # backbone of every seed trained and nothing measured.
        runs: dict[int, dict[str, dict[str, Path]]] = {}
        report = None
        for done, replicate in enumerate(replicates, start=1):
            runs[replicate.seed] = self._pretrain(replicate)
            stores = self._features(replicate, runs[replicate.seed])
            self._probe(replicate, stores)
            self._processing_shift(replicate, stores)
            self._open_set(replicate, stores)
            self._label_efficiency(replicate, stores)
            self._kmeans(replicate, stores)
            report = self._report(started, runs, replicates[:done])
        return report

    def _source(self, name: str) -> Path:
        source = Path(self.config.dataset_specs[name].source)
        return source if source.is_absolute() else self.project_root / source

    def _prepare(self) -> None:
        # Only what the selected experiments read: `experiments: [ndsb]` prepares no ZooLake.
        for name in self.config.used_datasets:
            spec = self.config.dataset_specs[name]
            source = self._source(name)
            if not source.exists():
                raise ValueError(f"datasets.{name}.source: {source} does not exist")
            # The source's content is part of the key: a changed zip or folder is prepared again.
            inputs = spec.model_dump() | {
                "name": name,
                "source_hash": source_fingerprint(source),
                "background": spec.resolved_background,
            }
            done = self.stage(
                f"prepare/{name}", inputs, lambda s=spec, src=source, n=name: self._prepare_one(n, s, src)
            )
            if done is not None:
                self.datasets[name] = PreparedDataset.open(self._dataset_name(name))

    def _dataset_name(self, name: str) -> str:
        spec = self.config.dataset_specs[name]
        return f"{self.config.name}-{name}-{spec.size}"

    def _prepare_one(self, name, spec, source) -> dict:
        dataset = prepare(
            source,
            name=self._dataset_name(name),
            size=spec.size,
            mode=spec.mode,
            channels=spec.channels,
            normalise_polarity=spec.polarity,
            background=spec.background,
        )
        return {"images": len(dataset), "classes": len(dataset.classes), "skipped": dataset.info["n_skipped"]}

    def _save_splits(self, replicate: Replicate) -> None:
        for reason in replicate.skipped:
            self.console.print(f"[yellow]warning:[/yellow] seed {replicate.seed}: {reason}")
        for dataset_key, split in replicate.pretrain.values():
            split.save(self.datasets[dataset_key])
        for experiment in replicate.experiments:
            experiment.split.save(self.datasets[experiment.dataset])
            warning = experiment.split.selection_warning()
            if warning:  # not an error: reduced studies (caps) select on few images by design
                self.console.print(f"[yellow]warning:[/yellow] {experiment.name}: {warning}")
            for shifted in experiment.shifted:
                shifted.split.save(self.datasets[shifted.dataset])
            if experiment.open_set is not None:
                experiment.open_set.known.save(self.datasets[experiment.dataset])
                experiment.open_set.unknown.save(self.datasets[experiment.dataset])
            self.planned.append(
                (f"split/seed{replicate.seed}/{experiment.name}", f"{experiment.split.summary()}")
            )

    # -- pre-training ---------------------------------------------------------------------------
    def _pretrain(self, replicate: Replicate) -> dict[str, dict[str, Path]]:
        """pretrain key → method → run folder, for the pre-trainings this replicate's experiments use."""
        runs: dict[str, dict[str, Path]] = {}
        seed = replicate.seed
        used = {e.pretrain for e in replicate.experiments}
        # The file's pre-trainings in its order, then the background ablation's (`plan_replicate`).
        for key in (k for k in replicate.pretrain if k in used):
            dataset_key, split = replicate.pretrain[key]
            dataset = self.datasets[dataset_key]
            folder = self.work / "runs" / f"seed{seed}" / key
            inputs = pretrain_inputs(
                self.config, dataset.key, split.indices("train"), seed, self._training_precision()
            )
            runs[key] = {DIFFUSION: folder / DIFFUSION}
            self.stage(
                f"pretrain/seed{seed}/{key}/{DIFFUSION}",
                inputs,
                lambda d=dataset, s=split, f=folder / DIFFUSION: self._train_diffusion(d, s, f, seed),
            )
            for method in self.config.baselines.methods:
                runs[key][method] = folder / method
                self.stage(
                    f"pretrain/seed{seed}/{key}/{method}",
                    inputs
                    | {
                        "method": method,
                        "minutes": self.config.baselines.max_minutes,
                        "tflops": self.config.baselines.max_tflops,
                    }
                    # Only when set, so backbones trained before the option existed keep their key.
                    | ({"batch_size": batch} if (batch := self.config.baselines.batch_size) else {}),
                    lambda d=dataset, s=split, f=folder / method, m=method: self._train_baseline(
                        d, s, f, m, seed
                    ),
                )
        return runs

    def _training_precision(self) -> str:
        """What the study's `training_precision` resolves to on the device the backbones train on."""
        import torch

        from plankdiff.precision import resolve_precision

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return resolve_precision(self.config.training_precision, device)

    def _train_diffusion(self, dataset, split: Split, folder: Path, seed: int) -> dict:
        spec = self.config.diffusion
        config = load_config(
            spec.preset, **spec.train_overrides(), seed=seed, precision=self._training_precision()
        )
        trainer = DiffusionTrainer(
            config=config, dataset=dataset, out=folder, rows=split.indices("train"), resume=True
        )
        result = trainer.train()
        _refuse_interrupted(result, folder)
        unet, scheduler = load_backbone(folder)
        if spec.samples:
            save_grid(
                sample_images(unet, scheduler, n=spec.samples, steps=25), folder / "samples" / "final.png"
            )
        return {
            "minutes": result.elapsed_minutes,
            "images_seen": result.images_seen,
            "steps": result.step,
            "tflops": result.flops / 1e12,
            "stopped_by": result.stopped_by,
            "precision": result.precision,
            "parameters": sum(p.numel() for p in unet.parameters()),
            "last_loss": result.last_loss,
        }

    def _train_baseline(self, dataset, split: Split, folder: Path, method: str, seed: int) -> dict:
        budget = self.config.baselines
        config = BaselineConfig.for_method(
            method,
            max_minutes=budget.max_minutes,
            max_tflops=budget.max_tflops,
            batch_size=budget.batch_size,
            seed=seed,
            precision=self._training_precision(),
        )
        rows = training_rows(dataset, method=method, split=split.name)
        trainer = BaselineTrainer(config=config, dataset=dataset, data=rows, out=folder, resume=True)
        result = trainer.train()
        _refuse_interrupted(result, folder)
        info = read_json(folder / "baseline.json")
        return {
            "minutes": result.elapsed_minutes,
            "images_seen": result.images_seen,
            "steps": result.step,
            "tflops": result.flops / 1e12,
            "stopped_by": result.stopped_by,
            "precision": result.precision,
            "parameters": _trained_parameters(info.get("parameters")),
        }

    # -- features -------------------------------------------------------------------------------
    def _features(self, replicate: Replicate, runs: dict[str, dict[str, Path]]) -> Stores:
        """Each (pre-training, dataset) pair is extracted once over the union of the rows its
        experiments need, so the balanced and long-tailed NDSB experiments share one store."""
        spec, protocol, seed = self.config.features, self.config.protocol, replicate.seed
        needed: dict[tuple[str, str], set[int]] = {}
        for experiment in replicate.experiments:
            parts = [(experiment.dataset, experiment.split)] + [
                (s.dataset, s.split) for s in experiment.shifted
            ]
            for key, part in parts:
                rows = np.concatenate([part.indices(p) for p in ("train", "val", "test")])
                needed.setdefault((experiment.pretrain, key), set()).update(rows.tolist())
        built: Stores = {}
        request = ExtractionRequest(
            timesteps=spec.timesteps, batch_size=spec.batch_size, precision=protocol.precision
        )
        for pretrain in runs:
            home, search_split = replicate.pretrain[pretrain]
            backbone = runs[pretrain][DIFFUSION]
            unet, scheduler = load_backbone(backbone)
            model_id = model_hash(backbone)
            work = self.work / f"seed{seed}"
            # The fine pass covers every row the experiments need from the pre-training dataset,
            # so that store is used as is below instead of being extracted a second time.
            home_rows = np.array(sorted(needed[(pretrain, home)]), dtype=np.int64)
            inputs = {
                "model": model_id,
                "split": sha256_json(search_split.to_frame().to_dict("list")),
                "rows": sha256_json(home_rows.tolist()),
                "orientations": protocol.orientations,
                "precision": protocol.precision,
                **spec.model_dump(),
            }
            search = self.stage(
                f"search/seed{seed}/{pretrain}",
                inputs,
                lambda u=unet, sch=scheduler, sp=search_split, m=model_id, p=pretrain, hr=home_rows, b=backbone, d=self.datasets[home], w=work: (
                    _kept(
                        coarse_to_fine(
                            u,
                            sch,
                            d,
                            sp,
                            out=w / "search" / p,
                            model_id=m,
                            backbone=b,
                            request=request,
                            per_class_train=spec.per_class_train,
                            per_class_val=spec.per_class_val,
                            keep_timesteps=spec.keep_timesteps,
                            keep_blocks=spec.keep_blocks,
                            fine_orientations=protocol.orientations,
                            fine_rows=hr,
                            seed=seed,
                        )
                    )
                ),
            )
            fine = ExtractionRequest(
                timesteps=tuple(search["timesteps"]),
                blocks=tuple(search["blocks"]) if search["blocks"] else None,
                orientations=protocol.orientations,
                batch_size=spec.batch_size,
                precision=protocol.precision,
            )
            for (owner, key), rows in needed.items():
                if owner != pretrain:
                    continue
                dataset, rows = self.datasets[key], np.array(sorted(rows), dtype=np.int64)
                folder = work / "features" / pretrain
                built[(pretrain, DIFFUSION, key)] = extract_features(
                    unet,
                    scheduler,
                    dataset,
                    out=work / "search" / pretrain / "fine" if key == home else folder / f"{DIFFUSION}-{key}",
                    request=fine,
                    rows=rows,
                    model_id=model_id,
                    backbone=backbone,
                )
                union = Split(
                    f"union-seed{seed}-{pretrain}",
                    {"train": rows[:0], "val": rows[:0], "test": rows},
                    np.zeros(len(dataset), dtype=np.int64),
                    ["all"],
                )
                union.save(dataset)
                for method in self.config.baselines.methods:
                    built[(pretrain, method, key)] = extract_baseline_features(
                        runs[pretrain][method],
                        dataset,
                        out=folder / f"{method}-{key}",
                        split=union.name,
                        orientations=protocol.orientations,
                    )
                if self.config.baselines.include_raw_pixels:
                    built[(pretrain, RAW, key)] = raw_pixel_store(
                        dataset, rows=rows, out=folder / f"{RAW}-{key}", orientations=protocol.orientations
                    )
        return {
            (e.name, method, key): built[(e.pretrain, method, key)]
            for e in replicate.experiments
            for key in [e.dataset, *(s.dataset for s in e.shifted)]
            for method in self._methods()
        }

    def _methods(self) -> list[str]:
        return [DIFFUSION, *self.config.baselines.methods] + (
            [RAW] if self.config.baselines.include_raw_pixels else []
        )

    # -- probes ---------------------------------------------------------------------------------
    def _probe(self, replicate: Replicate, stores: Stores) -> None:
        protocol, seed = self.config.protocol, replicate.seed
        for experiment in replicate.experiments:
            for method in self._methods():
                store = stores[(experiment.name, method, experiment.dataset)]
                shifts = [
                    Shifted(
                        name=experiment.slug,
                        store=stores[(experiment.name, method, s.dataset)],
                        split=s.split,
                    )
                    for s in experiment.shifted
                ]
                kept, out = self._probe_folders(experiment.slug, method, seed)
                inputs = {
                    "store": store.info.get("key"),
                    "split": sha256_json(experiment.split.to_frame().to_dict("list")),
                    "shifted": [s.store.info.get("key") for s in shifts],
                    "seed": seed,
                    "protocol": protocol.model_dump(mode="json"),
                }
                result = self.stage(
                    f"probe/seed{seed}/{experiment.slug}/{method}",
                    inputs,
                    lambda st=store, sp=experiment.split, sh=shifts, o=kept: _probe_summary(
                        probe_features(
                            st,
                            sp,
                            shifted=sh,
                            seed=seed,
                            out=o,
                            config=self.config.model_dump(mode="json"),
                            **protocol.probe_arguments(),
                        )
                    ),
                    outputs=kept,
                )
                shutil.copytree(kept, out, dirs_exist_ok=True)
                self.per_seed.append(
                    {"seed": seed, "experiment": experiment.name, "method": method, **result}
                )
            if experiment is replicate.headline and "supervised" in self._methods():
                self._own_head(stores[(experiment.name, "supervised", experiment.dataset)], experiment, seed)

    def _probe_folders(self, slug: str, method: str, seed: int) -> tuple[Path, Path]:
        """(kept, out): a probe writes its files (predictions, selection, figures) in the work dir
        (`kept`) with its stage record, and the results folder gets a copy (`out`) after the stage,
        run or reused: a study resumed into another --results folder, or one whose results were
        removed, reports them all the same."""
        out = self.results / "metrics" / slug / method / f"seed{seed}"
        kept = self.work / "probes" / f"seed{seed}" / slug / method
        if not kept.exists() and out.exists():  # probed before the work dir kept a copy
            shutil.copytree(out, kept)
        return kept, out

    # -- evaluations: processing shift and open set ----------------------------------------------
    def _processing_shift(self, replicate: Replicate, stores: Stores) -> None:
        """Each method's probe, selected on clean validation, on shifted copies of the experiment's
        test images (built from the raw files, prepared like the clean set; features of the
        selected pairs only, with the same backbone)."""
        spec, protocol, seed = self.config.evaluations.processing_shift, self.config.protocol, replicate.seed
        for experiment in (e for e in replicate.experiments if e.processing_shift):
            clean = self.datasets[experiment.dataset]
            name = f"{self._dataset_name(experiment.dataset)}-seed{seed}-{experiment.slug}"
            inputs = {
                "dataset": clean.key,
                "rows": sha256_json(experiment.split.indices("test").tolist()),
                **spec.model_dump(mode="json"),
            }
            prepared = self.stage(
                f"shift-data/seed{seed}/{experiment.slug}",
                inputs,
                lambda e=experiment, c=clean, n=name: {
                    shift: dataset.name
                    for shift, dataset in prepare_shifts(
                        self._source(e.dataset),
                        c,
                        e.split,
                        out_dir=self.work / f"seed{seed}" / "shift-zips" / e.slug,
                        name=n,
                        shifts=spec.shifts,
                        seed=spec.seed,
                    ).items()
                },
            )
            shifted = {shift: PreparedDataset.open(dataset) for shift, dataset in prepared.items()}
            folder = self.work / f"seed{seed}" / "features" / experiment.pretrain / "processing-shift"
            for method in self._methods():
                store = stores[(experiment.name, method, experiment.dataset)]
                selected = self._selected(experiment.name, method, seed)
                pairs = list(selected["pairs"])
                kept, out = self._probe_folders(f"{experiment.slug}_processing-shift", method, seed)
                inputs = {
                    "store": store.info.get("key"),
                    "split": sha256_json(experiment.split.to_frame().to_dict("list")),
                    "shifted": {shift: dataset.key for shift, dataset in shifted.items()},
                    "pairs": pairs,
                    "seed": seed,
                    "protocol": protocol.model_dump(mode="json"),
                }

                def score(st=store, e=experiment, p=pairs, o=kept, m=method, f=folder, sh=shifted) -> dict:
                    shifted_stores = {
                        shift: extract_like(st, dataset, out=f / f"{m}-{e.slug}-{shift}", pairs=p)
                        for shift, dataset in sh.items()
                    }
                    result, table = processing_shift_scores(
                        st,
                        e.split,
                        shifted_stores,
                        seed=seed,
                        out=o,
                        config=self.config.model_dump(mode="json"),
                        **protocol.probe_arguments(),
                    )
                    return {"pair": result.selected_pair, "rows": _records(table)}

                record = self.stage(
                    f"processing-shift/seed{seed}/{experiment.slug}/{method}", inputs, score, outputs=kept
                )
                shutil.copytree(kept, out, dirs_exist_ok=True)
                if record["pair"] != selected["pair"]:  # the same fit on the same rows: it should not happen
                    self.console.print(
                        f"[yellow]warning:[/yellow] {experiment.name}, {method}, seed {seed}: the processing-shift "
                        f"refit selected {record['pair']}, the probe stage {selected['pair']}"
                    )
                self.shift_rows += [
                    {
                        "experiment": experiment.name,
                        "method": method,
                        "seed": seed,
                        "pair": record["pair"],
                        **row,
                    }
                    for row in record["rows"]
                ]

    def _open_set(self, replicate: Replicate, stores: Stores) -> None:
        """Each method's probe fitted and selected without the held-out classes; its unknown cut
        calibrated on the known classes' validation rows; rejection measured on test."""
        spec, protocol, seed = self.config.evaluations.open_set, self.config.protocol, replicate.seed
        for experiment in (e for e in replicate.experiments if e.open_set is not None):
            for method in self._methods():
                store = stores[(experiment.name, method, experiment.dataset)]
                kept, out = self._probe_folders(f"{experiment.slug}_open-set", method, seed)
                inputs = {
                    "store": store.info.get("key"),
                    "split": sha256_json(experiment.split.to_frame().to_dict("list")),
                    "held_out": list(experiment.open_set.held_out),
                    "keep": spec.keep,
                    "seed": seed,
                    "protocol": protocol.model_dump(mode="json"),
                }

                def score(st=store, e=experiment, o=kept) -> dict:
                    result = open_set_scores(
                        st,
                        e.split,
                        held_out=e.open_set.held_out,
                        keep=spec.keep,
                        seed=seed,
                        out=o,
                        config=self.config.model_dump(mode="json"),
                        **protocol.probe_arguments(),
                    )
                    known = {k: result.probe.test[k] for k in ("accuracy", "macro_f1")}
                    return {
                        "pair": result.probe.selected_pair,
                        "known": known,
                        "rows": _records(result.table),
                    }

                record = self.stage(
                    f"open-set/seed{seed}/{experiment.slug}/{method}", inputs, score, outputs=kept
                )
                shutil.copytree(kept, out, dirs_exist_ok=True)
                self.open_set_rows += [
                    {
                        "experiment": experiment.name,
                        "method": method,
                        "seed": seed,
                        "pair": record["pair"],
                        "held_out": len(experiment.open_set.held_out),
                        "known_accuracy": record["known"]["accuracy"],
                        "known_macro_f1": record["known"]["macro_f1"],
                        **row,
                    }
                    for row in record["rows"]
                ]

    def _own_head(self, store: FeatureStore, experiment: Experiment, seed: int) -> None:
        """The supervised network's own classifier on the same test rows (its classes are the split's)."""
        logits = np.load(store.root / LOGITS_FILE, mmap_mode="r")
        scores = own_head_scores(store, experiment.split, logits)
        self.per_seed.append(
            {
                "seed": seed,
                "experiment": experiment.name,
                "method": OWN_HEAD,
                "pair": "",
                "val": scores["val"],
                "test": scores["test"],
            }
        )

    def _selected(self, experiment: str, method: str, seed: int) -> dict:
        return next(
            r
            for r in self.per_seed
            if (r["experiment"], r["method"], r["seed"]) == (experiment, method, seed)
        )

    def _selection(self, experiment: str, method: str, seed: int) -> Selection:
        return Selection.parse(self._selected(experiment, method, seed)["pair"])

    # -- label efficiency and clustering --------------------------------------------------------
    def _label_efficiency(self, replicate: Replicate, stores: Stores) -> None:
        experiment = replicate.headline
        if experiment is None or not self.config.label_fractions:
            return
        seed = replicate.seed
        for method in self._methods():
            store = stores[(experiment.name, method, experiment.dataset)]
            pairs = self._selection(experiment.name, method, seed).names
            inputs = {
                "store": store.info.get("key"),
                "split": sha256_json(experiment.split.to_frame().to_dict("list")),
                "pairs": pairs,
                "seed": seed,
                "fractions": self.config.label_fractions,
            }
            result = self.stage(
                f"label-efficiency/seed{seed}/{method}",
                inputs,
                lambda st=store, p=pairs: label_curve(
                    st,
                    experiment.split,
                    p,
                    self.config.label_fractions,
                    seed,
                    self.config.protocol.probe_options(),
                ),
            )
            self.efficiency_rows += [{"method": method, "seed": seed, **r} for r in result]

    def _kmeans(self, replicate: Replicate, stores: Stores) -> None:
        """k-means on the test rows of the features each method's probe selected on validation (the
        first pair of a fused selection): no test label chooses what is clustered."""
        experiment = replicate.headline
        if not self.config.kmeans or experiment is None:
            return
        seed, test = replicate.seed, experiment.split.indices("test")
        for method in self._methods():
            store = stores[(experiment.name, method, experiment.dataset)]
            pair = self._selection(experiment.name, method, seed).first.name
            inputs = {
                "store": store.info.get("key"),
                "rows": sha256_json(test.tolist()),
                "pair": pair,
                "seed": seed,
            }

            def cluster(st=store, p=pair):
                x = np.asarray(st.load(p)[st.positions(test)], np.float32)
                return kmeans_scores(x, experiment.split.targets[test], seed=seed)

            scores = self.stage(f"kmeans/seed{seed}/{method}", inputs, cluster)
            self.kmeans_rows.append({"method": method, "seed": seed, "pair": pair, **scores})

    # -- headline -------------------------------------------------------------------------------
    def _varies(self) -> str:
        parts = ["backbone seed", "probe seed"] + (["partition"] if self.config.vary_partition else [])
        return ", ".join(parts)

    def headline_rows(self) -> list[dict]:
        """Mean ± std over replicates of every (experiment, setting, method, metric)."""
        rows: list[dict] = []
        frame = pd.DataFrame(self.per_seed)
        varies = self._varies()
        for (experiment, method), group in frame.groupby(["experiment", "method"], sort=False):
            group = group.sort_values("seed")
            pairs = ", ".join(sorted(set(group["pair"])))
            shifted = "shift" in group and group["shift"].notna().all()
            setting_in = "in period / source" if shifted else "in distribution"
            for metric in ("accuracy", "macro_f1"):
                values = [t[metric] for t in group["test"]]
                rows.append(_aggregate(experiment, setting_in, method, pairs, metric, values, varies))
                if shifted:
                    moved = [s[metric] for s in group["shift"]]
                    rows.append(_aggregate(experiment, "under shift", method, pairs, metric, moved, varies))
                    drops = [a - b for a, b in zip(values, moved, strict=True)]
                    rows.append(
                        _aggregate(experiment, "drop", method, pairs, f"drop_{metric}", drops, varies)
                    )
        if self.efficiency_rows:
            efficiency = pd.DataFrame(self.efficiency_rows)
            for (method, fraction), group in efficiency.groupby(["method", "fraction"]):
                rows.append(
                    _aggregate(
                        f"{self.headline.dataset}/label efficiency",
                        f"{fraction:.0%} of train labels",
                        method,
                        "",
                        "accuracy",
                        list(group["accuracy"]),
                        varies,
                    )
                )
        if self.kmeans_rows:
            clusters = pd.DataFrame(self.kmeans_rows)
            for method, group in clusters.groupby("method", sort=False):
                for metric in ("nmi", "ari", "hungarian_accuracy", "purity"):
                    rows.append(
                        _aggregate(
                            f"{self.headline.dataset}/k-means (K = classes)",
                            "test images, pair selected by the probe on validation",
                            method,
                            ", ".join(sorted(set(group["pair"]))),
                            metric,
                            list(group[metric]),
                            varies + ", k-means initialisation",
                        )
                    )
        return rows

    # -- report ---------------------------------------------------------------------------------
    def _report(self, started: datetime, runs, replicates: list[Replicate]) -> Path:
        from plankdiff.report import render_report, write_tables
        from plankdiff.report.render import TRAINING_DIR

        figures = self.results / "figures"
        tables = self.results / "tables"
        figures.mkdir(parents=True, exist_ok=True)
        tables.mkdir(parents=True, exist_ok=True)
        captions = {}
        budgets = []
        for seed, by_key in runs.items():
            for key, methods in by_key.items():
                for method in methods:
                    result = self.stage.result(f"pretrain/seed{seed}/{key}/{method}") or {}
                    # The report draws every backbone's loss curve; run folders live under the
                    # work dir, so the results folder gets a copy of each (small) training log.
                    log = methods[method] / "metrics.jsonl"
                    if log.exists():
                        copy = self.results / TRAINING_DIR / key / method / f"seed{seed}.jsonl"
                        copy.parent.mkdir(parents=True, exist_ok=True)
                        copy.write_bytes(log.read_bytes())
                    budgets.append(
                        {
                            "method": f"{method} ({key})",
                            "seed": seed,
                            "minutes": result.get("minutes"),
                            "tflops": result.get("tflops"),
                            "steps": result.get("steps"),
                            "images_seen": result.get("images_seen"),
                            "parameters": result.get("parameters"),
                            "precision": result.get("precision"),
                        }
                    )
                sample = methods[DIFFUSION] / "samples" / "final.png"
                if seed == self.config.seeds[0] and sample.exists():
                    target = figures / f"samples_{key}.png"
                    target.write_bytes(sample.read_bytes())
                    captions[target.name] = (
                        f"DDIM samples of the DDPM pre-trained on {key} (25 steps, EMA weights)"
                    )
        first = self.config.seeds[0]
        for metrics_dir in sorted((self.results / "metrics").glob(f"*/{DIFFUSION}/seed{first}")):
            for png in metrics_dir.glob("*.png"):
                target = figures / f"{metrics_dir.parent.parent.name}_{png.name}"
                target.write_bytes(png.read_bytes())
                captions[target.name] = (
                    f"{metrics_dir.parent.parent.name}, diffusion, seed {first}: {png.stem.replace('_', ' ')}"
                )
        for name, dataset in self.datasets.items():
            contact_sheet(dataset, figures / f"contact_{name}.png", per_class=6, cell=32)
            captions[f"contact_{name}.png"] = (
                f"{name}: six random prepared images per class (as the backbones see them), "
                "with the class's image count"
            )
        headline = self.headline.name if self.headline else ""
        _embedding_figure(self, figures / "embedding.png")
        captions["embedding.png"] = (
            f"t-SNE of the selected diffusion features, {headline} test images, coloured by class"
        )
        if self.efficiency_rows:
            efficiency = pd.DataFrame(self.efficiency_rows)
            efficiency.to_csv(tables / "label_efficiency.csv", index=False)
            plot_label_efficiency(efficiency, figures / "label_efficiency.png")
            captions["label_efficiency.png"] = (
                f"{headline}: test accuracy against the fraction of labelled training images"
            )
        if self.kmeans_rows:
            pd.DataFrame(self.kmeans_rows).to_csv(tables / "kmeans.csv", index=False)
        if self.shift_rows:
            pd.DataFrame(self.shift_rows).to_csv(tables / PROCESSING_SHIFT_TABLE, index=False)
        if self.open_set_rows:
            pd.DataFrame(self.open_set_rows).to_csv(tables / OPEN_SET_TABLE, index=False)
        write_json(figures / "captions.json", captions)
        pd.DataFrame(self.headline_rows()).to_csv(self.results / "headline.csv", index=False)
        write_json(
            self.results / "study.json",
            {
                "name": self.config.name,
                "description": self.config.description,
                "git_sha": git_sha(),
                "started": started.isoformat(),
                "finished": datetime.now(timezone.utc).isoformat(),
                "versions": _versions(),
                "machine": {
                    "platform": platform.platform(),
                    "processor": platform.processor(),
                    "cpus": os.cpu_count(),
                },
                "config": self.config.model_dump(mode="json"),
                "datasets": {
                    k: {"images": len(d), "classes": len(d.classes), "source": d.info["source"]}
                    for k, d in self.datasets.items()
                },
                "budgets": budgets,
                "seeds": list(self.config.seeds),
                "seeds_completed": [r.seed for r in replicates],
                # experiment → its folder under metrics/ (the report reads per-class files there)
                "experiments": {e.name: e.slug for r in replicates for e in r.experiments},
                # ablated experiment → the experiment it repeats (`report.evaluations.ablation_table`)
                "ablations": {e.name: e.ablation_of for e in replicates[0].experiments if e.ablation_of},
                "varies": self._varies(),
                "test_readouts": self._test_readouts(replicates),
                "notes": self._notes() + self._partial_note(replicates),
            },
        )
        write_tables(self.results)
        return render_report(self.results)

    def _test_readouts(self, replicates: list[Replicate]) -> list[dict]:
        """How often each scored split's test rows have been read, over every run that scored them."""
        seen, out = set(), []
        for replicate in replicates:
            for experiment in replicate.experiments:
                for dataset, split in [(experiment.dataset, experiment.split)] + [
                    (s.dataset, s.split) for s in experiment.shifted
                ]:
                    if (dataset, split.name) in seen:
                        continue
                    seen.add((dataset, split.name))
                    out.append(
                        {
                            "dataset": dataset,
                            "split": split.name,
                            "readouts": readouts(self.datasets[dataset], split.name),
                        }
                    )
        return out

    def _partial_note(self, replicates: list[Replicate]) -> list[str]:
        if len(replicates) == len(self.config.seeds):
            return []
        done = ", ".join(str(r.seed) for r in replicates)
        return [
            f"Partial study: seeds {done} of {len(self.config.seeds)} planned are complete; "
            "rerun the same command to resume the rest."
        ]

    def _notes(self) -> list[str]:
        notes = [
            f"Each seed is a replicate: {self._varies()} vary across seeds; ± is the standard deviation over "
            "replicates. Every backbone recorded the images it trained on, and no probe scored one of them.",
            "Every choice (pair, timestep, probe loss, learning rate, weight decay, fusion) is made on validation "
            "macro-F1 (then accuracy, then name); test rows are read once per replicate, for the selected probe.",
            "Every method's features go through the same protocol: "
            + ", ".join(f"{k} {v}" for k, v in self.config.protocol.model_dump(mode="json").items())
            + ".",
            "Under shift, the probe selected in distribution is applied unchanged to the shifted test set.",
            "k-means clusters the test images in the features each method's probe selected on validation.",
        ]
        evaluations = self.config.evaluations
        if evaluations.processing_shift is not None:
            notes.append(
                "Processing shift: shifted copies of the test images, built from the raw files and prepared like "
                "the clean set; only the selected pairs' features are extracted from them. Each method's probe is "
                "refitted with the same seed, rows and protocol (so the same selection on clean validation) and "
                "applied to the clean test rows (a second readout of the same numbers) and to each shift."
            )
        if evaluations.open_set is not None:
            spec = evaluations.open_set
            notes.append(
                f"Open set: every {spec.hold_out_every}th class name (sorted) is held out of the probe, a rule fixed "
                "before any result; the probe is fitted and selected on the other classes' train and validation "
                f"rows, and each out-of-distribution score's cut keeps {spec.keep:.0%} of their validation images. "
                "Test: share of held-out-class images rejected, of known-class images kept, and AUROC."
            )
        if "ndsb-pwssc" in self.config.experiments:
            notes.append(
                "Without polarity normalisation, NDSB and PWSSC are prepared as recorded and read by the same "
                "backbone, which was trained on polarity-normalised NDSB."
            )
        if self.config.label_fractions and "supervised" in self._methods():
            notes.append(
                "Label efficiency: only the linear probe sees the reduced share of labels. The supervised backbone "
                "was pre-trained on every training label, so its rows are a reference, not a few-label result."
            )
        return notes


def pretrain_inputs(config: ExperimentConfig, dataset_key: str, rows, seed: int, precision: str) -> dict:
    """What a pre-training stage's key hashes (the baselines add their method and budget)."""
    return {
        "dataset": dataset_key,
        "rows": sha256_json(np.asarray(rows).tolist()),
        "seed": seed,
        **config.diffusion.identity(),
        # Every backbone trained before bf16 training existed was fp32: its key stays as it was.
        **({"precision": precision} if precision != "fp32" else {}),
    }


def _versions() -> dict[str, str]:
    """The versions the numbers were made with: Python and the packages that compute them."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("plankdiff", "torch", "diffusers", "lightly", "scikit-learn", "numpy", "pandas"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def _aggregate(experiment, setting, method, pair, metric, values, varies) -> dict:
    return {
        "experiment": experiment,
        "setting": setting,
        "method": method,
        "pair": pair,
        "metric": metric,
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
        "n_seeds": len(values),
        "varies": varies,
    }


def _records(table: pd.DataFrame) -> list[dict]:
    """A table's rows as plain JSON values (numpy bools and integers are not), for a stage record."""
    return json.loads(table.to_json(orient="records"))


def _kept(result) -> dict:
    return {"timesteps": list(result.kept_timesteps), "blocks": list(result.kept_blocks or [])}


def _refuse_interrupted(result, folder: Path) -> None:
    if result.stopped_by == "interrupt":
        raise StudyInterrupted(
            f"{folder}: training was interrupted at step {result.step} and saved a checkpoint; "
            "rerun the same command to resume it"
        )


def _trained_parameters(counts) -> int | None:
    """Baselines record {backbone, trainable, total}; the budget table compares what each method trains."""
    return counts.get("trainable") if isinstance(counts, dict) else counts


def _probe_summary(result) -> dict:
    summary = {
        "pair": result.selected.name,
        "pairs": result.selected.names,
        "loss": result.hyperparameters.get("loss"),
        "val": result.val,
        "test": {k: result.test[k] for k in ("accuracy", "macro_f1", "balanced_accuracy")},
        "lineage": result.lineage,
    }
    if result.shifted:
        shifted = next(iter(result.shifted.values()))
        summary["shift"] = {k: shifted[k] for k in ("accuracy", "macro_f1", "balanced_accuracy")}
    return summary


def _embedding_figure(study: Study, out: Path) -> None:
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    if study.headline is None:
        return
    slug = study.headline.slug
    record = study.results / "metrics" / slug / DIFFUSION / f"seed{study.config.seeds[0]}" / "selected.json"
    if not record.exists():
        return
    selected = read_json(record)
    store = FeatureStore(Path(selected["features"]))
    split = Split.load(PreparedDataset.open(store.info["dataset"]), selected["split"])
    test = split.indices("test")[:2000]
    x = np.concatenate(
        list(
            load_pairs(
                store, Selection.parse(selected["pair"]).names, store.positions(test), with_size=False
            ).values()
        ),
        axis=1,
    )
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    if len(test) < 4:  # t-SNE needs a few points per neighbourhood; nothing to show on fewer
        return
    # Perplexity 30 (sklearn's default) needs more than 30 points; a small collection of one's own
    # gets the largest that keeps 3 points per neighbourhood.
    perplexity = min(30.0, (len(test) - 1) / 3)
    points = TSNE(n_components=2, init="pca", random_state=0, perplexity=perplexity).fit_transform(x)
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    ax.scatter(points[:, 0], points[:, 1], c=split.targets[test], cmap="tab20", s=4)
    ax.set_title(f"t-SNE of {selected['pair']} ({study.headline.name} test, {len(test)} images)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.savefig(out, dpi=120, bbox_inches="tight")


__all__ = ["Study", "StudyInterrupted"]
