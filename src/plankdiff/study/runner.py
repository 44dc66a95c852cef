"""`plankdiff run EXPERIMENT.yaml`: the whole study, stage after stage.

Stages: prepare → splits → pretrain (DDPM and baselines, equal minutes) → features (coarse-to-fine
for diffusion, every stage for baselines, raw pixels) → probes per experiment and seed → label
efficiency → k-means → report. A stage whose inputs hash matches its record in
`<work>/stages/` is skipped; training and extraction resume where they stopped. Seeds vary the probe
and the train/val partition; the test rows and the backbones are shared across seeds (see
`plankdiff.data.splits.reseed`).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from plankdiff.baselines.extract import LOGITS_FILE, extract_baseline_features, own_head_scores
from plankdiff.baselines.train import BaselineConfig, BaselineTrainer, training_rows
from plankdiff.data.mapping import cross_domain_splits, load_mapping
from plankdiff.data.prepare import PreparedDataset, prepare
from plankdiff.data.splits import (
    Split,
    balanced_split,
    cap_per_class,
    in_and_out_of_period,
    long_tailed_split,
    reseed,
    temporal_split,
)
from plankdiff.diffusion.config import load_config
from plankdiff.diffusion.model import load_backbone
from plankdiff.diffusion.train import DiffusionTrainer, sample_images, save_grid
from plankdiff.evaluation.clustering import kmeans_scores
from plankdiff.features.extract import ExtractionRequest, extract_features, model_hash
from plankdiff.features.raw import raw_pixel_store
from plankdiff.features.search import coarse_to_fine
from plankdiff.features.store import FeatureStore
from plankdiff.probe.linear import fit_single
from plankdiff.probe.run import Shifted, load_pairs, probe_features
from plankdiff.provenance import cache_root, git_sha, read_json, sha256_json, write_json
from plankdiff.study.config import ExperimentConfig

DIFFUSION = "diffusion"
RAW = "raw-pixels"


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
        self.planned: list[tuple[str, str]] = []
        self.headline: list[dict] = []
        self.budgets: list[dict] = []
        self.datasets: dict[str, PreparedDataset] = {}

    # -- stage bookkeeping ----------------------------------------------------------------------
    def stage(self, name: str, inputs: dict, run: Callable[[], Any]) -> Any:
        record = self.work / "stages" / f"{name.replace('/', '_')}.json"
        key = sha256_json(inputs)
        if record.exists() and read_json(record).get("key") == key:
            self.planned.append((name, "reuse"))
            return read_json(record).get("result")
        self.planned.append((name, "run"))
        if self.dry_run:
            return None
        self.console.print(f"[bold cyan]stage[/bold cyan] {name}")
        started = time.perf_counter()
        result = run()
        write_json(
            record,
            {
                "key": key,
                "inputs": inputs,
                "result": result,
                "seconds": round(time.perf_counter() - started, 1),
            },
        )
        return result

    # -- the study ------------------------------------------------------------------------------
    def run(self) -> Path | None:
        started = datetime.now(timezone.utc)
        self._prepare()
        if self.dry_run and len(self.datasets) < len(self.config.datasets):
            self.planned.append(("splits, pretraining, features, probes, report", "run after prepare"))
            return None
        splits = self._splits()
        runs = self._pretrain(splits)
        if self.dry_run:
            self.planned.append(
                ("features, probes, label efficiency, k-means, report", "run where inputs changed")
            )
            return None
        stores = self._features(splits, runs)
        self._probe(splits, stores)
        self._label_efficiency(splits, stores)
        self._kmeans(splits, stores)
        return self._report(started, runs)

    def _prepare(self) -> None:
        for name, spec in self.config.datasets.items():
            source = Path(spec.source)
            source = source if source.is_absolute() else self.project_root / source
            inputs = spec.model_dump() | {"name": name}
            done = self.stage(
                f"prepare/{name}", inputs, lambda s=spec, src=source, n=name: self._prepare_one(n, s, src)
            )
            if done is not None:
                self.datasets[name] = PreparedDataset.open(self._dataset_name(name))

    def _dataset_name(self, name: str) -> str:
        spec = self.config.datasets[name]
        return f"{self.config.name}-{name}-{spec.size}"

    def _prepare_one(self, name, spec, source) -> dict:
        dataset = prepare(
            source,
            name=self._dataset_name(name),
            size=spec.size,
            mode=spec.mode,
            channels=spec.channels,
            normalise_polarity=spec.polarity,
        )
        return {"images": len(dataset), "classes": len(dataset.classes), "skipped": dataset.info["n_skipped"]}

    def _cap(self, split: Split) -> Split:
        caps = self.config.caps
        return cap_per_class(split, caps.model_dump()) if caps else split

    def _splits(self) -> dict[str, tuple]:
        """Experiment name → (dataset key, split of seed 0, shifted: list of (dataset key, split))."""
        d = self.datasets
        out: dict[str, tuple] = {}
        families = self.config.experiments
        if "ndsb" in families:
            long_tailed = self._cap(long_tailed_split(d["ndsb"]))
            out["ndsb/long-tailed"] = ("ndsb", long_tailed, [])
            out["ndsb/balanced"] = ("ndsb", self._cap(balanced_split(d["ndsb"])), [])
        temporal_shifts = (((2018, 2019), (2020,)), ((2018,), (2019,))) if "zoolake" in families else ()
        for train_years, test_years in temporal_shifts:
            temporal = temporal_split(d["zoolake"], train_years=train_years, test_years=test_years)
            within, across = in_and_out_of_period(self._cap(temporal))
            label = f"zoolake/{'+'.join(map(str, train_years))}→{'+'.join(map(str, test_years))}"
            out[label] = ("zoolake", within, [("zoolake", across)])
        mapping = load_mapping("ndsb_pwssc")
        for suffix in ("", "-nopol") if "ndsb-pwssc" in families else ():
            if f"ndsb{suffix}" not in d or f"pwssc{suffix}" not in d:
                continue
            source, target = cross_domain_splits(
                d[f"ndsb{suffix}"], d[f"pwssc{suffix}"], mapping, source_key="ndsb", target_key="pwssc"
            )
            polarity = "with polarity normalisation" if not suffix else "without polarity normalisation"
            out[f"ndsb→pwssc/{polarity}"] = (
                f"ndsb{suffix}",
                self._cap(source),
                [(f"pwssc{suffix}", self._cap(target))],
            )
        for key, (dataset, split, shifted) in out.items():
            split.save(d[dataset])
            for other, shifted_split in shifted:
                shifted_split.save(d[other])
            self.planned.append((f"split/{key}", f"{split.summary()}"))
        return out

    def _pretrain_rows(self, key: str) -> tuple[str, Split]:
        spec = self.config.pretrain[key]
        dataset = self.datasets[spec.dataset]
        if spec.split == "long-tailed":
            split = self._cap(long_tailed_split(dataset))
        elif spec.split.startswith("temporal:"):
            train, test = spec.split.removeprefix("temporal:").split("-")
            years = tuple(int(y) for y in train.split("+")), tuple(int(y) for y in test.split("+"))
            split, _ = in_and_out_of_period(
                self._cap(temporal_split(dataset, train_years=years[0], test_years=years[1]))
            )
        else:
            raise ValueError(f"pretrain.{key}.split: unknown split kind {spec.split!r}")
        split = Split(f"pretrain-{key}", split.rows, split.targets, split.classes)
        split.save(dataset)
        return spec.dataset, split

    def _pretrain(self, splits) -> dict[str, dict[str, Path]]:
        runs: dict[str, dict[str, Path]] = {}
        used = {self._experiment_pretrain(experiment) for experiment in splits}
        for key in (k for k in self.config.pretrain if k in used):
            dataset_key, split = self._pretrain_rows(key)
            dataset = self.datasets[dataset_key]
            runs[key] = {}
            folder = self.work / "runs" / key
            diffusion = self.config.diffusion
            inputs = {
                "dataset": dataset.key,
                "rows": sha256_json(split.indices("train").tolist()),
                **diffusion.model_dump(),
            }
            runs[key][DIFFUSION] = folder / DIFFUSION
            self.stage(
                f"pretrain/{key}/{DIFFUSION}",
                inputs,
                lambda d=dataset, s=split, f=folder / DIFFUSION: self._train_diffusion(d, s, f),
            )
            for method in self.config.baselines.methods:
                runs[key][method] = folder / method
                inputs_b = inputs | {"method": method, "minutes": self.config.baselines.max_minutes}
                self.stage(
                    f"pretrain/{key}/{method}",
                    inputs_b,
                    lambda d=dataset, s=split, f=folder / method, m=method: self._train_baseline(d, s, f, m),
                )
        return runs

    def _train_diffusion(self, dataset, split, folder) -> dict:
        spec = self.config.diffusion
        config = load_config(spec.preset, max_minutes=spec.max_minutes, batch_size=spec.batch_size)
        trainer = DiffusionTrainer(
            config=config, dataset=dataset, out=folder, rows=split.indices("train"), resume=True
        )
        result = trainer.train()
        _refuse_interrupted(result, folder)
        unet, scheduler = load_backbone(folder)
        save_grid(sample_images(unet, scheduler, n=36, steps=25), folder / "samples" / "final.png")
        return {
            "minutes": result.elapsed_minutes,
            "images_seen": result.images_seen,
            "steps": result.step,
            "parameters": sum(p.numel() for p in unet.parameters()),
            "last_loss": result.last_loss,
        }

    def _train_baseline(self, dataset, split, folder, method) -> dict:
        config = BaselineConfig.for_method(method, max_minutes=self.config.baselines.max_minutes)
        rows = training_rows(dataset, method=method, split=split.name)
        trainer = BaselineTrainer(config=config, dataset=dataset, data=rows, out=folder, resume=True)
        result = trainer.train()
        _refuse_interrupted(result, folder)
        info = read_json(folder / "baseline.json")
        return {
            "minutes": result.elapsed_minutes,
            "images_seen": result.images_seen,
            "parameters": _trained_parameters(info.get("parameters")),
        }

    # -- features -------------------------------------------------------------------------------
    def _experiment_pretrain(self, experiment: str) -> str:
        if experiment.startswith("zoolake/"):
            years = experiment.split("/")[1].split("→")[0]
            return next(
                k
                for k, s in self.config.pretrain.items()
                if s.dataset == "zoolake" and s.split.startswith(f"temporal:{years}-")
            )
        return next(k for k, s in self.config.pretrain.items() if s.dataset == "ndsb")

    def _features(self, splits, runs) -> dict[tuple[str, str, str], FeatureStore]:
        """(experiment, method, dataset key) → the store of that experiment's backbone on that dataset.

        Each (pre-training, dataset) pair is extracted once over the union of the rows its
        experiments need, so the balanced and long-tailed NDSB experiments share one store.
        """
        spec = self.config.features
        needed: dict[tuple[str, str], set[int]] = {}
        search_split: dict[str, Split] = {}
        for experiment, (dataset_key, split, shifted) in splits.items():
            pretrain = self._experiment_pretrain(experiment)
            if self.config.pretrain[pretrain].dataset == dataset_key:
                search_split.setdefault(pretrain, split)
            for key, part in [(dataset_key, split), *shifted]:
                rows = np.concatenate([part.indices(p) for p in ("train", "val", "test")])
                needed.setdefault((pretrain, key), set()).update(rows.tolist())
        built: dict[tuple[str, str, str], FeatureStore] = {}
        request = ExtractionRequest(timesteps=spec.timesteps, batch_size=spec.batch_size)
        for pretrain, split in search_split.items():
            backbone = runs[pretrain][DIFFUSION]
            unet, scheduler = load_backbone(backbone)
            model_id = model_hash(backbone)
            home = self.config.pretrain[pretrain].dataset
            # The fine pass covers every row the experiments need from the pre-training dataset,
            # so that store is used as is below instead of being extracted a second time.
            home_rows = np.array(sorted(needed[(pretrain, home)]), dtype=np.int64)
            inputs = {
                "model": model_id,
                "split": sha256_json(split.to_frame().to_dict("list")),
                "rows": sha256_json(home_rows.tolist()),
                **spec.model_dump(),
            }
            kept = self.stage(
                f"search/{pretrain}",
                inputs,
                lambda u=unet, sch=scheduler, sp=split, m=model_id, p=pretrain, hr=home_rows: list(
                    coarse_to_fine(
                        u,
                        sch,
                        self.datasets[self.config.pretrain[p].dataset],
                        sp,
                        out=self.work / "search" / p,
                        model_id=m,
                        request=request,
                        per_class_train=spec.per_class_train,
                        per_class_val=spec.per_class_val,
                        keep_timesteps=spec.keep_timesteps,
                        fine_rows=hr,
                    ).kept_timesteps
                ),
            )
            fine = ExtractionRequest(timesteps=tuple(kept), batch_size=spec.batch_size)
            for (owner, key), rows in needed.items():
                if owner != pretrain:
                    continue
                dataset, rows = self.datasets[key], np.array(sorted(rows), dtype=np.int64)
                folder = self.work / "features" / pretrain
                built[(pretrain, DIFFUSION, key)] = extract_features(
                    unet,
                    scheduler,
                    dataset,
                    out=self.work / "search" / pretrain / "fine"
                    if key == home
                    else folder / f"{DIFFUSION}-{key}",
                    request=fine,
                    rows=rows,
                    model_id=model_id,
                )
                union = Split(
                    f"union-{pretrain}",
                    {"train": rows[:0], "val": rows[:0], "test": rows},
                    np.zeros(len(dataset), dtype=np.int64),
                    ["all"],
                )
                union.save(dataset)
                for method in self.config.baselines.methods:
                    built[(pretrain, method, key)] = extract_baseline_features(
                        runs[pretrain][method], dataset, out=folder / f"{method}-{key}", split=union.name
                    )
                if self.config.baselines.include_raw_pixels:
                    built[(pretrain, RAW, key)] = raw_pixel_store(
                        dataset, rows=rows, out=folder / f"{RAW}-{key}"
                    )
        stores = {}
        for experiment, (dataset_key, _split, shifted) in splits.items():
            pretrain = self._experiment_pretrain(experiment)
            for key in [dataset_key, *(k for k, _ in shifted)]:
                for method in self._methods():
                    stores[(experiment, method, key)] = built[(pretrain, method, key)]
        return stores

    def _methods(self) -> list[str]:
        return [DIFFUSION, *self.config.baselines.methods] + (
            [RAW] if self.config.baselines.include_raw_pixels else []
        )

    # -- probes ---------------------------------------------------------------------------------
    def _probe(self, splits, stores) -> None:
        self.selected: dict[tuple[str, str, int], str] = {}
        for experiment, (dataset_key, split, shifted) in splits.items():
            loss = (
                self.config.probe.long_tailed_loss
                if "long-tailed" in experiment
                else self.config.probe.balanced_loss
            )
            for method in self._methods():
                per_seed = []
                for seed in self.config.seeds:
                    seeded = reseed(split, seed)
                    shifts = [
                        Shifted(name=_slug(experiment), store=stores[(experiment, method, k)], split=s)
                        for k, s in shifted
                    ]
                    out = self.results / "metrics" / _slug(experiment) / method / f"seed{seed}"
                    inputs = {
                        "store": stores[(experiment, method, dataset_key)].info.get("key"),
                        "split": sha256_json(seeded.to_frame().to_dict("list")),
                        "loss": loss,
                        "seed": seed,
                        "epochs": self.config.probe.epochs,
                    }
                    result = self.stage(
                        f"probe/{_slug(experiment)}/{method}/seed{seed}",
                        inputs,
                        lambda st=stores[(experiment, method, dataset_key)], sp=seeded, sh=shifts, o=out, s=seed, lo=loss: (
                            _probe_summary(
                                probe_features(
                                    st,
                                    sp,
                                    loss=lo,
                                    shifted=sh,
                                    seed=s,
                                    out=o,
                                    bootstrap=self.config.probe.bootstrap,
                                    config=self.config.model_dump(mode="json"),
                                    probe_options={
                                        "epochs": self.config.probe.epochs,
                                        "min_steps": self.config.probe.min_steps,
                                    },
                                )
                            )
                        ),
                    )
                    self.selected[(experiment, method, seed)] = result["pair"]
                    per_seed.append(result)
                self._add_headline(experiment, method, per_seed)
            if experiment == "ndsb/long-tailed" and "supervised" in self._methods():
                self._own_head(stores[(experiment, "supervised", dataset_key)], split)

    def _own_head(self, store: FeatureStore, split: Split) -> None:
        """The supervised network's own classifier on the same test rows (its classes are the split's)."""
        logits = np.load(store.root / LOGITS_FILE, mmap_mode="r")
        scores = own_head_scores(store, split, logits)["test"]
        for metric in ("accuracy", "macro_f1"):
            self._row(
                "ndsb/long-tailed", "in distribution", "supervised (own head)", "", metric, [scores[metric]]
            )

    def _add_headline(self, experiment: str, method: str, per_seed: list[dict]) -> None:
        setting_in = "in distribution" if not per_seed[0].get("shift") else "in period / source"
        pairs = sorted({r["pair"] for r in per_seed})
        for metric in ("accuracy", "macro_f1"):
            values = [r["test"][metric] for r in per_seed]
            self._row(experiment, setting_in, method, ", ".join(pairs), metric, values)
            if per_seed[0].get("shift"):
                shifted = [r["shift"][metric] for r in per_seed]
                self._row(experiment, "under shift", method, ", ".join(pairs), metric, shifted)
                self._row(
                    experiment,
                    "drop",
                    method,
                    ", ".join(pairs),
                    f"drop_{metric}",
                    [a - b for a, b in zip(values, shifted, strict=True)],
                )

    def _row(self, experiment, setting, method, pair, metric, values) -> None:
        self.headline.append(
            {
                "experiment": experiment,
                "setting": setting,
                "method": method,
                "pair": pair,
                "metric": metric,
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
                "n_seeds": len(values),
            }
        )

    # -- label efficiency and clustering --------------------------------------------------------
    def _label_efficiency(self, splits, stores) -> None:
        experiment = "ndsb/long-tailed"
        if experiment not in splits:
            return
        dataset_key, split, _ = splits[experiment]
        rows = []
        for method in self._methods():
            store = stores[(experiment, method, dataset_key)]
            for seed in self.config.seeds:
                pair = self.selected[(experiment, method, seed)].split("+")
                seeded = reseed(split, seed)
                inputs = {
                    "store": store.info.get("key"),
                    "pair": pair,
                    "seed": seed,
                    "fractions": self.config.label_fractions,
                }
                result = self.stage(
                    f"label-efficiency/{method}/seed{seed}",
                    inputs,
                    lambda st=store, sp=seeded, p=pair, s=seed: _label_curve(
                        st,
                        sp,
                        p,
                        self.config.label_fractions,
                        s,
                        {"epochs": self.config.probe.epochs, "min_steps": self.config.probe.min_steps},
                    ),
                )
                rows += [{"method": method, "seed": seed, **r} for r in result]
        frame = pd.DataFrame(rows)
        (self.results / "tables").mkdir(parents=True, exist_ok=True)
        frame.to_csv(self.results / "tables" / "label_efficiency.csv", index=False)
        _plot_label_efficiency(frame, self.results / "figures" / "label_efficiency.png")
        for (method, fraction), group in frame.groupby(["method", "fraction"]):
            self._row(
                "ndsb/label efficiency",
                f"{fraction:.0%} of train labels",
                method,
                "",
                "accuracy",
                list(group["accuracy"]),
            )

    def _kmeans(self, splits, stores) -> None:
        """Every pair clustered once (the first study seed) for the table; the best pair by NMI is clustered again
        with each study seed, so the headline rows carry mean ± std over k-means initialisations
        (the test rows are fixed, as for the probes)."""
        experiment = "ndsb/long-tailed"
        if not self.config.kmeans or experiment not in splits:
            return
        dataset_key, split, _ = splits[experiment]
        test = split.indices("test")
        records = []
        for method in self._methods():
            store = stores[(experiment, method, dataset_key)]

            def cluster(pair, seed, st=store):
                x = np.asarray(st.load(pair)[st.positions(test)], np.float32)
                return {"pair": pair, "seed": seed, **kmeans_scores(x, split.targets[test], seed=seed)}

            inputs = {
                "store": store.info.get("key"),
                "rows": sha256_json(test.tolist()),
                "seeds": list(self.config.seeds),
            }

            def run(st=store, cl=cluster):
                first = [cl(pair, self.config.seeds[0]) for pair in st.pairs]
                best = max(first, key=itemgetter("nmi"))["pair"]
                return first + [cl(best, seed) for seed in self.config.seeds[1:]]

            scores = self.stage(f"kmeans/{method}", inputs, run)
            records += [{"method": method, **record} for record in scores]
            best = max(scores, key=itemgetter("nmi"))["pair"]
            repeats = [r for r in scores if r["pair"] == best]
            for metric in ("nmi", "ari", "hungarian_accuracy", "purity"):
                self._row(
                    "ndsb/k-means (K = classes)",
                    "test images",
                    method,
                    best,
                    metric,
                    [r[metric] for r in repeats],
                )
        pd.DataFrame(records).to_csv(self.results / "tables" / "kmeans.csv", index=False)

    # -- report ---------------------------------------------------------------------------------
    def _report(self, started: datetime, runs) -> Path:
        from plankdiff.report import render_report, write_tables

        figures = self.results / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        captions = {}
        for key, methods in runs.items():
            for method in methods:
                record = self.work / "stages" / f"pretrain_{key}_{method}.json"
                result = read_json(record)["result"] if record.exists() else {}
                self.budgets.append(
                    {
                        "method": f"{method} ({key})",
                        "minutes": result.get("minutes"),
                        "images_seen": result.get("images_seen"),
                        "parameters": result.get("parameters"),
                    }
                )
            sample = methods[DIFFUSION] / "samples" / "final.png"
            if sample.exists():
                target = figures / f"samples_{key}.png"
                target.write_bytes(sample.read_bytes())
                captions[target.name] = (
                    f"DDIM samples of the DDPM pre-trained on {key} (25 steps, EMA weights)"
                )
        for metrics_dir in sorted((self.results / "metrics").glob(f"*/{DIFFUSION}/seed0")):
            for png in metrics_dir.glob("*.png"):
                target = figures / f"{metrics_dir.parent.parent.name}_{png.name}"
                target.write_bytes(png.read_bytes())
                captions[target.name] = (
                    f"{metrics_dir.parent.parent.name}, diffusion, seed 0: {png.stem.replace('_', ' ')}"
                )
        _embedding_figure(self, figures / "embedding_ndsb.png")
        captions["embedding_ndsb.png"] = (
            "t-SNE of the selected diffusion features, NDSB test images, coloured by class"
        )
        captions["label_efficiency.png"] = (
            "NDSB long-tailed: test accuracy against the fraction of labelled training images"
        )
        write_json(figures / "captions.json", captions)
        pd.DataFrame(self.headline).to_csv(self.results / "headline.csv", index=False)
        write_json(
            self.results / "study.json",
            {
                "name": self.config.name,
                "description": self.config.description,
                "git_sha": git_sha(),
                "started": started.isoformat(),
                "finished": datetime.now(timezone.utc).isoformat(),
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
                "budgets": self.budgets,
                "seeds": list(self.config.seeds),
                "notes": [
                    "Backbones are trained once per pre-training set and shared across seeds; seeds vary the probe "
                    "and the train/val partition, never the test rows.",
                    "Pairs are selected on validation macro-F1; the selected pair is scored on test once per seed.",
                    "Under shift, the probe selected in distribution is applied unchanged to the shifted test set.",
                    "Without polarity normalisation, NDSB and PWSSC are prepared as recorded and read by the same "
                    "backbone, which was trained on polarity-normalised NDSB.",
                    *self._label_efficiency_notes(),
                ],
            },
        )
        write_tables(self.results)
        return render_report(self.results)

    def _label_efficiency_notes(self) -> list[str]:
        if not self.config.label_fractions or "supervised" not in self._methods():
            return []
        return [
            "Label efficiency: only the linear probe sees the reduced share of labels. The supervised backbone "
            "was pre-trained on every training label, so its rows are a reference, not a few-label result."
        ]

    def plan(self) -> list[tuple[str, str]]:
        return self.planned


def _refuse_interrupted(result, folder: Path) -> None:
    if result.stopped_by == "interrupt":
        raise StudyInterrupted(
            f"{folder}: training was interrupted at step {result.step} and saved a checkpoint; "
            "rerun the same command to resume it"
        )


def _trained_parameters(counts) -> int | None:
    """Baselines record {backbone, trainable, total}; the budget table compares what each method trains."""
    return counts.get("trainable") if isinstance(counts, dict) else counts


def _slug(text: str) -> str:
    return text.replace("/", "_").replace("→", "-to-").replace(" ", "_")


def _probe_summary(result) -> dict:
    summary = {
        "pair": result.selected_pair,
        "val": result.val,
        "test": {k: result.test[k] for k in ("accuracy", "macro_f1", "balanced_accuracy")},
    }
    if result.shifted:
        shifted = next(iter(result.shifted.values()))
        summary["shift"] = {k: shifted[k] for k in ("accuracy", "macro_f1", "balanced_accuracy")}
    return summary


def nested_fraction(split: Split, fraction: float, seed: int) -> np.ndarray:
    """The first ceil(fraction · n_c) of each class's seeded permutation: subsets nest across fractions."""
    rng = np.random.default_rng(seed)
    train = split.indices("train")
    labels = split.targets[train]
    chosen = []
    for c in np.unique(labels):
        members = train[labels == c][rng.permutation(int((labels == c).sum()))]
        chosen.append(members[: max(1, int(np.ceil(fraction * len(members))))])
    return np.sort(np.concatenate(chosen))


