"""Report stage: the headline table and one self-contained HTML report per results folder."""

from plankdiff._lazy import lazy_exports

_EXPORTS = {
    "app": "cli",
    "headline_table": "tables",
    "render_report": "render",
    "to_markdown": "tables",
    "write_tables": "tables",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
