"""The study's stage cache: a stage whose inputs hash matches its record is reused, not rerun."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from plankdiff.provenance import read_json, sha256_json, write_json


class StaleStage(ValueError):
    """A recorded stage whose outputs differ from what its inputs make now, in a way its key misses."""


class StageCache:
    """Records `<root>/<name>.json` = {key, inputs, result, seconds}; `planned` lists every stage
    asked for with "run" or "reuse", which is what `--dry-run` prints."""

    def __init__(self, root: Path, *, dry_run: bool, console: Console):
        self.root, self.dry_run, self.console = Path(root), dry_run, console
        self.planned: list[tuple[str, str]] = []

    def record(self, name: str) -> Path:
        return self.root / f"{name.replace('/', '_')}.json"

    def result(self, name: str) -> Any:
        """The recorded result of a finished stage, or None."""
        path = self.record(name)
        return read_json(path).get("result") if path.exists() else None

    def __call__(
        self,
        name: str,
        inputs: dict,
        run: Callable[[], Any],
        *,
        outputs: Path | None = None,
        verify: Callable[[], str | None] | None = None,
    ) -> Any:
        """`outputs`: a folder the stage writes beside its result; a record whose folder is gone is
        run again, since its result alone would leave the files the report reads missing.
        `verify`: for a stage about to be reused, why its outputs are not what it would make now
        (what its key cannot tell, e.g. the contents of a file it names), or None; a reason refuses
        the study with `StaleStage` (in a dry run too) rather than reusing or overwriting them."""
        record = self.record(name)
        key = sha256_json(inputs)
        present = outputs is None or Path(outputs).exists()
        if present and record.exists() and read_json(record).get("key") == key:
            problem = verify() if verify is not None else None
            if problem:
                where = f"delete {outputs}" if outputs is not None else f"delete {record}"
                raise StaleStage(f"stage {name}: {problem}; not reused: {where} to run it again")
            self.planned.append((name, "reuse"))
            return read_json(record).get("result")
        self.planned.append((name, "run"))
        if self.dry_run:
            return None
        self.console.print(f"[bold cyan]stage[/bold cyan] {name}")
        started = time.perf_counter()
        result = run()
        write_json(
            record,
            {
                "key": key,
                "inputs": inputs,
                "result": result,
                "seconds": round(time.perf_counter() - started, 1),
            },
        )
        return result


__all__ = ["StageCache", "StaleStage"]
