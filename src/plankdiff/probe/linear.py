"""Linear probes: one softmax classifier per (pair, hyper-parameter), all trained at once.

A "pair" is one (block, timestep) feature matrix [N, D_pair]. Fitting 63 pairs × 4 hyper-parameter
settings one by one would repeat the same data pass 252 times; here every probe sees the same
mini-batches, so all of them are one batched matrix product per step: pairs are grouped by padded
width (next power of two, so 32..512-wide blocks make at most five groups and padding wastes < 2×),
and inside a group the weights are [pairs, width, hps × classes]. Zero-padded inputs meet weights
that start at zero and receive zero gradient, so they stay exactly zero and each probe is the model
it would be alone.

The optimiser is AdamW written out over the whole weight tensor, because every probe needs its own
learning rate and weight decay: Adam divides out gradient scale, so scaling gradients per probe
cannot set a per-probe learning rate, and one torch parameter group per hp would split the batched
product apart. The schedule is cosine over all steps, no warm-up: the problem is convex, weights
start at zero and biases at the log class prior (`initial_bias`).

Matrix products run in bfloat16 by default (their outputs, logits and weight gradients, rounded to
bf16) with float32 weights, optimiser state, softmax and loss: on CPUs with AMX (Sapphire Rapids and
later) and on GPUs that is ~20× the float32 throughput, and linear probes on standardised features
do not notice the rounding (on the 63-pair benchmark on an H200, bf16 and float32 selected the same
probe, validation accuracy equal and macro-F1 within 0.0004; tests and benchmark compare with lbfgs).
Pass `matmul_dtype="float32"` on CPUs without bf16 units.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression

from plankdiff.choices import Device, Loss
from plankdiff.devices import torch_device
from plankdiff.probe.metrics import macro_f1_rows
from plankdiff.probe.protocol import LOSSES
from plankdiff.probe.selection import rank
from plankdiff.progress import progress_bar

# Defaults sized for 2 CPU cores: 6 probes per pair, 40 epochs of batch 512 (~1,700 steps at
# N_train = 21k). They were first chosen on synthetic data (10 epochs, lr 3e-3/1e-2, wd 1e-4/0.5),
# where they matched sklearn; on real NDSB diffusion features that setting under-fitted: best-pair
# validation accuracy 50.8 % against 55.7 % for converged lbfgs (bench/results/probe_real_ndsb.md).
# With 40 epochs and lr up to 3e-2 the same pair reaches 55.2 % (100 epochs: 55.5 %), within a point
# of lbfgs, at 4× the cost of the old setting. With a fixed step budget the learning rate acts as the
# amount of training (Adam moves each weight by about lr per step): 1e-2 and 3e-2 suit the 32-128-wide
# diffusion blocks, while 1,024 raw pixels do best at 3e-3 (35.2 % against 32.7 % at the larger rates),
# so all three stay in the grid and validation picks.
# Decoupled weight decay shrinks weights by about exp(-lr · wd · steps / 2) over a cosine run: the
# grid contrasts "none" (1e-4) with a real pull to zero (0.05: ~35 % at lr 1e-2, ~70 % at 3e-2),
# which matters for wide blocks and classes with a handful of training images. Smaller training sets
# get more epochs (`min_steps`).
DEFAULT_LRS: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1e-4, 0.05)
DEFAULT_EPOCHS = 40
DEFAULT_BATCH_SIZE = 512
DEFAULT_MIN_STEPS = 400
# One torch thread by default: on this project's 2-core machines another process is usually
# training, and two OpenMP threads then wait on each other at every op (measured 5x slower).
DEFAULT_THREADS = 1
CLASS_BALANCED_BETA = 0.999  # Cui et al. 2019, "effective number of samples"
LOGIT_ADJUST_TAU = 1.0  # Menon et al. 2021, the Bayes-consistent value for balanced error
STD_FLOOR = 1e-6
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
EVAL_CHUNK = 4096  # rows scored at a time: bounds memory to ~pairs × chunk × width floats


def as_rows(index: np.ndarray, n: int) -> np.ndarray:
    """Integer row indices from either a boolean mask over `n` rows or integer indices."""
    index = np.asarray(index)
    if index.dtype == bool:
        if index.shape != (n,):
            raise ValueError(f"boolean split mask of shape {index.shape} for {n} rows")
        return np.flatnonzero(index)
    if not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"split indices must be integers or a mask, got {index.dtype}")
    if not (index.size == 0 or (index.min() >= 0 and index.max() < n)):
        raise ValueError(f"split indices outside 0..{n - 1}")
    return index.astype(np.int64)


def train_statistics(x: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std over the training rows only (float64 sums; std floored at 1e-6).

    Validation and test rows never enter, so a shift in them cannot leak into the standardisation;
    sums run in float64 rather than in the features' float16, whose 11-bit mantissa would lose them.
    """
    rows = x[as_rows(train, len(x))]
    mean = rows.mean(axis=0, dtype=np.float64)
    std = np.maximum(rows.std(axis=0, dtype=np.float64), STD_FLOOR)
    return mean.astype(np.float32), std.astype(np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@dataclass
class LinearClassifier:
    """A fitted probe that takes raw features: `softmax(((x - mean) / std) @ weight.T + bias)`.

    `weight` is [classes, features] like `torch.nn.Linear`. It carries its own train statistics so
    that a saved classifier cannot be applied to features standardised some other way.
    """

    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        for name in ("mean", "std", "weight", "bias"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float32))
        d, c = self.mean.shape[0], self.bias.shape[0]
        if self.std.shape != (d,):
            raise ValueError(f"std {self.std.shape} does not match mean ({d},)")
        if self.weight.shape != (c, d):
            raise ValueError(f"weight {self.weight.shape} should be (classes={c}, features={d})")
        if not (self.std > 0).all():
            raise ValueError("std must be positive (it divides the features)")

    @classmethod
    def from_arrays(
        cls, *, mean: np.ndarray, std: np.ndarray, weight: np.ndarray, bias: np.ndarray
    ) -> LinearClassifier:
        """Rebuild from `state_dict()` output, e.g. as loaded with `safetensors.numpy.load_file`."""
        return cls(mean=mean, std=std, weight=weight, bias=bias)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The four arrays, ready for `safetensors.numpy.save_file`."""
        return {"mean": self.mean, "std": self.std, "weight": self.weight, "bias": self.bias}

    @property
    def n_features(self) -> int:
        return self.mean.shape[0]

    @property
    def n_classes(self) -> int:
        return self.bias.shape[0]

    def logits(self, x_raw: np.ndarray) -> np.ndarray:
        if not (x_raw.ndim == 2 and x_raw.shape[1] == self.n_features):
            raise ValueError(f"features of shape {x_raw.shape}, classifier expects (N, {self.n_features})")
        out = np.empty((len(x_raw), self.n_classes), dtype=np.float32)
        for start in range(0, len(x_raw), EVAL_CHUNK):
            chunk = (x_raw[start : start + EVAL_CHUNK].astype(np.float32) - self.mean) / self.std
            out[start : start + EVAL_CHUNK] = chunk @ self.weight.T + self.bias
        return out

    def predict_proba(self, x_raw: np.ndarray) -> np.ndarray:
        return _softmax(self.logits(x_raw))

    def predict(self, x_raw: np.ndarray) -> np.ndarray:
        return self.logits(x_raw).argmax(axis=1)


@dataclass
class ProbeGrid:
    """Every probe's validation scores, the selected (pair, hp), and each pair's best classifier.

    `table` has one row per (pair, hp), pairs in the order given and hps in grid order, with columns
    pair, dim, lr, weight_decay, val_macro_f1, val_accuracy, train_loss (mean over the last epoch).
    Selection everywhere is: highest val macro-F1, ties broken by val accuracy, then by pair name (`plankdiff.probe.selection`).
    """

    table: pd.DataFrame
    best_pair: str
    best_hp: dict[str, float]
    settings: dict[str, Any]
    classifiers: dict[str, LinearClassifier] = field(repr=False)

    def classifier(self, pair: str | None = None) -> LinearClassifier:
        """The probe of `pair` (default: the selected pair) at that pair's best hyper-parameters."""
        pair = self.best_pair if pair is None else pair
        if pair not in self.classifiers:
            raise ValueError(f"unknown pair {pair!r}; pairs are {list(self.classifiers)}")
        return self.classifiers[pair]

    def best_per_pair(self) -> pd.DataFrame:
        """One row per pair at its best hp, in the given pair order: the input of a block × t heatmap."""
        ranked = _ranked(self.table)
        best = ranked.groupby("pair", sort=False).head(1)
        return best.set_index("pair").loc[list(self.classifiers)].reset_index()

    def hyperparameters(self) -> dict[str, Any]:
        """Everything needed to refit the selected probe, for `metrics.json`."""
        return {"pair": self.best_pair, **self.best_hp, **self.settings}


