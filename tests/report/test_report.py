"""The report stage on a small fake results folder: the headline table's exact text, escaping of
hostile strings in every place data reaches the page, and the page as headless Chromium renders it."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from plankdiff.report import app, headline_table, render_report, to_markdown, write_tables

HOSTILE = '<script>alert("x")</script>'
HOSTILE_ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"  # markupsafe's escaping
FIGURE = "acc<b>bold.png"
TABLE = "per<b>class.md"
LAPTOP, PHONE = 1366, 390  # window widths the report is checked at (CSS pixels)


def headline_frame() -> pd.DataFrame:
    """Three rows of `headline.csv`: a diffusion probe with two metrics over 3 seeds, a one-seed
    baseline with a hostile name and no pair, and a clustering score (a fraction, not a percentage)."""
    columns = ["experiment", "setting", "method", "pair", "metric", "mean", "std", "n_seeds"]
    rows = [
        ["in-distribution", "ndsb", "diffusion", "mid@t=100", "accuracy", 0.612, 0.004, 3],
        ["in-distribution", "ndsb", "diffusion", "mid@t=100", "macro_f1", 0.5, 0.0123, 3],
        ["in-distribution", "ndsb", HOSTILE, "", "accuracy", 0.7, math.nan, 1],
        ["clustering", "ndsb", "diffusion", "mid@t=100", "nmi", 0.4567, 0.01, 3],
    ]
    return pd.DataFrame(rows, columns=columns)


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    """A results folder as the study code writes it, with hostile strings in names, captions,
    file names, config values and notes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = tmp_path / "results" / "tiny-study"
    (root / "figures").mkdir(parents=True)
    (root / "tables").mkdir()
    (root / "metrics" / "probe").mkdir(parents=True)
    study = {
        "name": "tiny-study",
        "git_sha": "ca70a24",
        "started": "2024-05-01T10:00:00",
        "finished": "2024-05-01T12:05:00",
        "machine": {"host": "ci", "gpu": ["H100"], "torch": "2.4.0"},
        "config": {"probe": {"lr": 0.001}, "label": f"</pre>{HOSTILE}"},
        "datasets": {
            "ndsb": {"images": 30336, "classes": 121, "source": "ndsb.zip"},
            "zoolake": {"images": "<unknown>", "classes": 35, "source": "a & b.zip"},
        },
        "budgets": [
            {
                "method": HOSTILE,
                "minutes": 12.25,
                "images_seen": 1234567,
                "parameters": 35_700_000,
                "precision": "bf16",
            }
        ],
        "seeds": [0, 1, 2],
        "varies": "backbone seed, probe seed",
        "experiments": {"in-distribution": "in-distribution"},
        "description": "A tiny study for the report's tests.",
        "versions": {"python": "3.11.2", "torch": "2.4.0"},
        "test_readouts": [{"dataset": "ndsb", "split": "long-tailed-s0", "readouts": 4}],
        "notes": ["<img src=x onerror=alert(1)>", "plain note"],
    }
    study["config"]["note"] = "A pipeline check: the numbers mean nothing."
    (root / "study.json").write_text(json.dumps(study))
    headline_frame().to_csv(root / "headline.csv", index=False)
    figure, axes = plt.subplots(figsize=(3, 2), dpi=60)
    axes.plot([0, 1, 2], [0.5, 0.6, 0.61])
    figure.savefig(root / "figures" / FIGURE)
    plt.close(figure)
    (root / "figures" / "captions.json").write_text(json.dumps({FIGURE: f"Accuracy by t {HOSTILE}"}))
    (root / "tables" / TABLE).write_text(f"| class | acc |\n| --- | --- |\n| {HOSTILE} | 0.5 |\n")
    (root / "metrics" / "probe" / "<b>seed0.json").write_text("{}")
    # The selected diffusion probe of "in-distribution", as `save_metrics` writes it.
    probe = root / "metrics" / "in-distribution" / "diffusion" / "seed0"
    probe.mkdir(parents=True)
    names = ["copepod", HOSTILE, "detritus"]
    pd.DataFrame(
        {
            "class": [0, 1, 2],
            "name": names,
            "precision": [0.8, 0.25, 0.5],
            "recall": [0.9, 0.5, 0.2],
            "f1": [0.847, 0.333, 0.286],
            "support": [10, 2, 5],
        }
    ).to_csv(probe / "per_class.csv", index=False)
    pd.DataFrame([[9, 1, 0], [0, 1, 1], [1, 3, 1]], index=names, columns=names).to_csv(
        probe / "confusion.csv"
    )
    (probe / "metrics.json").write_text("{}")
    # Its per-image test predictions; no selected.json, so the report cannot find the images.
    pd.DataFrame(
        {
            "row": range(10),
            "true": ["copepod"] * 5 + [HOSTILE] * 3 + ["detritus"] * 2,
            "predicted": ["copepod", HOSTILE, "copepod", "copepod", "copepod"]
            + [HOSTILE, "detritus", HOSTILE, "detritus", "detritus"],
            "probability": [0.95, 0.9, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2],
        }
    ).to_csv(probe / "test_predictions.csv", index=False)
    training = root / "training" / "ndsb" / "diffusion"
    training.mkdir(parents=True)
    (training / "seed0.jsonl").write_text(
        "".join(json.dumps({"step": step, "loss": 1 / step}) + "\n" for step in range(1, 6))
    )
    (root / "training" / "ndsb" / "simclr").mkdir()
    (root / "training" / "ndsb" / "simclr" / "seed0.jsonl").write_text("")
    for name in ("samples_ndsb.png", "contact_ndsb.png"):
        Image.new("L", (40, 20), 128).save(root / "figures" / name)
    return root


