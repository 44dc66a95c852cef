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
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from plankdiff.baselines.extract import LOGITS_FILE, extract_baseline_features, own_head_scores
from plankdiff.data.prepare import PreparedDataset, prepare, source_fingerprint
from plankdiff.data.splits import Split
from plankdiff.diffusion.model import load_backbone
from plankdiff.evaluation.clustering import pair_kmeans_scores
from plankdiff.evaluation.label_efficiency import label_curve
from plankdiff.evaluation.open_set import OOD_SCORES, open_set_scores
from plankdiff.evaluation.processing_shift import extract_like, prepare_shifts, shifted_dataset_scores
from plankdiff.evaluation.quantification import mix_reference_scores, quantification_scores
from plankdiff.features.extract import ExtractionRequest, extract_features, model_hash
from plankdiff.features.pairs import Selection
from plankdiff.features.raw import RAW_METHOD, raw_pixel_store
from plankdiff.features.search import coarse_to_fine
from plankdiff.features.store import FeatureStore
from plankdiff.probe.run import Shifted, probe_features
from plankdiff.provenance import cache_root, sha256_json
from plankdiff.report.study import (
    HeadlineExperiment,
    StudyRows,
    headline_rows,
    what_varies,
    write_study_report,
)
from plankdiff.study.config import ExperimentConfig
from plankdiff.study.plan import Experiment, Replicate, plan_replicate
from plankdiff.study.pretrain import (
    StudyInterrupted,
    baseline_inputs,
    pretrain_inputs,
    stale_baseline,
    stale_diffusion,
    train_baseline,
    train_diffusion,
    training_precision,
)
from plankdiff.study.stages import StageCache

DIFFUSION = "diffusion"
RAW = RAW_METHOD
OWN_HEAD = "supervised (own head)"
NO_CLASSIFIER = "(no classifier)"  # the quantification table's reference rows

