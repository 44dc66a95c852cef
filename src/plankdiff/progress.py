"""One progress bar style for every long-running stage (rich)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1, **fields)`; extra fields (loss, img/s) are shown after the bar."""
    if not enabled:
        yield lambda n=1, **fields: None
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, status="")

        def advance(n: int = 1, **fields: object) -> None:
            status = "  ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
            )
            progress.update(task, advance=n, **({"status": status} if fields else {}))

        yield advance