def _ranked(table: pd.DataFrame) -> pd.DataFrame:
    return rank(table)


def class_weights(counts: np.ndarray, *, beta: float = CLASS_BALANCED_BETA) -> np.ndarray:
    """Cui et al. 2019: weight ∝ (1 - β) / (1 - β^n_c), normalised to mean 1 over classes seen in training.

    Classes absent from training get weight 0: no training example carries them, and leaving them
    out of the mean keeps the weights of the classes that are there independent of the label space.
    """
    seen = counts > 0
    weights = np.zeros(len(counts))
    weights[seen] = (1 - beta) / (1 - beta ** counts[seen].astype(np.float64))
    weights[seen] /= weights[seen].mean()
    return weights


def logit_adjustment(counts: np.ndarray, *, tau: float = LOGIT_ADJUST_TAU) -> np.ndarray:
    """Menon et al. 2021: τ·log prior, added to the logits while training only.

    Counts are floored at 1 so an unseen class gets a large negative offset instead of -inf.
    """
    counts = np.maximum(counts, 1).astype(np.float64)
    return tau * np.log(counts / counts.sum())


def initial_bias(counts: np.ndarray, loss: Loss) -> np.ndarray:
    """The bias that minimises the training loss while all weights are zero: the (weighted) log prior.

    Starting there, the optimiser spends its steps on the weights instead of walking each bias
    several nats to its class frequency (NDSB's classes span a ~200× range, ~5 nats, which Adam at
    lr 1e-3 would need thousands of steps for). Logit adjustment already adds τ·log prior, so its
    probes start at (1 - τ)·log prior. Counts are floored at 1, as in `logit_adjustment`.
    """
    counts = np.maximum(counts, 1).astype(np.float64)
    if loss == "class-balanced":
        counts = counts * class_weights(counts)
    log_prior = np.log(counts / counts.sum())
    return log_prior - logit_adjustment(counts) if loss == "logit-adjusted" else log_prior