def _label_curve(store, split, pair, fractions, seed, probe_options) -> list[dict]:
    out = []
    for fraction in fractions:
        train = nested_fraction(split, fraction, seed)
        rows = np.concatenate([train, split.indices("val"), split.indices("test")])
        positions = store.positions(rows)
        x = np.concatenate(list(load_pairs(store, pair, positions, with_size=False).values()), axis=1)
        labels = split.targets[rows]
        n_train, n_val = len(train), len(split.indices("val"))
        grid = fit_single(
            x,
            labels,
            train=np.arange(n_train),
            val=np.arange(n_train, n_train + n_val),
            n_classes=len(split.classes),
            seed=seed,
            **probe_options,
        )
        test = np.arange(n_train + n_val, len(rows))
        predicted = grid.classifier().predict(x[test])
        out.append(
            {
                "fraction": fraction,
                "train_images": int(n_train),
                "accuracy": float((predicted == labels[test]).mean()),
            }
        )
    return out


def _plot_label_efficiency(frame: pd.DataFrame, out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for method, group in frame.groupby("method"):
        stats = group.groupby("fraction")["accuracy"].agg(["mean", "std"]).reset_index()
        ax.errorbar(
            stats["fraction"] * 100,
            stats["mean"] * 100,
            yerr=stats["std"].fillna(0) * 100,
            marker="o",
            label=method,
            capsize=2,
        )
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images per class (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")


def _embedding_figure(study: Study, out: Path) -> None:
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    record = study.results / "metrics" / _slug("ndsb/long-tailed") / DIFFUSION / "seed0" / "selected.json"
    if not record.exists():
        return
    selected = read_json(record)
    store = FeatureStore(Path(selected["features"]))
    split = Split.load(PreparedDataset.open(store.info["dataset"]), selected["split"])
    test = split.indices("test")[:2000]
    x = np.concatenate(
        list(load_pairs(store, selected["pair"].split("+"), store.positions(test), with_size=False).values()),
        axis=1,
    )
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    points = TSNE(n_components=2, init="pca", random_state=0, perplexity=30).fit_transform(x)
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    ax.scatter(points[:, 0], points[:, 1], c=split.targets[test], cmap="tab20", s=4)
    ax.set_title(f"t-SNE of {selected['pair']} (NDSB test, {len(test)} images)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.savefig(out, dpi=120, bbox_inches="tight")


__all__ = ["Study", "nested_fraction"]
