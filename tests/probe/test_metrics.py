"""Metrics against hand-computed values, the bootstrap, the saved files and the figures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import f1_score

from plankdiff.probe import metrics as metrics_module
from plankdiff.probe.metrics import (
    bootstrap_ci,
    classification_metrics,
    heatmap_grid,
    macro_f1_rows,
    plot_confusion,
    plot_heatmap,
    save_metrics,
)

# Six examples, four classes, class 3 never true.
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])


def test_hand_computed_example():
    m = classification_metrics(Y_TRUE, Y_PRED, 4, ["a", "b", "c", "d"], bootstrap=0)
    # class 0: tp 1, fp 1, fn 1 -> P .5 R .5 F1 .5; class 1: tp 2, fp 1 -> P 2/3 R 1 F1 .8;
    # class 2: tp 1, fn 1 -> P 1 R .5 F1 2/3; class 3 is absent from y_true and left out of macro.
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["n"] == 6 and m["n_classes_present"] == 3
    per_class = m["per_class"].set_index("name")
    assert per_class.loc["b", "precision"] == pytest.approx(2 / 3)
    assert per_class.loc["c", "recall"] == pytest.approx(0.5)
    assert list(per_class["support"]) == [2, 2, 2, 0]
    expected_cm = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(m["confusion"], expected_cm)
    assert "ci" not in m


def test_predicting_an_absent_class_costs_recall_but_not_a_macro_slot():
    y_pred = np.array([0, 1, 1, 1, 3, 0])  # one class-2 example predicted as the absent class 3
    m = classification_metrics(Y_TRUE, y_pred, 4, bootstrap=0)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_macro_f1_rows_agrees_with_sklearn_row_by_row():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 6, 40)  # 7 classes declared, class 6 never true but sometimes predicted
    preds = rng.integers(0, 7, (5, 40))
    present = np.unique(y_true)
    expected = [f1_score(y_true, p, labels=present, average="macro", zero_division=0) for p in preds]
    np.testing.assert_allclose(macro_f1_rows(y_true, preds, 7), expected)
    per_row_truth = rng.integers(0, 7, (5, 40))
    expected = [
        f1_score(t, p, labels=np.unique(t), average="macro", zero_division=0)
        for t, p in zip(per_row_truth, preds, strict=True)
    ]
    np.testing.assert_allclose(macro_f1_rows(per_row_truth, preds, 7), expected)


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 10, 500)
    y_pred = np.where(rng.random(500) < 0.7, y_true, rng.integers(0, 10, 500))
    m = classification_metrics(y_true, y_pred, 10, bootstrap=500, seed=3)
    for name in ("accuracy", "macro_f1"):
        low, high = m["ci"][name]
        assert low < m[name] < high, f"{name} {m[name]} outside its CI {m['ci'][name]}"
        assert high - low < 0.15
    assert bootstrap_ci(y_true, y_pred, 10, replicates=500, seed=3) == m["ci"]
    # Binomial check: the accuracy interval is about ±1.96·sqrt(p(1-p)/n) wide.
    p = m["accuracy"]
    half_width = 1.96 * np.sqrt(p * (1 - p) / 500)
    assert m["ci"]["accuracy"][1] - m["ci"]["accuracy"][0] == pytest.approx(2 * half_width, rel=0.2)


def test_save_metrics_writes_json_and_csvs(tmp_path):
    m = classification_metrics(Y_TRUE, Y_PRED, 4, ["a", "b", "c", "d"], bootstrap=50)
    extra = {"git_sha": "abc123", "lr": 0.003, "config": {"pair": "dec2@16/t=5"}}
    save_metrics(m, tmp_path, extra=extra)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["accuracy"] == pytest.approx(4 / 6) and record["git_sha"] == "abc123"
    assert record["config"]["pair"] == "dec2@16/t=5" and len(record["ci"]["macro_f1"]) == 2
    per_class = pd.read_csv(tmp_path / "per_class.csv")
    assert list(per_class.columns) == ["class", "name", "precision", "recall", "f1", "support"]
    confusion = pd.read_csv(tmp_path / "confusion.csv", index_col=0)
    np.testing.assert_array_equal(confusion.to_numpy(), m["confusion"])
    assert list(confusion.columns) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="overwrite"):
        save_metrics(m, tmp_path, extra={"accuracy": 1.0})


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the plotting functions save, kept so its plotted data can be read back."""
    figures = []
    save = metrics_module._save_figure

    def keep(fig, out, dpi):
        figures.append(fig)
        return save(fig, out, dpi)

    monkeypatch.setattr(metrics_module, "_save_figure", keep)
    return figures