def _loss_and_grads(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    y: torch.Tensor,
    *,
    n_classes: int,
    sample_weight: torch.Tensor | None,
    logit_offset: torch.Tensor | None,
    workspace: dict[int, tuple[torch.Tensor, ...]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted softmax cross-entropy of every probe on one batch, and its gradients, by hand.

    x [G, B, W] (matmul dtype), weight [G, W, H·C] and bias [G, H·C] (float32), y [B].
    Returns (per-probe loss [G, H], grad weight, grad bias). The gradient of the batch-mean CE is
    (softmax - onehot) · sample_weight / B; writing it out avoids an autograd graph over the largest
    tensor of the step, keeps the bf16 products explicit, and lets the [G, B, H·C] buffers be reused
    across steps (`workspace`, keyed by batch size): on a 2-core CPU the step is bound by these
    elementwise passes and by fresh allocations, not by the matrix products, so each pass counts.
    The loss (reported, not differentiated) is -log of the target probability, floored at the
    smallest float32 so a margin beyond ~87 nats reads as 87 rather than inf.
    """
    groups, batch, _ = x.shape
    n_out = weight.shape[2]
    hps = n_out // n_classes
    workspace = {} if workspace is None else workspace
    if batch not in workspace:
        shape = (groups, batch, n_out)
        workspace[batch] = (
            torch.empty(shape, device=x.device),
            torch.empty(shape, device=x.device),
            torch.empty(shape, device=x.device, dtype=x.dtype),
        )
    logits, probs, grad = workspace[batch]
    logits.copy_(torch.bmm(x, weight.to(x.dtype))).add_(bias[:, None, :])
    logits4 = logits.view(groups, batch, hps, n_classes)
    if logit_offset is not None:
        logits4.add_(logit_offset)
    probs4 = torch.softmax(logits4, dim=-1, out=probs.view(groups, batch, hps, n_classes))
    target = y.view(1, batch, 1, 1).expand(groups, batch, hps, 1)
    scale = sample_weight[y] / batch if sample_weight is not None else torch.full((batch,), 1.0 / batch)
    scale = scale.to(x.device)
    nll = -probs4.gather(-1, target).squeeze(-1).clamp_min_(torch.finfo(torch.float32).tiny).log_()
    loss = (nll * scale.view(1, batch, 1)).sum(dim=1)
    probs4.scatter_add_(-1, target, probs4.new_full(target.shape, -1.0))
    probs.mul_(scale.view(1, batch, 1))
    grad_bias = probs.sum(dim=1)
    grad_weight = torch.bmm(x.transpose(1, 2), grad.copy_(probs)).float()
    return loss, grad_weight, grad_bias


def _adamw_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    step: int,
    lr: torch.Tensor,
    weight_decay: torch.Tensor | None,
) -> None:
    """One AdamW step (torch.optim.AdamW's arithmetic) with a learning rate and decay per last-axis slice.

    `lr` and `weight_decay` broadcast against `param`'s last axis (hps × classes), which is how each
    probe gets its own; decay is decoupled and scaled by lr, as in torch. `step` counts from 1.
    """
    beta1, beta2 = ADAM_BETAS
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    if weight_decay is not None:
        param.mul_(1 - lr * weight_decay)
    denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(ADAM_EPS).div_(lr / (1 - beta1**step))
    param.addcdiv_(exp_avg, denom, value=-1)


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run with `n` intra-op threads, then restore the caller's setting (None: leave it alone)."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _padded_width(dim: int) -> int:
    return 1 << max(dim - 1, 0).bit_length()


def _standardised(
    features: Mapping[str, np.ndarray],
    pairs: Sequence[str],
    rows: np.ndarray,
    stats: Mapping[str, tuple[np.ndarray, np.ndarray]],
    width: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[len(pairs), len(rows), width]: each pair standardised with its train stats, zero-padded."""
    out = torch.zeros(len(pairs), len(rows), width, dtype=dtype)
    for i, pair in enumerate(pairs):
        mean, std = stats[pair]
        z = torch.from_numpy((features[pair][rows].astype(np.float32) - mean) / std)
        out[i, :, : len(mean)] = z
    return out


class _Group:
    """Pairs that share a padded width: their train inputs, probe weights, AdamW state and buffers."""

    def __init__(self, pairs: list[str], x_train: torch.Tensor, bias_init: torch.Tensor, n_hps: int) -> None:
        self.pairs, self.x_train, self.width = pairs, x_train, x_train.shape[2]
        self.weight = torch.zeros(len(pairs), self.width, len(bias_init), device=x_train.device)
        self.bias = bias_init.to(x_train.device).repeat(len(pairs), 1)
        self.adam_weight = (torch.zeros_like(self.weight), torch.zeros_like(self.weight))
        self.adam_bias = (torch.zeros_like(self.bias), torch.zeros_like(self.bias))
        self.workspace: dict[int, tuple[torch.Tensor, ...]] = {}
        self.last_epoch_loss = torch.zeros(len(pairs), n_hps, device=x_train.device)


def fit_probe_grid(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    train: np.ndarray,
    val: np.ndarray,
    n_classes: int,
    lrs: Sequence[float] = DEFAULT_LRS,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    loss: Loss = "ce",
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    min_steps: int = DEFAULT_MIN_STEPS,
    seed: int = 0,
    device: Device | torch.device = "auto",
    matmul_dtype: Literal["bfloat16", "float32"] = "bfloat16",
    num_threads: int | None = DEFAULT_THREADS,
    progress: bool = False,
) -> ProbeGrid:
    """Fit a linear probe for every pair × (lr, weight decay) as one batched model; select on validation.

    features: pair name → [N, D_pair] (any float dtype, e.g. float16), rows aligned with `labels`.
    train, val: row indices or boolean masks; disjoint. Standardisation uses train rows only.
    loss: "ce"; "class-balanced" (per-class weights, `class_weights`); "logit-adjusted" (τ·log prior
    added to the logits in training only, `logit_adjustment`). Defaults are sized for 2 CPU cores
    (module constants, reasons there: lrs (3e-3, 1e-2) × weight decays (1e-4, 0.5), 10 epochs, batch
    512); `epochs` is raised until there are `min_steps` optimiser steps (400), so small training sets
    converge too. All probes share one seeded shuffle, so a seed fixes every result bit for bit on a
    given machine. num_threads: torch intra-op threads for this call only (default 1, see
    DEFAULT_THREADS); None keeps torch's setting, the right choice on an idle many-core machine.
    device: where the probes train and are scored (auto: CUDA when there is one: on a GPU machine
    the CPU would otherwise probe single-threaded while the GPU waits).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} is not one of {LOSSES}")
    if not features:
        raise ValueError("no feature pairs to probe")
    if not (epochs > 0 and batch_size > 0):
        raise ValueError("epochs and batch_size must be positive")
    if not (lrs and weight_decays):
        raise ValueError("the hyper-parameter grid is empty")
    if not (min(lrs) > 0 and min(weight_decays) >= 0):
        raise ValueError("learning rates must be positive, weight decays >= 0")
    labels = np.asarray(labels)
    n = len(labels)
    for pair, x in features.items():
        if not (x.ndim == 2 and len(x) == n):
            raise ValueError(f"pair {pair!r}: features {x.shape} do not align with {n} labels")
    train_rows, val_rows = as_rows(train, n), as_rows(val, n)
    if not (len(train_rows) and len(val_rows)):
        raise ValueError("train and val splits must both be non-empty")
    if np.intersect1d(train_rows, val_rows).size:
        raise ValueError("train and val rows overlap: selection would leak")
    if not (labels.min() >= 0 and labels.max() < n_classes):
        raise ValueError(f"labels outside range({n_classes})")

    hps = list(product(lrs, weight_decays))
    counts = np.bincount(labels[train_rows], minlength=n_classes)
    stats = {pair: train_statistics(x, train_rows) for pair, x in features.items()}
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[matmul_dtype]
    device = torch_device(device)
    with _torch_threads(num_threads):
        bias_init = torch.tensor(initial_bias(counts, loss), dtype=torch.float32).repeat(len(hps))
        by_width: dict[int, list[str]] = {}
        for pair, x in features.items():
            by_width.setdefault(_padded_width(x.shape[1]), []).append(pair)
        groups = [
            _Group(
                pairs,
                _standardised(features, pairs, train_rows, stats, width, dtype).to(device),
                bias_init,
                len(hps),
            )
            for width, pairs in sorted(by_width.items())
        ]
        _train(
            groups,
            torch.from_numpy(labels[train_rows].astype(np.int64)).to(device),
            hps=hps,
            n_classes=n_classes,
            counts=counts,
            loss=loss,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
        )
        table = _score(groups, features, stats, labels, val_rows, hps=hps, n_classes=n_classes)
    best = _ranked(table).iloc[0]
    settings = {
        "loss": loss,
        "epochs": epochs,
        "batch_size": batch_size,
        "min_steps": min_steps,
        "seed": seed,
        "lrs": list(lrs),
        "weight_decays": list(weight_decays),
        "optimizer": "adamw-cosine",
        "matmul_dtype": matmul_dtype,
        "n_train": len(train_rows),
        "n_val": len(val_rows),
    }
    if loss == "class-balanced":
        settings["class_balanced_beta"] = CLASS_BALANCED_BETA
    if loss == "logit-adjusted":
        settings["logit_adjust_tau"] = LOGIT_ADJUST_TAU
    return ProbeGrid(
        table=table,
        best_pair=str(best["pair"]),
        best_hp={"lr": float(best["lr"]), "weight_decay": float(best["weight_decay"])},
        settings=settings,
        classifiers=_export(groups, table, stats, hps=hps, n_classes=n_classes, order=list(features)),
    )


def _train(
    groups: list[_Group],
    y_train: torch.Tensor,
    *,
    hps: list[tuple[float, float]],
    n_classes: int,
    counts: np.ndarray,
    loss: Loss,
    epochs: int,
    batch_size: int,
    seed: int,
    progress: bool,
) -> None:
    """Mini-batch AdamW with a cosine schedule over every group at once; one shared seeded shuffle.

    Leaves the weights in the groups, and each probe's mean training loss over the last epoch in
    `group.last_epoch_loss` [pairs, hps].
    """
    device = y_train.device
    sample_weight = (
        torch.tensor(class_weights(counts), dtype=torch.float32, device=device)
        if loss == "class-balanced"
        else None
    )
    logit_offset = (
        torch.tensor(logit_adjustment(counts), dtype=torch.float32, device=device)
        if loss == "logit-adjusted"
        else None
    )
    lr_cols = torch.tensor([lr for lr, _ in hps], device=device).repeat_interleave(n_classes)
    wd_cols = torch.tensor([wd for _, wd in hps], device=device).repeat_interleave(n_classes)
    n_train = len(y_train)
    steps_per_epoch = math.ceil(n_train / batch_size)
    total_steps = epochs * steps_per_epoch
    generator = torch.Generator().manual_seed(seed)
    step = 0
    with progress_bar("linear probes", total_steps, enabled=progress) as advance:
        for epoch in range(epochs):
            order = torch.randperm(n_train, generator=generator).to(device)
            for start in range(0, n_train, batch_size):
                idx = order[start : start + batch_size]
                lr = lr_cols * (0.5 * (1 + math.cos(math.pi * step / total_steps)))
                step += 1
                for group in groups:
                    batch_loss, grad_w, grad_b = _loss_and_grads(
                        group.x_train.index_select(1, idx),
                        group.weight,
                        group.bias,
                        y_train[idx],
                        n_classes=n_classes,
                        sample_weight=sample_weight,
                        logit_offset=logit_offset,
                        workspace=group.workspace,
                    )
                    if epoch == epochs - 1:
                        group.last_epoch_loss += batch_loss / steps_per_epoch
                    _adamw_(group.weight, grad_w, *group.adam_weight, step=step, lr=lr, weight_decay=wd_cols)
                    _adamw_(group.bias, grad_b, *group.adam_bias, step=step, lr=lr, weight_decay=None)
                advance()
    for group in groups:
        group.workspace.clear()


def _score(
    groups: list[_Group],
    features: Mapping[str, np.ndarray],
    stats: Mapping[str, tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray,
    val_rows: np.ndarray,
    *,
    hps: list[tuple[float, float]],
    n_classes: int,
) -> pd.DataFrame:
    """The validation table: every probe's macro-F1 and accuracy (float32 products), pairs in given order."""
    y_val = labels[val_rows].astype(np.int64)
    rows = []
    for group in groups:
        device = group.weight.device
        preds = np.empty((len(group.pairs), len(hps), len(val_rows)), dtype=np.int64)
        for start in range(0, len(val_rows), EVAL_CHUNK):
            chunk = val_rows[start : start + EVAL_CHUNK]
            x = _standardised(features, group.pairs, chunk, stats, group.width).to(device)
            logits = torch.baddbmm(group.bias[:, None, :], x, group.weight)
            logits = logits.view(len(group.pairs), len(chunk), len(hps), n_classes)
            preds[:, :, start : start + len(chunk)] = logits.argmax(-1).permute(0, 2, 1).cpu().numpy()
        flat = preds.reshape(-1, len(val_rows))
        macro_f1 = macro_f1_rows(y_val, flat, n_classes).reshape(len(group.pairs), len(hps))
        accuracy = (flat == y_val).mean(axis=1).reshape(len(group.pairs), len(hps))
        train_loss = group.last_epoch_loss.cpu().numpy()
        if not np.isfinite(train_loss).all():
            raise ValueError("a probe's training loss is not finite; lower the learning rate")
        for i, pair in enumerate(group.pairs):
            for h, (lr, wd) in enumerate(hps):
                rows.append(
                    {"pair": pair, "dim": features[pair].shape[1], "lr": lr, "weight_decay": wd}
                    | {"val_macro_f1": macro_f1[i, h], "val_accuracy": accuracy[i, h]}
                    | {"train_loss": float(train_loss[i, h])}
                )
    order_of = {pair: i for i, pair in enumerate(features)}
    table = pd.DataFrame(rows).sort_values("pair", key=lambda s: s.map(order_of), kind="stable")
    return table.reset_index(drop=True)


def _export(
    groups: list[_Group],
    table: pd.DataFrame,
    stats: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    hps: list[tuple[float, float]],
    n_classes: int,
    order: list[str],
) -> dict[str, LinearClassifier]:
    """Each pair's probe at that pair's best hp, cut out of the batched weights (without the padding)."""
    classifiers = {}
    for group in groups:
        for i, pair in enumerate(group.pairs):
            best = _ranked(table[table["pair"] == pair]).iloc[0]
            h = hps.index((best["lr"], best["weight_decay"]))
            cols = slice(h * n_classes, (h + 1) * n_classes)
            mean, std = stats[pair]
            classifiers[pair] = LinearClassifier(
                mean=mean,
                std=std,
                weight=group.weight[i, : len(mean), cols].T.cpu().numpy(),
                bias=group.bias[i, cols].cpu().numpy(),
            )
    return {pair: classifiers[pair] for pair in order}


def fit_single(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    train: np.ndarray,
    val: np.ndarray,
    n_classes: int,
    name: str = "features",
    **options: Any,
) -> ProbeGrid:
    """`fit_probe_grid` on one feature matrix (a baseline's, or concatenated pairs for fusion).

    Still searches the (lr, weight decay) grid on validation; `.classifier()` is the fitted probe.
    `options` are `fit_probe_grid`'s keyword arguments.
    """
    return fit_probe_grid({name: x}, labels, train=train, val=val, n_classes=n_classes, **options)


def sklearn_crosscheck(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    train: np.ndarray,
    test: np.ndarray,
    C: float = 1.0,
    max_iter: int = 1000,
) -> float:
    """Accuracy on `test` of sklearn's lbfgs LogisticRegression on the same train-standardised features.

    An independent, float64, run-to-convergence reference: if the batched probe lands far below it,
    the probe is under-trained or broken, whatever its own validation numbers say.
    """
    train_rows, test_rows = as_rows(train, len(x)), as_rows(test, len(x))
    mean, std = train_statistics(x, train_rows)
    model = LogisticRegression(C=C, max_iter=max_iter)
    model.fit((x[train_rows].astype(np.float64) - mean) / std, labels[train_rows])
    return float(model.score((x[test_rows].astype(np.float64) - mean) / std, labels[test_rows]))
