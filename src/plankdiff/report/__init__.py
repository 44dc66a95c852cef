"""Report stage: the headline table and one self-contained HTML report per results folder."""

from plankdiff.report.render import app, render_report
from plankdiff.report.tables import headline_table, to_markdown, write_tables

__all__ = ["app", "headline_table", "render_report", "to_markdown", "write_tables"]
