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
HOSTILE_ESCAPED = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
FIGURE = "acc<b>bold.png"
TABLE = "per<b>class.md"


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
        "budgets": [{"method": HOSTILE, "minutes": 12.25, "images_seen": 1234567, "parameters": 35_700_000}],
        "seeds": [0, 1, 2],
        "notes": ["<img src=x onerror=alert(1)>", "plain note"],
    }
    (root / "study.json").write_text(json.dumps(study))
    headline_frame().to_csv(root / "headline.csv", index=False)
    figure, axes = plt.subplots(figsize=(3, 2), dpi=60)
    axes.plot([0, 1, 2], [0.5, 0.6, 0.61])
    figure.savefig(root / "figures" / FIGURE)
    plt.close(figure)
    (root / "figures" / "captions.json").write_text(json.dumps({FIGURE: f"Accuracy by t {HOSTILE}"}))
    (root / "tables" / TABLE).write_text(f"| class | acc |\n| --- | --- |\n| {HOSTILE} | 0.5 |\n")
    (root / "metrics" / "probe" / "<b>seed0.json").write_text("{}")
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
    assert page.count(HOSTILE_ESCAPED) >= 4  # headline, budgets, caption, markdown table
    assert "acc&lt;b&gt;bold.png" in page and "per&lt;b&gt;class.md" in page
    assert "probe/&lt;b&gt;seed0.json" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;/pre&gt;" in page  # the config value cannot close the <pre> it sits in
    assert "data:image/png;base64," in page and "61.2 ± 0.4" in page and "1,234,567" in page
    assert "2 h 05 min" in page
    assert "a &amp; b.zip" in page and "&amp;amp;" not in page and "&amp;lt;" not in page  # escaped once
    assert all(source.startswith("data:") for source in re.findall(r'src="([^"]*)"', page))


def test_report_without_optional_pieces(tmp_path: Path) -> None:
    (tmp_path / "study.json").write_text(json.dumps({"name": "bare"}))
    headline_frame().to_csv(tmp_path / "headline.csv", index=False)
    page = render_report(tmp_path).read_text(encoding="utf-8")
    assert "Headline results" in page and "<h2>Figures</h2>" not in page and "<h2>Notes</h2>" not in page
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
    shot_path = tmp_path / "shot.png"
    shot = chromium(report, tmp_path / "profile-shot", f"--screenshot={shot_path}", "--window-size=1200,2000")
    assert shot.returncode == 0, shot.stderr
    for run in (dump, shot):
        assert "Uncaught" not in run.stderr
        assert "ERR_FILE_NOT_FOUND" not in run.stderr
        assert "Not allowed to load local resource" not in run.stderr
        # A missing file does not log ERR_FILE_NOT_FOUND in headless mode, so check what was opened.
        opened = {unquote(url) for url in re.findall(r"FileURLLoader::Start: (\S+)", run.stderr)}
        assert opened == {unquote(report.as_uri())}, opened
    with Image.open(shot_path) as image:
        assert image.size == (1200, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 16, "the screenshot is (nearly) one colour"