def test_headline_table_and_markdown_exact() -> None:
    table = headline_table(headline_frame())
    assert list(table.columns) == [
        "experiment",
        "setting",
        "method",
        "pair",
        "seeds",
        "accuracy (%)",
        "macro F1 (%)",
        "NMI",
    ]
    assert table.values.tolist() == [
        ["in-distribution", "ndsb", "diffusion", "mid@t=100", "3", "61.2 ± 0.4", "50.0 ± 1.2", ""],
        ["in-distribution", "ndsb", HOSTILE, "", "1", "70.0", "", ""],
        ["clustering", "ndsb", "diffusion", "mid@t=100", "3", "", "", "0.457 ± 0.010"],
    ]
    small = pd.DataFrame({"method": ["a|b", "knn"], "accuracy (%)": ["61.2 ± 0.4", "7.0"]})
    assert to_markdown(small) == (
        "| method | accuracy (%) |\n"
        "| ------ | ------------ |\n"
        "| a\\|b   | 61.2 ± 0.4   |\n"
        "| knn    | 7.0          |\n"
    )


def test_headline_refuses_percentages() -> None:
    frame = headline_frame()
    frame.loc[0, "mean"] = 61.2
    with pytest.raises(ValueError, match="fractions"):
        headline_table(frame)


def test_report_escapes_every_string(results_dir: Path) -> None:
    assert write_tables(results_dir).read_text().startswith("| experiment")
    result = CliRunner().invoke(app, ["render", str(results_dir)])
    assert result.exit_code == 0, result.output
    report = Path(result.output.strip())
    assert report == results_dir / "report.html"
    page = report.read_text(encoding="utf-8")
    assert "<script" not in page and "<b>" not in page and "<img src=x" not in page
    assert page.count(HOSTILE_ESCAPED) >= 6  # tables, budgets, caption, markdown table, class names
    assert "acc&lt;b&gt;bold.png" in page and "per&lt;b&gt;class.md" in page
    assert "probe/&lt;b&gt;seed0.json" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;/pre&gt;" in page  # the config value cannot close the <pre> it sits in
    assert "data:image/png;base64," in page and "61.2 ± 0.4" in page and "1,234,567" in page
    assert "2 h 05 min" in page
    assert 'class="num">35,700,000</td><td>bf16</td>' in page  # the precision each backbone trained in
    assert "a &amp; b.zip" in page and "&amp;amp;" not in page and "&amp;lt;" not in page  # escaped once
    assert all(source.startswith("data:") for source in re.findall(r'src="([^"]*)"', page))


def section(page: str, name: str) -> str:
    """The HTML of `<section id=name>`."""
    match = re.search(rf'<section[^>]* id="{name}">(.*?)</section>', page, re.S)
    assert match, f"no section {name}"
    return match.group(1)


