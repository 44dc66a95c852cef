"""Benchmark: the batched probe grid against sklearn LogisticRegression fitted pair by pair.

Run by hand (not collected by pytest), e.g. in the background with a log:

    nohup .venv/bin/python bench/bench_probe.py > bench/results/probe.log 2>&1 &

Features: `cache/bench_features.npz` when it exists (keys: `labels` [N] int, optional `split` [N]
with 0/1/2 = train/val/test, every other key one pair [N, D]); otherwise synthetic features of the
realistic shape (63 pairs = 9 blocks × 7 timesteps, D in {32, 64, 128, 256}, N = 30k, 121 classes
with an NDSB-like long tail, 70/10/20 split, float16), whose class signal peaks at one pair.

(a) `fit_probe_grid` on every pair with its default 2 lr × 2 weight-decay grid; (b) sklearn lbfgs
on a subset of pairs (the grid's best plus pairs spread over every width) with as many C values as
the grid has hps, its time extrapolated to all pairs from the mean fit time per width. Both use the
same thread count. Writes `bench/results/probe.md`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from threadpoolctl import threadpool_limits

from plankdiff.probe.linear import DEFAULT_LRS, DEFAULT_WEIGHT_DECAYS, fit_probe_grid, train_statistics
from plankdiff.probe.metrics import present_labels
from plankdiff.provenance import git_sha

ROOT = Path(__file__).resolve().parents[1]
REAL_FEATURES = ROOT / "cache" / "bench_features.npz"
BLOCKS = {"enc0": 32, "enc1": 64, "enc2": 128, "enc3": 256, "mid": 256, "dec3": 256, "dec2": 128, "dec1": 64}
BLOCKS |= {"dec0": 32}
TIMESTEPS = (5, 25, 50, 100, 200, 400, 800)
SKLEARN_CS = (0.01, 0.1, 1.0, 10.0)


def synthetic(
    *, n: int, n_classes: int, seed: int, uniform_dim: int | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Class centres in a 24-d latent space, seen by each pair through its own random projection plus
    unit noise; the projection strength peaks at dec3/t=50 and falls off across blocks and timesteps.
    Class sizes follow rank^-1.1 (largest/smallest ≈ 200, as NDSB), at least 9 images each."""
    rng = np.random.default_rng(seed)
    share = np.arange(1, n_classes + 1, dtype=float) ** -1.1
    labels = rng.permutation(
        np.repeat(np.arange(n_classes), np.maximum(np.round(share / share.sum() * n), 9).astype(int))
    )
    n = len(labels)
    centres = rng.normal(size=(n_classes, 24))
    features = {}
    for b, (block, dim) in enumerate(BLOCKS.items()):
        for i, t in enumerate(TIMESTEPS):
            strength = 0.9 * np.exp(-((b - 5) ** 2) / 8 - ((i - 2) ** 2) / 6)
            latent = centres[labels] + rng.normal(size=(n, 24))
            width = uniform_dim or dim
            projection = rng.normal(size=(24, width)) / np.sqrt(24)
            x = strength * latent @ projection + rng.normal(size=(n, width)) + 3.0
            features[f"{block}/t={t}"] = x.astype(np.float16)
    order = rng.permutation(n)
    cut = [int(0.7 * n), int(0.8 * n)]
    return features, labels, dict(zip(("train", "val", "test"), np.split(order, cut), strict=True))


