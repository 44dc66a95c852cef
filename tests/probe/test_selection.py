"""The one selection rule: validation macro-F1, then validation accuracy, then the name ascending."""

from __future__ import annotations

from itertools import permutations

import pandas as pd
import pytest

from plankdiff.probe.selection import best, better, rank

# (name, val_macro_f1, val_accuracy). Expected order, by hand:
#   y (F1 .6 wins although its accuracy is the lowest), then the three at F1 .5: z (accuracy .7),
#   then a and b (exact tie at .5/.6: name ascending), then 0 (F1 .4 loses whatever its accuracy).
CANDIDATES = [("b", 0.5, 0.6), ("z", 0.5, 0.7), ("0", 0.4, 0.9), ("a", 0.5, 0.6), ("y", 0.6, 0.1)]
ORDER = ["y", "z", "a", "b", "0"]


def table(rows, *, name: str = "pair") -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[name, "val_macro_f1", "val_accuracy"])


def test_rank_orders_by_macro_f1_then_accuracy_then_name_whatever_the_input_order():
    for rows in permutations(CANDIDATES):
        ranked = rank(table(rows))
        assert list(ranked["pair"]) == ORDER, rows
        assert best(table(rows))["pair"] == "y"


def test_rank_breaks_ties_on_the_named_column():
    ranked = rank(table(CANDIDATES, name="loss"), name="loss")
    assert list(ranked["loss"]) == ORDER
    # Without that column the exact tie keeps the input order (a stable sort).
    assert list(rank(table(CANDIDATES, name="loss"))["loss"]) == ["y", "z", "b", "a", "0"]


def test_rank_returns_the_rows_themselves():
    frame = table(CANDIDATES).assign(lr=[1, 2, 3, 4, 5])
    ranked = rank(frame)
    assert list(ranked["lr"]) == [5, 2, 4, 1, 3] and list(ranked.index) == [4, 1, 3, 0, 2]
    assert best(frame)["lr"] == 5


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0.6, 0.1), (0.5, 0.9), True),  # macro-F1 decides before accuracy
        ((0.5, 0.9), (0.6, 0.1), False),
        ((0.5, 0.7), (0.5, 0.6), True),  # equal F1: accuracy decides
        ((0.5, 0.6), (0.5, 0.7), False),
        ((0.5, 0.6), (0.5, 0.6), False),  # an exact tie keeps the incumbent
    ],
)
def test_better_needs_a_strict_win_under_the_rule(a, b, expected):
    as_dict = lambda s: {"val_macro_f1": s[0], "val_accuracy": s[1]}  # noqa: E731
    assert better(as_dict(a), as_dict(b)) is expected
    assert bool(better(pd.Series(as_dict(a)), pd.Series(as_dict(b)))) is expected  # numpy bools