def test_report_sections_in_reading_order(results_dir: Path) -> None:
    page = render_report(results_dir).read_text(encoding="utf-8")
    ids = ["meaning", "found", "tables", "classes", "images", "provenance"]
    positions = [page.index(f'id="{name}"') for name in ids]
    assert positions == sorted(positions)
    # The first lines: the experiment's note and description, then what the replicates allow.
    meaning = re.sub(r"\s+", " ", section(page, "meaning"))
    assert (
        meaning.index("the numbers mean nothing")
        < meaning.index("A tiny study")
        < meaning.index("3 replicates")
    )
    assert "12 min" in meaning
    found = section(page, "found")
    assert found.count("<figure>") == 3  # one per experiment, plus the captioned study figure
    assert f"accuracy (%), best first: {HOSTILE_ESCAPED} 70.0, diffusion 61.2 ± 0.4." in found
    # Tables: methods as columns, metrics as rows, no empty column (the clustering table has one method).
    tables = section(page, "tables")
    headers = [
        re.findall(r"<th[^>]*>([^<]*)</th>", head)
        for head in re.findall(r"<thead>(.*?)</thead>", tables, re.S)
    ]
    assert headers == [["metric", "diffusion", HOSTILE_ESCAPED], ["metric", "diffusion"]]
    assert 'title="selected features (block @ timestep, chosen on validation): mid@t=100"' in tables
    assert re.search(r"<th>macro F1 \(%\)</th><td[^>]*>50.0 ± 1.2</td><td[^>]*>–</td>", tables)
    # Per class: support order, the most confused pairs (ties by name), counts on hover.
    classes = section(page, "classes")
    side = re.search(r"F1 \(%\) by class.*?<tbody>(.*?)</tbody>", classes, re.S).group(1)
    assert re.findall(r"<tr><td>([^<]*)</td><td class=\"num\">(\d+)</td>", side) == [
        ("copepod", "10"),
        ("detritus", "5"),
        (HOSTILE_ESCAPED, "2"),
    ]
    pairs = re.search(r'<table class="pairs">.*?<tbody>(.*?)</tbody>', classes, re.S).group(1)
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", pairs)]
    assert rows == [
        ["detritus", HOSTILE_ESCAPED, "3", "60 %"],
        [HOSTILE_ESCAPED, "detritus", "1", "50 %"],
        ["copepod", HOSTILE_ESCAPED, "1", "10 %"],
        ["detritus", "copepod", "1", "20 %"],
    ]
    assert 'title="true copepod → predicted copepod: 9 of 10 (90%)"' in classes
    images = section(page, "images")
    assert "every backbone pre-trained on ndsb" in images and "No loss was logged for: simclr" in images
    assert "samples_ndsb.png" in images and "contact_ndsb.png" in images
    # Misclassified: most confident first (the 0.9 tie has one mistake), captions escaped; the
    # images cannot be found without selected.json, and the report says so instead of failing.
    misclassified = images[images.index('id="misclassified"') : images.index('id="samples"')]
    assert "diffusion (DDPM features, seed 0): 2 of 10 test images misclassified" in misclassified
    assert re.findall(r'<figure class="thumb"[^>]*>(.*?)</figure>', misclassified) == [
        f"<figcaption>copepod → {HOSTILE_ESCAPED} (0.90)</figcaption>",
        f"<figcaption>{HOSTILE_ESCAPED} → detritus (0.50)</figcaption>",
    ]
    assert "Images not shown:" in misclassified and "selected.json" in misclassified
    # Coverage: 8 of 10 right overall; 90 % only when the single most confident image is kept
    # (at p ≥ 0.9 the tie keeps 3 images, one of them wrong).
    coverage = images[images.index('id="coverage"') :]
    assert coverage.count("<figure>") == 1 and "softmax-confidence threshold" in coverage
    assert (
        "diffusion (DDPM features): 80.0 % of all 10 test images correct; accuracy reaches 90 % when "
        "10 % of the test images are kept (top-1 probability ≥ 0.95)." in coverage
    )
    provenance = section(page, "provenance")
    assert "long-tailed-s0" in provenance and "3.11.2" in provenance and "ca70a24" in provenance