Stores = dict[tuple[str, str, str], FeatureStore]  # (experiment, method, dataset key) → store


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
        # Backbones another study under the same work root trained with the same inputs are copied
        # from it rather than trained again (`StageCache`, `shareable`).
        others = sorted(self.work.parent.glob("*/stages")) if self.work.parent.is_dir() else []
        self.stage = StageCache(self.work / "stages", dry_run=dry_run, console=self.console, donors=others)
        self.per_seed: list[dict] = []  # one summary per (seed, experiment, method)
        self.kmeans_rows: list[dict] = []
        self.efficiency_rows: list[dict] = []
        self.shift_rows: list[dict] = []  # per (seed, experiment, method, clean or shift)
        self.open_set_rows: list[dict] = []  # per (seed, experiment, method, OOD score)
        self.quantification_rows: list[dict] = []  # per (seed, experiment, method, counting, day)
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
            self._quantification(replicate, stores)
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
            inputs = spec.identity() | {"name": name, "source_hash": source_fingerprint(source)}
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
            markers=spec.resolved_markers,
            noise_ceiling=spec.noise_ceiling,
        )
        return {"images": len(dataset), "classes": len(dataset.classes), "skipped": dataset.info["n_skipped"]}

    def _save_splits(self, replicate: Replicate) -> None:
        """Every split of the replicate into its prepared dataset's folder; a dry run writes none
        (it may be pointed at the cache of a study that is running and reading them)."""

        def save(split: Split, dataset_key: str) -> None:
            if not self.dry_run:
                split.save(self.datasets[dataset_key])

        for reason in replicate.skipped:
            self.console.print(f"[yellow]warning:[/yellow] seed {replicate.seed}: {reason}")
        for dataset_key, split in replicate.pretrain.values():
            save(split, dataset_key)
        for experiment in replicate.experiments:
            save(experiment.split, experiment.dataset)
            warning = experiment.split.selection_warning()
            if warning:  # not an error: reduced studies (caps) select on few images by design
                self.console.print(f"[yellow]warning:[/yellow] {experiment.name}: {warning}")
            for shifted in experiment.shifted:
                save(shifted.split, shifted.dataset)
            if experiment.open_set is not None:
                save(experiment.open_set.known, experiment.dataset)
                save(experiment.open_set.unknown, experiment.dataset)
            if experiment.quantification is not None:
                target = experiment.quantification
                save(target.split, target.dataset)
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
                self.config, dataset.key, split.indices("train"), seed, training_precision(self.config)
            )
            runs[key] = {DIFFUSION: folder / DIFFUSION}
            self.stage(
                f"pretrain/seed{seed}/{key}/{DIFFUSION}",
                inputs,
                lambda d=dataset, s=split, f=folder / DIFFUSION: train_diffusion(self.config, d, s, f, seed),
                outputs=folder / DIFFUSION,
                verify=lambda f: stale_diffusion(self.config, f, seed),
                shareable=True,
            )
            for method in self.config.baselines.methods:
                runs[key][method] = folder / method
                self.stage(
                    f"pretrain/seed{seed}/{key}/{method}",
                    baseline_inputs(self.config, inputs, method),
                    lambda d=dataset, s=split, f=folder / method, m=method: train_baseline(
                        self.config, d, s, f, m, seed
                    ),
                    outputs=folder / method,
                    verify=lambda f, m=method, s=split: stale_baseline(self.config, f, m, seed, split=s),
                    shareable=True,
                )
        return runs

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
            unet, scheduler = load_backbone(backbone, device="auto")  # where the backbone trained
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
                    result, table = shifted_dataset_scores(
                        st,
                        e.split,
                        sh,
                        features_dir=f,
                        prefix=f"{m}-{e.slug}-",
                        pairs=p,
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
                self.shift_rows += self._refit_rows(
                    "processing-shift", record, selected, experiment=experiment, method=method, seed=seed
                )

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
                    # the scores and their validation rows: records of fewer scores are redone
                    "scores": [*OOD_SCORES, "val"],
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

    def _quantification(self, replicate: Replicate, stores: Stores) -> None:
        """Each method's probe, as the probe stage selected it on validation, temperature-scaled on
        validation and counted by CC, PCC, PACC and EMQ on every image of the experiment's shifted
        target (uncapped), per capture day and pooled. The target's features are extracted once per
        backbone (the selected pairs only) into their own store: the probe stage's shifted store
        holds only the capped test rows."""
        spec, protocol, seed = self.config.evaluations.quantification, self.config.protocol, replicate.seed
        for experiment in (e for e in replicate.experiments if e.quantification is not None):
            target = experiment.quantification
            dataset = self.datasets[target.dataset]
            folder = self.work / f"seed{seed}" / "features" / experiment.pretrain / "quantification"
            for method in self._methods():
                store = stores[(experiment.name, method, experiment.dataset)]
                selected = self._selected(experiment.name, method, seed)
                kept, out = self._probe_folders(f"{experiment.slug}_quantification", method, seed)
                inputs = {
                    "store": store.info.get("key"),
                    "split": sha256_json(experiment.split.to_frame().to_dict("list")),
                    "target": {
                        "dataset": dataset.key,
                        "split": sha256_json(target.split.to_frame().to_dict("list")),
                    },
                    "other": sha256_json(target.other.tolist()),
                    "pair": selected["pair"],
                    "loss": selected.get("loss"),
                    "seed": seed,
                    "min_images": spec.min_images,
                    "protocol": protocol.model_dump(mode="json"),
                }

                def score(st=store, e=experiment, t=target, sel=selected, o=kept, f=folder / method) -> dict:
                    target_store = extract_like(
                        st,
                        self.datasets[t.dataset],
                        out=f"{f}-{e.slug}",
                        pairs=list(sel["pairs"]),
                        split=t.split,
                    )
                    result = quantification_scores(
                        st,
                        e.split,
                        target_store,
                        t.split,
                        selection=sel["pair"],
                        # A probe record without its loss (older studies): the protocol's, chosen on val again.
                        loss=(sel["loss"],) if sel.get("loss") else protocol.losses,
                        other_rows=t.other,
                        min_images=spec.min_images,
                        seed=seed,
                        out=o,
                        config=self.config.model_dump(mode="json"),
                        with_size=protocol.object_size,
                        probe_options=protocol.probe_options(),
                    )
                    return {
                        "pair": result.pair,
                        "calibration": result.calibration,
                        "rows": _records(result.table),
                    }

                record = self.stage(
                    f"quantification/seed{seed}/{experiment.slug}/{method}", inputs, score, outputs=kept
                )
                shutil.copytree(kept, out, dirs_exist_ok=True)
                calibration = {
                    k: v for k, v in record["calibration"].items() if k != "samples_of_other_classes_only"
                }
                self.quantification_rows += self._refit_rows(
                    "quantification",
                    record,
                    selected,
                    experiment=experiment,
                    method=method,
                    seed=seed,
                    extra=calibration,
                )
            # The floor every counting method is read against: the validation mix for every day
            # (no probe, no features; computed here rather than in a stage, it costs nothing).
            reference = mix_reference_scores(
                experiment.split, target.split, dataset, other_rows=target.other, min_images=spec.min_images
            )
            tags = {"experiment": experiment.name, "method": NO_CLASSIFIER, "seed": seed, "pair": ""}
            self.quantification_rows += [{**tags, **row} for row in _records(reference)]

    def _refit_rows(
        self,
        what: str,
        record: dict,
        selected: dict,
        *,
        experiment: Experiment,
        method: str,
        seed: int,
        extra: dict | None = None,
    ) -> list[dict]:
        """A refitting evaluation's stage rows, each tagged with experiment, method, seed and pair (then
        `extra`); warns when its refit selected another pair than the probe stage (the same fit on
        the same rows: it should not happen)."""
        if record["pair"] != selected["pair"]:
            self.console.print(
                f"[yellow]warning:[/yellow] {experiment.name}, {method}, seed {seed}: the {what} "
                f"refit selected {record['pair']}, the probe stage {selected['pair']}"
            )
        tags = {"experiment": experiment.name, "method": method, "seed": seed, "pair": record["pair"]}
        return [{**tags, **row, **(extra or {})} for row in record["rows"]]

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

            scores = self.stage(
                f"kmeans/seed{seed}/{method}",
                inputs,
                lambda st=store, p=pair: pair_kmeans_scores(
                    st, p, test, experiment.split.targets[test], seed=seed
                ),
            )
            self.kmeans_rows.append({"method": method, "seed": seed, "pair": pair, **scores})

    # -- report -------------------------------------------------------------------------------
    def _rows(self) -> StudyRows:
        return StudyRows(
            per_seed=self.per_seed,
            efficiency=self.efficiency_rows,
            kmeans=self.kmeans_rows,
            shift=self.shift_rows,
            open_set=self.open_set_rows,
            quantification=self.quantification_rows,
        )

    def _headline(self) -> HeadlineExperiment | None:
        if self.headline is None:
            return None
        return HeadlineExperiment(
            name=self.headline.name, slug=self.headline.slug, dataset=self.headline.dataset
        )

    def headline_rows(self) -> list[dict]:
        """Mean ± std over replicates of every (experiment, setting, method, metric)."""
        return headline_rows(
            self._rows(),
            varies=what_varies(self.config.vary_partition),
            headline_dataset=self.headline.dataset if self.headline else None,
        )

    def _report(self, started: datetime, runs, replicates: list[Replicate]) -> Path:
        return write_study_report(
            self.results,
            config=self.config,
            started=started,
            runs=runs,
            trained={
                (seed, key, method): self.stage.result(f"pretrain/seed{seed}/{key}/{method}")
                for seed, by_key in runs.items()
                for key, methods in by_key.items()
                for method in methods
            },
            datasets=self.datasets,
            methods=self._methods(),
            headline=self._headline(),
            rows=self._rows(),
            experiments={e.name: e.slug for r in replicates for e in r.experiments},
            pretrained_on={e.name: e.pretrain for r in replicates for e in r.experiments},
            # Every scored split whose test rows the report counts the readouts of.
            scored=[
                (dataset, split.name)
                for r in replicates
                for e in r.experiments
                for dataset, split in [(e.dataset, e.split)]
                + [(s.dataset, s.split) for s in e.shifted]
                + ([(e.quantification.dataset, e.quantification.split)] if e.quantification else [])
            ],
            seeds_completed=[r.seed for r in replicates],
            ablations={e.name: e.ablation_of for e in replicates[0].experiments if e.ablation_of},
        )


def _records(table: pd.DataFrame) -> list[dict]:
    """A table's rows as plain JSON values (numpy bools and integers are not), for a stage record."""
    return json.loads(table.to_json(orient="records"))


def _kept(result) -> dict:
    return {"timesteps": list(result.kept_timesteps), "blocks": list(result.kept_blocks or [])}


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


__all__ = ["Study", "StudyInterrupted", "pretrain_inputs"]
