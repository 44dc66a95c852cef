"""How often `predict`'s sample-level shift alarm fires, on samples with and without a shift.

`predict` flags a sample whose share of `unknown` images exceeds the validation share
(counts_wide.csv `shift_alarm`, `OpenSet.excess_unknown_p`, p < `SHIFT_ALARM_P`). This script
measures it, built on the package's API:

- `test-zips --dataset PREPARED --split SPLIT --n N --out DIR`: a fixed random sample of N of the
  split's test images (`numpy.random.default_rng(--seed)`), written from their raw files as one zip
  unchanged (`clean`) and one per processing shift (`plankdiff.evaluation.processing_shift`, the
  same transforms and seeds as the benchmark), in the shared layout `predict` reads; `--chain
  grey-background+corner-disc` (repeatable) adds a zip of those shifts applied in that order (which
  shifts compound).
- `rates --model MODEL --out DIR INPUT...`: `predict` on each input apart (a folder, zip or IFCB
  bins; predictions kept in DIR/<input name>/ and reused when present for the same classifier),
  then the input's images drawn into disjoint random samples of `--sample-size`
  (`numpy.random.default_rng(--seed)`, at most `--samples` of them) and, for inputs that hold several
  samples of their own (IFCB bins), those too: per input the share of images `unknown` and the
  share of samples flagged, and the median and largest p; and the top-1 accuracy over the input's
  images whose true label (folder or manifest) is one of the classifier's classes. Writes DIR/alarm_rates.csv and prints it as a Markdown table.

Examples (a classifier exported with `plankdiff export --from results/<study>/metrics/...`):

    python scripts/shift_alarm_check.py test-zips --dataset $PLANKDIFF_CACHE/prepared/markers-ndsb-32 \\
        --split long-tailed-s0-cap300 --n 2000 --out alarm-inputs
    python scripts/shift_alarm_check.py rates --model models/ddpm --out alarm-ddpm alarm-inputs/*.zip \\
        ../shared/fixtures/ifcb zoolake-sample
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from PIL import Image

from plankdiff.data.prepare import PreparedDataset
from plankdiff.data.splits import Split
from plankdiff.deploy.calibrate import SHIFT_ALARM_P
from plankdiff.deploy.export import UNKNOWN, load_classifier
from plankdiff.deploy.predict import predict
from plankdiff.evaluation.processing_shift import (
    DEFAULT_SHIFTS,
    Combined,
    Transform,
    build_shift_zips,
    split_test_paths,
)
from plankdiff.report.tables import to_markdown

RATE_COLUMNS = [
    "input",
    "samples_of",
    "n_samples",
    "n_images",
    "unknown_share",
    "alarmed_share",
    "median_p",
    "max_p",
    "top1_accuracy",
]


class Unshifted(Transform):
    """The raw image as it is: the clean control, through the same zip writer as the shifts."""

    name: ClassVar[str] = "clean"

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return image


def chained(spec: str) -> Combined:
    """`grey-background+corner-disc` -> those shifts applied in that order."""
    names = spec.split("+")
    unknown = [name for name in names if name not in DEFAULT_SHIFTS]
    if unknown:
        raise ValueError(f"--chain {spec}: {unknown[0]!r} is not a shift ({', '.join(DEFAULT_SHIFTS)})")
    return Combined(steps=tuple(DEFAULT_SHIFTS[name] for name in names))


def test_zips(
    dataset: Path, split: str, *, n: int, seed: int, out: Path, chains: tuple[str, ...] = ()
) -> dict[str, Path]:
    prepared = PreparedDataset.open(dataset)
    paths = split_test_paths(prepared, Split.load(prepared, split))
    if n < 1:
        raise ValueError(f"--n {n}: draw at least one test image")
    chosen = sorted(np.random.default_rng(seed).choice(paths, size=min(n, len(paths)), replace=False))
    source = Path(prepared.info["source"])
    if not source.exists():
        raise ValueError(f"{source}: the raw source {prepared.name} was prepared from does not exist")
    shifts = {"clean": Unshifted(), **DEFAULT_SHIFTS, **{spec: chained(spec) for spec in chains}}
    return build_shift_zips(source, out_dir=out, paths=chosen, shifts=shifts, name=f"{prepared.name}-test")


def alarm_rows(
    frame: pd.DataFrame, open_set, *, name: str, sample_size: int, samples: int, seed: int, classes=()
) -> list[dict]:
    """Rows of RATE_COLUMNS for one input's predictions: its own samples (when it has several) and
    disjoint random samples of `sample_size` images."""
    unknown = (frame["decision"] == UNKNOWN).to_numpy()
    groups: dict[str, list[np.ndarray]] = {}
    own = [np.flatnonzero((frame["sample"] == s).to_numpy()) for s in frame["sample"].unique()]
    if len(own) > 1:
        groups["own"] = own
    order = np.random.default_rng(seed).permutation(len(frame))
    drawn = [order[i : i + sample_size] for i in range(0, len(order) - sample_size + 1, sample_size)]
    if drawn:
        groups[str(sample_size)] = drawn[:samples]
    labelled = (
        frame["true_label"].isin(list(classes)) if "true_label" in frame else np.zeros(len(frame), bool)
    )
    accuracy = (
        float((frame["top1"] == frame["true_label"])[labelled].mean()) if labelled.any() else float("nan")
    )
    rows = []
    for label, members in groups.items():
        p = np.array([open_set.excess_unknown_p(int(unknown[m].sum()), len(m)) for m in members])
        rows.append(
            {
                "input": name,
                "samples_of": label,
                "n_samples": len(members),
                "n_images": int(sum(len(m) for m in members)),
                "unknown_share": float(np.mean(np.concatenate([unknown[m] for m in members]))),
                "alarmed_share": float(np.mean(p < SHIFT_ALARM_P)),
                "median_p": float(np.nanmedian(p)) if np.isfinite(p).any() else float("nan"),
                "max_p": float(np.nanmax(p)) if np.isfinite(p).any() else float("nan"),
                "top1_accuracy": accuracy,
            }
        )
    return rows


def rates(
    model: Path, inputs: list[Path], *, out: Path, sample_size: int, samples: int, seed: int
) -> pd.DataFrame:
    if sample_size < 1 or samples < 1:
        raise ValueError("--sample-size and --samples must be at least 1")
    classifier = load_classifier(model)
    if classifier.open_set is None or classifier.open_set.n_val <= 0:
        raise ValueError(
            f"{model}: exported without an open-set cut and its validation size: no alarm to measure"
        )
    card_hash = classifier.card["content_sha256"]
    rows = []
    for path in inputs:
        if not path.exists():
            raise ValueError(f"{path}: does not exist")
        name = path.name.removesuffix(".zip")
        folder = out / name
        predictions = folder / "predictions.csv"
        stamp = folder / "classifier.json"
        reuse = (
            predictions.exists()
            and stamp.exists()
            and json.loads(stamp.read_text())["content_sha256"] == card_hash
        )
        if not reuse:
            predict(classifier, [path], predictions, show_progress=False)
            stamp.write_text(json.dumps({"model": str(model), "content_sha256": card_hash}))
        frame = pd.read_csv(predictions, keep_default_na=False)
        rows += alarm_rows(
            frame,
            classifier.open_set,
            name=name,
            sample_size=sample_size,
            samples=samples,
            seed=seed,
            classes=classifier.classes,
        )
    table = pd.DataFrame(rows, columns=RATE_COLUMNS)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "alarm_rates.csv", index=False)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    zips = commands.add_parser("test-zips", help="clean and shifted zips of a fixed sample of test images")
    zips.add_argument("--dataset", type=Path, required=True, help="prepared dataset folder or name")
    zips.add_argument("--split", required=True, help="split name, e.g. long-tailed-s0-cap300")
    zips.add_argument("--n", type=int, default=2000, help="test images drawn (default 2000)")
    zips.add_argument("--seed", type=int, default=0)
    zips.add_argument("--out", type=Path, required=True)
    zips.add_argument(
        "--chain",
        action="append",
        default=[],
        help="shifts applied in order, e.g. grey-background+corner-disc",
    )
    rate = commands.add_parser("rates", help="shift-alarm rates of a classifier on inputs")
    rate.add_argument(
        "inputs", type=Path, nargs="+", help="folders, zips or IFCB bin folders, one input each"
    )
    rate.add_argument("--model", type=Path, required=True, help="exported classifier folder")
    rate.add_argument("--out", type=Path, required=True)
    rate.add_argument("--sample-size", type=int, default=200, help="images per random sample (default 200)")
    rate.add_argument(
        "--samples", type=int, default=20, help="random samples per input, at most (default 20)"
    )
    rate.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.command == "test-zips":
            chains = tuple(args.chain)
            for shift, path in test_zips(
                args.dataset, args.split, n=args.n, seed=args.seed, out=args.out, chains=chains
            ).items():
                print(f"{shift}: {path}")
        else:
            table = rates(
                args.model,
                args.inputs,
                out=args.out,
                sample_size=args.sample_size,
                samples=args.samples,
                seed=args.seed,
            )
            print(to_markdown(table.map(lambda v: f"{v:.3g}" if isinstance(v, float) else v)))
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