def colours(image: Image.Image) -> int:
    """Distinct RGB colours (packed into one integer each: np.unique on rows is 100× slower)."""
    rgb = np.asarray(image.convert("RGB")).astype(np.int32)
    return len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]))


def red_pixels(path) -> int:
    """Pixels of the selection box's pure red (viridis and Blues never come near it)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())


def test_heatmap_plots_the_grid_and_boxes_the_selected_cell(tmp_path, drawn):
    table = pd.DataFrame(
        [
            {"block": b, "t": t, "value": i * 0.1 + t / 100}
            for i, b in enumerate(["enc", "mid", "dec"])
            for t in (50, 5)
        ]
    )
    out = plot_heatmap(table, selected=("dec", 50), out=tmp_path / "heat.png", title="val macro-F1")
    (ax, _colorbar) = drawn[0].axes
    # Rows along the network as given, t increasing: value = block index / 10 + t / 100.
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.05, 0.5], [0.15, 0.6], [0.25, 0.7]])
    assert [label.get_text() for label in ax.get_yticklabels()] == ["enc", "mid", "dec"]
    assert [label.get_text() for label in ax.get_xticklabels()] == ["5", "50"]
    assert sorted(text.get_text() for text in ax.texts) == ["0.05", "0.15", "0.25", "0.50", "0.60", "0.70"]
    (box,) = ax.patches  # the selected cell, centred on column 1 (t = 50), row 2 (dec)
    assert box.get_xy() == (0.5, 1.5) and (box.get_width(), box.get_height()) == (1, 1)
    assert ax.get_title() == "val macro-F1"
    image = Image.open(out)
    assert image.format == "PNG" and min(image.size) > 200
    assert colours(image) > 50, "blank figure"
    assert red_pixels(out) > 100
    unboxed = plot_heatmap(table, selected=None, out=tmp_path / "plain.png", title="")
    assert not drawn[1].axes[0].patches and red_pixels(unboxed) == 0
    with pytest.raises(ValueError, match="not in the table"):
        plot_heatmap(table, selected=("mid", 7), out=tmp_path / "bad.png", title="")


def test_heatmap_leaves_missing_cells_empty(tmp_path, drawn):
    table = pd.DataFrame({"block": ["enc", "enc", "dec"], "t": [5, 50, 5], "value": [0.1, 0.2, 0.3]})
    plot_heatmap(table, selected=("dec", 5), out=tmp_path / "heat.png", title="")
    plotted = drawn[0].axes[0].images[0].get_array()
    assert plotted.mask.tolist() == [[False, False], [False, True]]
    assert plotted[0, 1] == pytest.approx(0.2) and plotted[1, 0] == pytest.approx(0.3)


def test_confusion_plots_row_rates_on_a_square_root_scale(tmp_path, drawn):
    names = [f"class_{i:03d}" for i in range(121)]
    cm = np.random.default_rng(0).integers(0, 20, (121, 121))
    cm[5] = 0  # a class with no test example must not divide by zero
    out = plot_confusion(cm, names, tmp_path / "cm.png", title="test")
    ax = drawn[0].axes[0]
    plotted = np.asarray(ax.images[0].get_array())
    for i in (0, 60, 120):  # each row: where that true class went, as fractions of its examples
        np.testing.assert_allclose(plotted[i], cm[i] / cm[i].sum())
    assert (plotted[5] == 0).all()
    norm = ax.images[0].norm
    assert (norm.gamma, norm.vmin, norm.vmax) == (0.5, 0, 1)
    assert [label.get_text() for label in ax.get_yticklabels()] == names
    assert [label.get_text() for label in ax.get_xticklabels()] == names
    image = Image.open(out)
    assert image.format == "PNG" and min(image.size) > 2000  # 121 names stay readable when zoomed
    assert colours(image) > 50, "blank figure"
    with pytest.raises(ValueError, match="does not match 3 class names"):
        plot_confusion(np.eye(2), ["a", "b", "c"], tmp_path / "bad.png")


def test_heatmap_grid_keeps_the_given_block_order():
    """Blocks read along the network (as given), not alphabetically; timesteps sort numerically."""
    table = pd.DataFrame(
        {"block": ["enc", "enc", "mid", "dec", "dec"], "t": [50, 5, 5, 5, 100], "value": [1.0, 2, 3, 4, 5]}
    )
    grid = heatmap_grid(table)
    assert list(grid.index) == ["enc", "mid", "dec"] and list(grid.columns) == [5, 50, 100]
    assert grid.loc["enc", 50] == 1.0 and grid.loc["dec", 100] == 5.0 and np.isnan(grid.loc["mid", 50])