def test_report_without_optional_pieces(tmp_path: Path) -> None:
    (tmp_path / "study.json").write_text(json.dumps({"name": "bare"}))
    headline_frame().to_csv(tmp_path / "headline.csv", index=False)
    page = render_report(tmp_path).read_text(encoding="utf-8")
    assert "2. Results tables" in page and "Caveats" not in page
    assert "No per-class files" in page and "No training logs" in page and "One replicate" not in page
    assert "No per-image test predictions" in page and "so no coverage curve" in page
    (tmp_path / "headline.csv").unlink()
    with pytest.raises(FileNotFoundError, match="headline.csv"):
        render_report(tmp_path)
    assert CliRunner().invoke(app, ["render", str(tmp_path)]).exit_code == 1


def chromium(report: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless Chromium with everything that would reach the network or a GPU turned off."""
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        # Logs every file:// URL the browser opens: the report must be the only one.
        "--vmodule=file_url_loader_factory=1",
        *extra,
        report.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium not installed (`make test` installs it)"
)
def test_report_in_headless_chromium(results_dir: Path, tmp_path: Path) -> None:
    report = render_report(results_dir)
    dump = chromium(report, tmp_path / "profile-dom", "--dump-dom")
    assert dump.returncode == 0, dump.stderr
    dom = dump.stdout
    assert "<table" in dom and "diffusion" in dom and "61.2 ± 0.4" in dom
    assert "&lt;script&gt;alert" in dom and "<script" not in dom.lower()
    # The browser's DOM has every section of #17, in reading order, with its content.
    for name, content in [
        ("meaning", "the numbers mean nothing"),
        ("found", "best first"),
        ("tables", "61.2 ± 0.4"),
        ("classes", "Most confused pairs"),
        ("images", "Training-loss curves"),
        ("images", "test images misclassified"),
        ("images", "softmax-confidence threshold"),
        ("provenance", "Test readouts"),
    ]:
        assert content in section(dom, name), name
    runs = [dump]
    for width in LAPTOP, PHONE:
        shot_path = tmp_path / f"shot-{width}.png"
        shot = chromium(
            report, tmp_path / f"profile-{width}", f"--screenshot={shot_path}", f"--window-size={width},2000"
        )
        assert shot.returncode == 0, shot.stderr
        runs.append(shot)
        with Image.open(shot_path) as image:
            assert image.size == (width, 2000)
            colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 16, "the screenshot is (nearly) one colour"
    for run in runs:
        assert "Uncaught" not in run.stderr
        assert "ERR_FILE_NOT_FOUND" not in run.stderr
        assert "Not allowed to load local resource" not in run.stderr
        # A missing file does not log ERR_FILE_NOT_FOUND in headless mode, so check what was opened.
        opened = {unquote(url) for url in re.findall(r"FileURLLoader::Start: (\S+)", run.stderr)}
        assert opened == {unquote(report.as_uri())}, opened


def test_report_says_which_backbones_fell_short_of_a_flop_budget(results_dir: Path) -> None:
    """A FLOP-budget study whose backbone stopped on a minutes cap compared unequal training: the
    report's first lines name it, and the budget table shows why each run stopped."""
    path = results_dir / "study.json"
    study = json.loads(path.read_text())
    study["config"] |= {"diffusion": {"max_tflops": 25}, "baselines": {"max_tflops": 25.0}}
    study["budgets"] = [
        {"method": "diffusion (ndsb)", "seed": 0, "tflops": 25.17, "stopped_by": "flops"},
        {"method": "supervised (ndsb)", "seed": 1, "tflops": 12.04, "stopped_by": "time"},
        {"method": "simclr (ndsb)", "seed": 1, "tflops": 25.1, "stopped_by": "flops"},
    ]
    path.write_text(json.dumps(study))
    page = render_report(results_dir).read_text(encoding="utf-8")
    assert "Unequal budgets" in page
    assert "supervised (ndsb), seed 1: 12 of 25 TFLOP" in page
    unequal = page[page.index("Unequal budgets") :].split(".", 1)[0]
    assert "diffusion" not in unequal and "simclr" not in unequal
    assert "<th>stopped by</th>" in page.replace(' class="num"', "")

    for budget in study["budgets"]:
        budget["stopped_by"] = "flops"
    path.write_text(json.dumps(study))
    assert "Unequal budgets" not in render_report(results_dir).read_text(encoding="utf-8")
