"""What docs/results/robustness.md ("Open set: scores compared") measured beyond the CLI.

`plankdiff evaluate open-set FEATURES --split SPLIT` reports every open-set score of the study's
open-set probe, on validation and on test. This script adds, built on the package's API:

- `validation FEATURES --split SPLIT --out DIR`: for every (block, t) pair of a feature store, and
  for all its pairs fused, the distance scores (Mahalanobis, relative Mahalanobis, kNN at several
  k) of the held-out classes' validation images against the known classes' validation images:
  AUROC (unknown = positive) and the share of held-out images rejected at the cut that keeps
  `--keep` of the known ones; and, with `--per-class PAIR`, each held-out class's AUROC under
  Mahalanobis on that pair. Validation rows only: no test image is read, nothing is written beside
  the store or the split. The distance scores read only the probe's standardisation (the train
  rows' mean and std), not its weights, so no probe is fitted: the rows of the pair the CLI
  selects equal the CLI's validation rows for that pair (kNN at its default k).
- `pwssc-sample --zip PWSSC.zip --out DIR`: the fixed random PWSSC samples (`random.Random(SEED)`,
  one generator, the unmatched sample drawn first) written as DIR/unmatched/<label>/<file> (labels
  the NDSB-PWSSC mapping leaves out: no NDSB counterpart) and DIR/matched/<label>/<file> (labels it
  maps), the files' bytes as in the zip, for `plankdiff predict DIR/unmatched DIR/matched`.
- `sample --zip ARCHIVE --n N --out DIR`: a fixed random sample (`random.Random(--seed)`) of any
  dataset archive, written as DIR/<label>/<file> with the zip's bytes: images of another instrument
  for `plankdiff predict` (issue #19's validation set of instrument unknowns is ZooLake's).
- `shares PREDICTIONS...`: per sample of `plankdiff predict` result folders, and over all of a
  folder's samples, the share of images called `unknown`, `unclassified` and given a class.
- `denoising BACKBONE --dataset PREPARED --split SPLIT --other PREPARED --out DIR`: the DDPM's own
  denoising error as a score, validation only. Known: the split's validation images of the known
  classes; unknown: its held-out classes' validation images, and a fixed random sample
  (`--other-n`, `numpy.random.default_rng(--seed)`) of another prepared dataset (another
  instrument; whole dataset, it was never in BACKBONE's training). Per t of `--timesteps`, the error
  ||ε̂(x_t, t) − ε||² averaged over `--draws` seeded noise draws, and the sum over t of its
  standardised log: AUROC and the share rejected at the cut keeping `--keep` of the known ones.

Examples (the cpu study's seed-0 stores in $PLANKDIFF_CACHE):

    python scripts/open_set_scores.py validation $PLANKDIFF_CACHE/studies/cpu/seed0/search/ndsb/fine \\
        --split long-tailed-s0-cap300 --per-class mid@8/t=5 --out open-set-validation/ddpm
    python scripts/open_set_scores.py pwssc-sample --zip ../shared/datasets/pwssc.zip --out pwssc-sample
    python scripts/open_set_scores.py shares pred-ifcb-ddpm pred-pwssc-ddpm
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from plankdiff.data.mapping import load_mapping, unmapped_labels
from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.sources import Collection
from plankdiff.data.splits import Split
from plankdiff.deploy.export import UNCLASSIFIED, UNKNOWN
from plankdiff.diffusion.model import load_backbone
from plankdiff.diffusion.train import to_model_range
from plankdiff.features.extract import seeded_noise
from plankdiff.features.store import FeatureStore
from plankdiff.probe.linear import LinearClassifier, train_statistics
from plankdiff.probe.ood import (
    calibrate_threshold,
    fit_scorer,
    held_out_classes,
    held_out_rows,
    open_set_split,
    rejection_metrics,
)
from plankdiff.probe.protocol import DEFAULT_KEEP, HOLD_OUT_EVERY
from plankdiff.probe.run import load_pairs

DISTANCE_SCORES = ("mahalanobis", "relative-mahalanobis", "knn")
KS = (1, 5, 10, 20, 50)


def _standardisation(x_train: np.ndarray, n_classes: int) -> LinearClassifier:
    """A classifier carrying only the probe's standardisation (train mean and std, as every probe
    computes it): the distance scores read nothing else, so its weights are left at zero."""
    mean, std = train_statistics(x_train, np.arange(len(x_train)))
    return LinearClassifier(
        mean=mean, std=std, weight=np.zeros((n_classes, len(mean))), bias=np.zeros(n_classes)
    )


def validation(args: argparse.Namespace) -> None:
    store = FeatureStore(args.features)
    if args.per_class and args.per_class not in store.pairs:
        sys.exit(f"--per-class {args.per_class}: not a pair of {store.root} ({', '.join(store.pairs)})")
    split = Split.load(store.dataset(), args.split)
    held = held_out_classes(split.classes, every=args.hold_out_every)
    known, _ = open_set_split(split, held)
    rows = {
        "train": known.indices("train"),
        "known": known.indices("val"),
        "unknown": held_out_rows(split, held, "val"),
    }
    y_train = known.labels("train")
    print(
        f"{store.root}: {len(rows['train'])} train, {len(rows['known'])} known and "
        f"{len(rows['unknown'])} held-out validation images ({len(held)} classes held out)",
        flush=True,
    )
    per_pair, by_score = [], {}
    per_class = None
    for pair in store.pairs:
        x = {
            part: load_pairs(store, [pair], store.positions(r), with_size=False)[pair]
            for part, r in rows.items()
        }
        probe = _standardisation(x["train"], len(known.classes))
        for name in DISTANCE_SCORES:
            for k in KS if name == "knn" else (None,):
                scorer = fit_scorer(name, probe, x["train"], y_train, **({"k": k} if k else {}))
                known_scores, unknown_scores = scorer.score(x["known"]), scorer.score(x["unknown"])
                label = f"{name} k={k}" if k else name
                threshold = calibrate_threshold(known_scores, keep=args.keep)
                metrics = rejection_metrics(known_scores, unknown_scores, threshold)
                per_pair.append({"pair": pair, "score": label, **metrics})
                by_score.setdefault(label, []).append((known_scores, unknown_scores))
                if pair == args.per_class and name == "mahalanobis":
                    per_class = _per_class(split, rows["unknown"], known_scores, unknown_scores)
        line = ", ".join(f"{r['score']} {r['auroc']:.3f}" for r in per_pair if r["pair"] == pair)
        print(f"  {pair}: {line}", flush=True)
    fused = []
    for label, scores in by_score.items():
        # Pairs' scores live on different scales: each is divided by its median size on the known
        # validation images before summing, so no pair dominates the sum by its units alone.
        known_sum, unknown_sum = 0.0, 0.0
        for known_scores, unknown_scores in scores:
            scale = np.median(np.abs(known_scores)) + 1e-9
            known_sum, unknown_sum = known_sum + known_scores / scale, unknown_sum + unknown_scores / scale
        threshold = calibrate_threshold(known_sum, keep=args.keep)
        fused.append(
            {"pair": "all fused", "score": label, **rejection_metrics(known_sum, unknown_sum, threshold)}
        )
        print(f"  all pairs fused: {label} {fused[-1]['auroc']:.3f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(per_pair + fused).to_csv(out / "validation_scores.csv", index=False)
    print(f"→ {out / 'validation_scores.csv'}")
    if per_class is not None:
        per_class.to_csv(out / "per_class.csv", index=False)
        print(f"→ {out / 'per_class.csv'} (Mahalanobis on {args.per_class})")


def _per_class(split: Split, unknown_rows: np.ndarray, known_scores, unknown_scores) -> pd.DataFrame:
    names = np.asarray(split.classes)[split.targets[unknown_rows]]
    table = []
    for name in sorted(set(names)):
        mine = unknown_scores[names == name]
        metrics = rejection_metrics(known_scores, mine, calibrate_threshold(known_scores))
        table.append({"class": name, "n": len(mine), "auroc": metrics["auroc"]})
    return pd.DataFrame(table).sort_values("auroc")


def pwssc_sample(args: argparse.Namespace) -> None:
    collection = Collection(args.zip)
    unmatched = set(unmapped_labels(collection, load_mapping(args.mapping), args.key))
    parts = {
        "unmatched": [i for i in collection.items if i.label in unmatched],
        "matched": [i for i in collection.items if i.label not in unmatched],
    }
    sizes = {"unmatched": args.unmatched, "matched": args.matched}
    generator = random.Random(args.seed)  # one generator, unmatched drawn first: the doc's samples
    out = Path(args.out)
    for part in parts:
        if (out / part).exists():  # predict reads every image below: no leftovers of another draw
            sys.exit(f"--out {out}: {out / part} exists already; give a new folder")
    for part, items in parts.items():
        if sizes[part] > len(items):
            sys.exit(f"--{part} {sizes[part]}: {args.zip} has only {len(items)} {part} images")
        chosen = generator.sample(items, sizes[part])
        for item in chosen:
            path = out / part / item.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(collection.read_bytes(item.path))
        labels = sorted({i.label for i in items})
        print(f"{part}: {len(chosen)} of {len(items)} images ({len(labels)} labels) → {out / part}")


def sample(args: argparse.Namespace) -> None:
    items = Collection(args.zip).items
    out = Path(args.out)
    if out.exists():  # predict reads every image below: no leftovers of another draw
        sys.exit(f"--out {out}: exists already; give a new folder")
    if args.n > len(items):
        sys.exit(f"--n {args.n}: {args.zip} has only {len(items)} images")
    collection = Collection(args.zip)
    for item in random.Random(args.seed).sample(items, args.n):
        path = out / item.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(collection.read_bytes(item.path))
    print(f"{args.n} of {len(items)} images → {out}")


def shares(args: argparse.Namespace) -> None:
    for folder in args.predictions:
        path = Path(folder) / "predictions.csv"
        if not path.exists():
            sys.exit(f"{path}: no such file; give folders written by `plankdiff predict --out`")
        table = pd.read_csv(path, keep_default_na=False)
        kind = table["decision"].where(table["decision"].isin([UNKNOWN, UNCLASSIFIED]), "a class")
        groups = [(str(s), kind[table["sample"] == s]) for s in table["sample"].unique()]
        for sample, decisions in [*groups, ("all", kind)] if len(groups) > 1 else groups:
            counts = decisions.value_counts(normalize=True)
            line = " / ".join(f"{100 * counts.get(k, 0.0):.1f}" for k in (UNKNOWN, UNCLASSIFIED, "a class"))
            print(f"{folder} {sample}: n = {len(decisions)}, unknown / unclassified / a class {line} %")


# Noise draws of the denoising score use draw indices from here on, apart from the feature
# extraction's (0, 1, ...), so the score does not reuse the noise the probe's features saw.
DENOISING_DRAW_OFFSET = 100


@torch.inference_mode()
def denoising_errors(
    unet, scheduler, images: np.ndarray, rows: np.ndarray, timesteps: list[int], draws: int, batch: int = 256
) -> np.ndarray:
    """[len(rows), len(timesteps)]: per image and t, the mean squared error of the predicted noise,
    averaged over `draws` noise draws seeded by (row, t, draw) as the feature extraction seeds them."""
    out = np.zeros((len(rows), len(timesteps)))
    device = next(unet.parameters()).device
    for start in range(0, len(rows), batch):
        chunk = np.asarray(rows[start : start + batch])
        x0 = to_model_range(torch.from_numpy(np.ascontiguousarray(images[chunk]))).to(device)
        for j, t in enumerate(timesteps):
            alpha_bar = float(scheduler.alphas_cumprod[t])
            for draw in range(draws):
                noise = seeded_noise(chunk, t, DENOISING_DRAW_OFFSET + draw, tuple(x0.shape[1:])).to(device)
                noisy = alpha_bar**0.5 * x0 + (1 - alpha_bar) ** 0.5 * noise
                predicted = unet(noisy, torch.full((len(chunk),), t, device=device)).sample
                out[start : start + len(chunk), j] += (
                    ((predicted - noise) ** 2).mean(dim=(1, 2, 3)).cpu().numpy()
                )
    return out / draws


def denoising(args: argparse.Namespace) -> None:
    timesteps = sorted(set(args.timesteps))
    unet, scheduler = load_backbone(args.backbone)
    if not all(0 <= t < len(scheduler.alphas_cumprod) for t in timesteps):
        sys.exit(f"--timesteps: each t must be in 0..{len(scheduler.alphas_cumprod) - 1}")
    dataset, other = PreparedDataset.open(args.dataset), PreparedDataset.open(args.other)
    split = Split.load(dataset, args.split)
    held = held_out_classes(split.classes, every=args.hold_out_every)
    held_val = held_out_rows(split, held, "val")
    known_val = np.setdiff1d(split.rows["val"], held_val)
    if args.other_n > len(other):
        sys.exit(f"--other-n {args.other_n}: {args.other} has only {len(other)} images")
    other_rows = np.sort(np.random.default_rng(args.seed).choice(len(other), args.other_n, replace=False))
    print(
        f"{args.backbone}: {len(known_val)} known and {len(held_val)} held-out validation images of "
        f"{dataset.name}, {len(other_rows)} of {other.name}; t = {timesteps}, {args.draws} draws",
        flush=True,
    )
    known = denoising_errors(unet, scheduler, dataset.images, known_val, timesteps, args.draws)
    unknowns = {
        f"held-out {dataset.name} classes": denoising_errors(
            unet, scheduler, dataset.images, held_val, timesteps, args.draws
        ),
        other.name: denoising_errors(unet, scheduler, other.images, other_rows, timesteps, args.draws),
    }
    # Errors shrink by orders of magnitude with t: the summed score standardises each t's log error
    # on the known images, so every t weighs alike.
    log_known = np.log(known)
    centre, spread = log_known.mean(axis=0), log_known.std(axis=0) + 1e-12
    table = []
    for name, errors in unknowns.items():
        columns = [(f"t={t}", known[:, j], errors[:, j]) for j, t in enumerate(timesteps)]
        columns.append(
            (
                "sum over t",
                ((log_known - centre) / spread).sum(1),
                ((np.log(errors) - centre) / spread).sum(1),
            )
        )
        for label, known_scores, unknown_scores in columns:
            threshold = calibrate_threshold(known_scores, keep=args.keep)
            metrics = rejection_metrics(known_scores, unknown_scores, threshold)
            table.append(
                {"unknown": name, "score": label}
                | metrics
                | {
                    "median_known": float(np.median(known_scores)),
                    "median_unknown": float(np.median(unknown_scores)),
                }
            )
            print(
                f"  {name}, {label}: AUROC {metrics['auroc']:.3f}, rejected {metrics['unknown_rejected']:.1%}"
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(table).to_csv(out / "denoising_scores.csv", index=False)
    print(f"→ {out / 'denoising_scores.csv'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    v = commands.add_parser("validation", help="every pair and all fused, distance scores, validation only")
    v.add_argument("features", help="feature store folder")
    v.add_argument("--split", required=True, help="split name on the store's dataset")
    v.add_argument(
        "--hold-out-every", type=int, default=HOLD_OUT_EVERY, help="as plankdiff evaluate open-set"
    )
    v.add_argument("--keep", type=float, default=DEFAULT_KEEP, help="share of known validation images kept")
    v.add_argument(
        "--per-class", metavar="PAIR", help="also each held-out class's AUROC (Mahalanobis) on PAIR"
    )
    v.add_argument("--out", required=True, help="folder for validation_scores.csv (and per_class.csv)")
    v.set_defaults(run=validation)
    p = commands.add_parser("pwssc-sample", help="the fixed random PWSSC samples, unmatched and matched")
    p.add_argument("--zip", default="../shared/datasets/pwssc.zip", help="the PWSSC archive")
    p.add_argument("--mapping", default="ndsb_pwssc", help="mapping file or shipped name")
    p.add_argument("--key", default="pwssc", help="the PWSSC rows' dataset column in the mapping")
    p.add_argument("--unmatched", type=int, default=600, help="images of labels without an NDSB counterpart")
    p.add_argument("--matched", type=int, default=300, help="images of labels with one")
    p.add_argument("--seed", type=int, default=0, help="seed of random.Random")
    p.add_argument("--out", required=True, help="folder to write unmatched/ and matched/ into")
    p.set_defaults(run=pwssc_sample)
    r = commands.add_parser("sample", help="a fixed random sample of a dataset archive, as files")
    r.add_argument("--zip", required=True, help="the dataset archive")
    r.add_argument("--n", type=int, default=1000, help="images to draw")
    r.add_argument("--seed", type=int, default=0, help="seed of random.Random")
    r.add_argument("--out", required=True, help="new folder to write <label>/<file> into")
    r.set_defaults(run=sample)
    s = commands.add_parser("shares", help="unknown / unclassified / a class per sample of predict outputs")
    s.add_argument("predictions", nargs="+", help="folders written by plankdiff predict --out")
    s.set_defaults(run=shares)
    d = commands.add_parser("denoising", help="the DDPM's denoising error as a score, validation only")
    d.add_argument("backbone", help="the diffusion run (or diffusers UNet folder)")
    d.add_argument("--dataset", required=True, help="prepared dataset the run was trained on")
    d.add_argument("--split", required=True, help="split name on --dataset")
    d.add_argument("--other", required=True, help="prepared dataset of another instrument")
    d.add_argument("--other-n", type=int, default=1000, help="images sampled from --other")
    d.add_argument("--seed", type=int, default=0, help="seed of the --other sample")
    d.add_argument(
        "--timesteps", type=int, nargs="+", default=[1, 5, 20, 50, 100, 200, 400], help="noise levels t"
    )
    d.add_argument("--draws", type=int, default=2, help="noise draws per image and t")
    d.add_argument(
        "--hold-out-every", type=int, default=HOLD_OUT_EVERY, help="as plankdiff evaluate open-set"
    )
    d.add_argument("--keep", type=float, default=DEFAULT_KEEP, help="share of known validation images kept")
    d.add_argument("--out", required=True, help="folder for denoising_scores.csv")
    d.set_defaults(run=denoising)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
