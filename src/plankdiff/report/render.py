"""One self-contained `report.html` per study: what was run, the headline numbers, every figure.

The file travels alone (mail, chat, an archive), so nothing is loaded from outside it: figures are
embedded as base64 data URIs, the style sheet is inline and there is no JavaScript. Every string that
comes from the results folder (method and class names, file names, config values, notes) goes
through `html.escape`: a results folder is data, and data must never become markup.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Collection
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from plankdiff.provenance import atomic_write
from plankdiff.report.tables import headline_table, read_headline

STYLE = """
body { margin: 0; background: #fff; color: #1f2328; line-height: 1.45;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 1.25rem 3rem; }
h1 { font-size: 1.8rem; margin: 0 0 .25rem; }
h2 { font-size: 1.35rem; margin: 2rem 0 .6rem; padding-bottom: .25rem; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1.05rem; margin: 1.2rem 0 .4rem; }
.subtitle { color: #59636e; margin: 0 0 1rem; }
.muted { color: #59636e; font-size: .9rem; }
table { border-collapse: collapse; margin: .4rem 0 .8rem; font-size: .92rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #eef1f4; }
tbody tr:nth-child(even) { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.wide { overflow-x: auto; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: .4rem 0; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85rem; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: .6rem .8rem; overflow-x: auto; }
details { margin: .4rem 0; }
summary { cursor: pointer; font-weight: 600; }
figure { margin: 1rem 0 1.6rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #59636e; font-size: .92rem; margin-top: .3rem; }
"""


def _e(value: Any) -> str:
    """The one way a value reaches the page: as text, escaped (quotes too, for attributes)."""
    return escape(str(value), quote=True)


def _count(value: Any) -> str:
    """Thousands separators for counts; anything else as text (`_table` escapes it)."""
    return f"{value:,}" if isinstance(value, int) else str(value)


def _table(headers: list[str], rows: list[list[Any]], numeric: Collection[int] = ()) -> str:
    """An HTML table of escaped cells; columns in `numeric` are right-aligned."""
    head = "".join(f"<th>{_e(header)}</th>" for header in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i in numeric else ''}>{_e(cell)}</td>" for i, cell in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _link(results_dir: Path, path: Path) -> str:
    """A relative link to a file next to the report (it works while the folder stays together)."""
    relative = path.relative_to(results_dir).as_posix()
    return f'<a href="{_e(quote(relative))}"><code>{_e(relative)}</code></a>'


def _duration(started: Any, finished: Any) -> str:
    """'2 h 05 min' between two ISO timestamps, or '' when either is missing or unreadable."""
    try:
        seconds = (
            datetime.fromisoformat(str(finished)) - datetime.fromisoformat(str(started))
        ).total_seconds()
    except (TypeError, ValueError):
        return ""
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _facts(pairs: list[tuple[Any, Any]]) -> str:
    return (
        '<dl class="facts">'
        + "".join(f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>" for key, value in pairs)
        + "</dl>"
    )


def _what_was_run(study: dict[str, Any]) -> str:
    started, finished = study.get("started", "–"), study.get("finished", "–")
    took = _duration(started, finished)
    facts = [
        ("Name", study.get("name", "–")),
        ("Git SHA", study.get("git_sha", "–")),
        ("Started", started),
        ("Finished", f"{finished} ({took})" if took else finished),
        ("Seeds", ", ".join(str(seed) for seed in study.get("seeds", [])) or "–"),
    ]
    parts = ["<h2>What was run</h2>", _facts(facts)]
    machine = study.get("machine") or {}
    if machine:
        parts.append("<h3>Machine</h3>")
        parts.append(_facts([(key, _plain(value)) for key, value in machine.items()]))
    datasets = study.get("datasets") or {}
    if datasets:
        parts.append("<h3>Datasets</h3>")
        rows = [
            [name, _count(info.get("images", "–")), _count(info.get("classes", "–")), info.get("source", "")]
            for name, info in datasets.items()
        ]
        parts.append(_table(["dataset", "images", "classes", "source"], rows, numeric={1, 2}))
    budgets = study.get("budgets") or []
    if budgets:
        parts.append("<h3>Budgets</h3>")
        rows = [
            [
                budget.get("method", "–"),
                f"{budget['minutes']:.1f}" if isinstance(budget.get("minutes"), int | float) else "–",
                _count(budget.get("images_seen", "–")),
                _count(budget.get("parameters", "–")),
            ]
            for budget in budgets
        ]
        parts.append(_table(["method", "minutes", "images seen", "parameters"], rows, numeric={1, 2, 3}))
    return "\n".join(parts)


def _plain(value: Any) -> str:
    """Nested machine facts (GPU lists, versions) as compact JSON; scalars as themselves."""
    return json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)


def _headline(results_dir: Path) -> str:
    table = headline_table(read_headline(results_dir / "headline.csv"))
    fixed = {"experiment", "setting", "method", "pair", "seeds"}
    numeric = {i for i, column in enumerate(table.columns) if column not in fixed or column == "seeds"}
    note = (
        "Mean ± standard deviation over seeds. Columns marked (%) are percentages, (pp) percentage points; "
        "NMI and ARI are fractions."
    )
    return (
        "<h2>Headline results</h2>\n"
        + _table(list(table.columns), table.values.tolist(), numeric=numeric)
        + f'\n<p class="muted">{_e(note)}</p>'
    )


def _figures(results_dir: Path) -> str:
    figures = sorted((results_dir / "figures").glob("*.png"))
    if not figures:
        return ""
    captions_path = results_dir / "figures" / "captions.json"
    captions = json.loads(captions_path.read_text(encoding="utf-8")) if captions_path.is_file() else {}
    parts = ["<h2>Figures</h2>"]
    for figure in figures:
        data = base64.b64encode(figure.read_bytes()).decode("ascii")
        caption = captions.get(figure.name, "")
        text = (
            f"{_e(caption)} <code>{_e(figure.name)}</code>" if caption else f"<code>{_e(figure.name)}</code>"
        )
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption or figure.name)}">'
            f"<figcaption>{text}</figcaption></figure>"
        )
    return "\n".join(parts)


def _files(results_dir: Path) -> str:
    """Markdown tables inline (collapsed), raw metric files as a list of links."""
    tables = sorted((results_dir / "tables").glob("*.md"))
    metrics = sorted(path for path in (results_dir / "metrics").rglob("*.json") if path.is_file())
    parts = []
    if tables:
        parts.append("<h2>Tables</h2>")
        parts += [
            f"<details><summary>{_link(results_dir, path)}</summary>"
            f"<pre>{_e(path.read_text(encoding='utf-8'))}</pre></details>"
            for path in tables
        ]
    if metrics:
        parts.append("<h2>Metric files</h2><ul>")
        parts += [f"<li>{_link(results_dir, path)}</li>" for path in metrics]
        parts.append("</ul>")
    return "\n".join(parts)


def _notes(study: dict[str, Any]) -> str:
    """Caveats about the run (a crashed seed, a changed budget): shown before the numbers they qualify."""
    notes = study.get("notes") or []
    if not notes:
        return ""
    return "<h2>Notes</h2><ul>" + "".join(f"<li>{_e(note)}</li>" for note in notes) + "</ul>"


def _config(study: dict[str, Any]) -> str:
    """The whole config, collapsed: it answers 'with which settings exactly?' without burying the results."""
    config = json.dumps(study.get("config", {}), indent=2, ensure_ascii=False, default=str)
    return (
        "<h2>Configuration</h2>\n"
        f"<details><summary>Full experiment config</summary><pre>{_e(config)}</pre></details>"
    )


def render_report(results_dir: Path) -> Path:
    """Write `<results_dir>/report.html` from `study.json`, `headline.csv` and whatever tables,
    figures and metric files exist; return its path. The two required files fail loudly if absent."""
    results_dir = Path(results_dir)
    for required in ("study.json", "headline.csv"):
        if not (results_dir / required).is_file():
            raise FileNotFoundError(f"{results_dir / required} not found: is {results_dir} a results folder?")
    study = json.loads((results_dir / "study.json").read_text(encoding="utf-8"))
    name = study.get("name", results_dir.name)
    subtitle = f"{study.get('git_sha', 'unknown commit')} · {study.get('finished', study.get('started', ''))}"
    sections = [
        f"<h1>plankdiff report: {_e(name)}</h1>",
        f'<p class="subtitle">{_e(subtitle)}</p>',
        _what_was_run(study),
        _notes(study),
        _headline(results_dir),
        _figures(results_dir),
        _files(results_dir),
        _config(study),
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>plankdiff report: {_e(name)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(section for section in sections if section)
        + "\n</main>\n</body>\n</html>\n"
    )
    out = results_dir / "report.html"
    atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out