def load_real(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    labels = arrays.pop("labels").astype(np.int64)
    split = arrays.pop("split", None)
    if split is None:
        order = np.random.default_rng(0).permutation(len(labels))
        cut = [int(0.7 * len(labels)), int(0.8 * len(labels))]
        rows = dict(zip(("train", "val", "test"), np.split(order, cut), strict=True))
    else:
        rows = {name: np.flatnonzero(split == code) for code, name in enumerate(("train", "val", "test"))}
    return arrays, labels, rows


def sklearn_fit(
    x, labels, rows, *, C: float, n_classes: int, max_iter: int
) -> tuple[float, float, float, bool]:
    """(seconds, val accuracy, val macro-F1, converged) of one lbfgs fit on train-standardised features."""
    mean, std = train_statistics(x, rows["train"])
    x_train = (x[rows["train"]].astype(np.float64) - mean) / std
    x_val = (x[rows["val"]].astype(np.float64) - mean) / std
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = LogisticRegression(C=C, max_iter=max_iter).fit(x_train, labels[rows["train"]])
    seconds = time.perf_counter() - start
    predicted = model.predict(x_val)
    y_val = labels[rows["val"]]
    macro = f1_score(
        y_val, predicted, labels=present_labels(y_val, n_classes), average="macro", zero_division=0
    )
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return seconds, float((predicted == y_val).mean()), float(macro), converged


def sklearn_subset(features: dict[str, np.ndarray], best_pair: str, count: int) -> list[str]:
    """The grid's best pair plus pairs spread evenly over the list, with every width represented."""
    names = list(features)
    chosen = [best_pair]
    for name in names[:: max(1, len(names) // max(count - 1, 1))]:
        if len(chosen) < count and name not in chosen:
            chosen.append(name)
    for width in sorted({x.shape[1] for x in features.values()}):
        if not any(features[p].shape[1] == width for p in chosen):
            chosen.append(next(p for p in names if features[p].shape[1] == width))
    return chosen


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} CPUs (nproc), {model}, {memory_gb:.0f} GiB RAM, Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads for both sides")
    parser.add_argument("--sklearn-pairs", type=int, default=6)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--classes", type=int, default=121)
    parser.add_argument("--skip-uniform", action="store_true", help="skip the 63 × D=128 timing run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "probe.md")
    args = parser.parse_args()
    log = lambda message: print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)  # noqa: E731
    load_before = os.getloadavg()

    if REAL_FEATURES.exists():
        features, labels, rows = load_real(REAL_FEATURES)
        source = f"real features from {REAL_FEATURES.relative_to(ROOT)}"
    else:
        features, labels, rows = synthetic(n=args.n, n_classes=args.classes, seed=0)
        source = "synthetic (no cache/bench_features.npz): Gaussian classes through per-pair projections"
    n_classes = int(labels.max()) + 1
    dims = sorted({x.shape[1] for x in features.values()})
    log(f"{source}: {len(features)} pairs, dims {dims}, N {len(labels)}, {n_classes} classes")

    with threadpool_limits(args.threads):
        start = time.perf_counter()
        grid = fit_probe_grid(
            features,
            labels,
            train=rows["train"],
            val=rows["val"],
            n_classes=n_classes,
            num_threads=args.threads,
        )
        grid_seconds = time.perf_counter() - start
        log(f"grid: {grid_seconds:.1f} s, best {grid.best_pair} {grid.best_hp}")

        uniform_seconds = None
        if not args.skip_uniform:
            uniform, uniform_labels, uniform_rows = synthetic(
                n=args.n, n_classes=args.classes, seed=1, uniform_dim=128
            )
            start = time.perf_counter()
            fit_probe_grid(
                uniform,
                uniform_labels,
                train=uniform_rows["train"],
                val=uniform_rows["val"],
                n_classes=args.classes,
                num_threads=args.threads,
            )
            uniform_seconds = time.perf_counter() - start
            uniform_train = len(uniform_rows["train"])
            del uniform
            log(f"uniform 63 × D=128 grid: {uniform_seconds:.1f} s")

        subset = sklearn_subset(features, grid.best_pair, args.sklearn_pairs)
        sk_rows = []
        for pair in subset:
            for C in SKLEARN_CS:
                seconds, accuracy, macro, converged = sklearn_fit(
                    features[pair], labels, rows, C=C, n_classes=n_classes, max_iter=args.max_iter
                )
                sk_rows.append((pair, features[pair].shape[1], C, seconds, accuracy, macro, converged))
                log(f"sklearn {pair} C={C}: {seconds:.1f} s, val acc {accuracy:.4f}, converged {converged}")

    per_width = {d: np.mean([r[3] for r in sk_rows if r[1] == d]) for d in dims}
    sklearn_total = sum(per_width[x.shape[1]] * len(SKLEARN_CS) for x in features.values())
    sklearn_measured = sum(r[3] for r in sk_rows)
    best_table = grid.best_per_pair().set_index("pair")
    comparison = []
    for pair in subset:
        fits = [r for r in sk_rows if r[0] == pair]
        best_fit = max(fits, key=lambda r: (r[5], r[4]))
        comparison.append(
            (
                pair,
                features[pair].shape[1],
                best_table.loc[pair, "val_accuracy"],
                best_table.loc[pair, "val_macro_f1"],
            )
            + (best_fit[4], best_fit[5], best_fit[2])
        )
    sk_best = max(comparison, key=lambda c: (c[5], c[4]))
    grid_best_in_subset = max(comparison, key=lambda c: (c[3], c[2]))
    gaps = [c[2] - c[4] for c in comparison]

    n_probes = len(grid.table)
    settings = grid.settings
    lines = [
        "# Probe benchmark: batched grid vs per-pair sklearn LogisticRegression",
        "",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}` (from the repository root)",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, git {git_sha(ROOT)}",
        f"- machine: {machine()}; torch and BLAS limited to {args.threads} thread(s) on both sides",
        f"- load average (1/5/15 min) before: {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after: {'/'.join(f'{v:.2f}' for v in os.getloadavg())}. Another process (a diffusion training run) "
        "may have been using the cores: absolute times are pessimistic, and both sides shared the same conditions.",
        f"- data: {source}; {len(features)} pairs, widths {dims}; N = {len(labels)} "
        f"(train {len(rows['train'])}, val {len(rows['val'])}, test {len(rows['test'])}), {n_classes} classes",
        "",
        "## (a) Batched grid (`fit_probe_grid`, defaults)",
        "",
        f"- {len(features)} pairs × {len(DEFAULT_LRS) * len(DEFAULT_WEIGHT_DECAYS)} hps "
        f"(lr {list(DEFAULT_LRS)} × weight decay {list(DEFAULT_WEIGHT_DECAYS)}) = {n_probes} probes, "
        f"{settings['epochs']} epochs × batch {settings['batch_size']}, AdamW + cosine, "
        f"{settings['matmul_dtype']} products",
        f"- **wall time: {grid_seconds:.1f} s** ({grid_seconds / n_probes:.2f} s per probe)",
        f"- selected: `{grid.best_pair}` at lr {grid.best_hp['lr']}, wd {grid.best_hp['weight_decay']}: "
        f"val accuracy {best_table.loc[grid.best_pair, 'val_accuracy']:.4f}, "
        f"val macro-F1 {best_table.loc[grid.best_pair, 'val_macro_f1']:.4f}",
    ]
    if uniform_seconds is not None:
        lines.append(
            f"- timing only, synthetic 63 pairs × D = 128, N_train = {uniform_train}, {args.classes} classes: "
            f"**{uniform_seconds:.1f} s**"
        )
    lines += [
        "",
        "## (b) sklearn LogisticRegression (lbfgs, float64), one fit per pair per C",
        "",
        f"- measured on {len(subset)} of {len(features)} pairs × C in {list(SKLEARN_CS)} "
        f"({len(sk_rows)} fits, max_iter {args.max_iter}): {sklearn_measured:.0f} s; "
        f"{sum(not r[6] for r in sk_rows)} fits hit max_iter",
        f"- mean seconds per fit by width: {', '.join(f'D={d}: {per_width[d]:.1f}' for d in dims)}",
        f"- **extrapolated to all {len(features)} pairs × {len(SKLEARN_CS)} C (linear in pairs, per width): "
        f"{sklearn_total:.0f} s**",
        "",
        "## Comparison",
        "",
        f"- **speed-up of the batched grid: {sklearn_total / grid_seconds:.0f}×** "
        f"(extrapolated sklearn {sklearn_total:.0f} s / grid {grid_seconds:.0f} s)",
        f"- best pair among the {len(subset)} sklearn pairs: grid `{grid_best_in_subset[0]}` "
        f"(val acc {grid_best_in_subset[2]:.4f}), sklearn `{sk_best[0]}` (val acc {sk_best[4]:.4f}, C {sk_best[6]})",
        f"- val accuracy, grid minus sklearn, each at its own best hp: mean {np.mean(gaps):+.4f}, "
        f"range {min(gaps):+.4f} .. {max(gaps):+.4f}",
        "",
        "| pair | D | grid val acc | grid val macro-F1 | sklearn val acc | sklearn val macro-F1 | sklearn C |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {c[0]} | {c[1]} | {c[2]:.4f} | {c[3]:.4f} | {c[4]:.4f} | {c[5]:.4f} | {c[6]} |"
            for c in comparison
        ),
        "",
        "sklearn fits:",
        "",
        "| pair | D | C | seconds | val acc | val macro-F1 | converged |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.4f} | {r[5]:.4f} | {r[6]} |" for r in sk_rows),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
