"""The one selection rule: validation macro-F1, then validation accuracy, then the name, so that a
tie is broken the same way on every machine and in every place a choice is made (pair, timestep,
loss, hyper-parameters, fusion, k-means pair)."""

from __future__ import annotations

import pandas as pd

KEYS = ("val_macro_f1", "val_accuracy")


def rank(table: pd.DataFrame, *, name: str = "pair") -> pd.DataFrame:
    """Rows best first; `name` is the column whose ascending order breaks exact ties."""
    columns = [*KEYS, name] if name in table.columns else list(KEYS)
    ascending = [False, False, True][: len(columns)]
    return table.sort_values(columns, ascending=ascending, kind="mergesort")


def best(table: pd.DataFrame, *, name: str = "pair") -> pd.Series:
    return rank(table, name=name).iloc[0]


def better(a: pd.Series | dict, b: pd.Series | dict) -> bool:
    """Whether `a` beats `b` under the rule (ties keep `b`, the incumbent)."""
    return bool((a["val_macro_f1"], a["val_accuracy"]) > (b["val_macro_f1"], b["val_accuracy"]))


__all__ = ["KEYS", "best", "better", "rank"]
