"""The study's stage cache: a stage whose inputs hash matches its record is reused, not rerun."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from plankdiff.provenance import read_json, sha256_json, write_json


class StaleStage(ValueError):
    """A recorded stage whose outputs differ from what its inputs make now, in a way its key misses."""


class StageCache:
    """Records `<root>/<name>.json` = {key, inputs, result, seconds}; `planned` lists every stage
    asked for with "run", "reuse" or "copy", which is what `--dry-run` prints.

    `donors`: the stage folders of other studies. A `shareable` stage this cache has not recorded is
    copied from a donor that recorded the same name with the same key (the same inputs hash: for a
    backbone, the same prepared data, rows, method, budget, seed and precision), together with its
    output folder, instead of being run again: one backbone trained once serves every study that
    asks for it (the background ablation's normalised arm is the `cpu` study's seed 0). The output
    folder is laid out alike under both studies' work folders (`root.parent`). Files are copied,
    not linked: a donor that retrains writes its checkpoint in place."""

    def __init__(self, root: Path, *, dry_run: bool, console: Console, donors: Sequence[Path] = ()):
        self.root, self.dry_run, self.console = Path(root), dry_run, console
        self.donors = [Path(d) for d in donors if Path(d).resolve() != self.root.resolve()]
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
        verify: Callable[[Path], str | None] | None = None,
        shareable: bool = False,
    ) -> Any:
        """`outputs`: a folder the stage writes beside its result; a record whose folder is gone is
        run again, since its result alone would leave the files the report reads missing.
        `verify(folder)`: for a stage with `outputs` about to be reused, why the outputs in `folder`
        are not what it would make now (what its key cannot tell, e.g. the contents of a file it
        names, or a split name this study does not have), or None; a reason refuses the study with
        `StaleStage` (in a dry run too) rather than reusing or overwriting them.
        `shareable`: a stage with `outputs` that another study's identical stage may supply (see the
        class); a donor's folder `verify` finds a reason against is passed over, not copied."""
        record = self.record(name)
        key = sha256_json(inputs)
        present = outputs is None or Path(outputs).exists()
        if present and record.exists() and read_json(record).get("key") == key:
            problem = verify(Path(outputs)) if verify is not None and outputs is not None else None
            if problem:
                where = f"delete {outputs}" if outputs is not None else f"delete {record}"
                raise StaleStage(f"stage {name}: {problem}; not reused: {where} to run it again")
            self.planned.append((name, "reuse"))
            return read_json(record).get("result")
        donor = self._donor(name, key, outputs, verify) if shareable and outputs is not None else None
        if donor is not None:
            return self._copy(name, donor, Path(outputs))
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

    def _donor(
        self, name: str, key: str, outputs: Path, verify: Callable[[Path], str | None] | None
    ) -> tuple[Path, Path] | None:
        """(record, output folder) of the first donor that finished this stage with this key and
        whose folder `verify` accepts for this study."""
        where = Path(outputs).resolve().relative_to(self.root.parent.resolve())
        for donor in self.donors:
            record = donor / self.record(name).name
            folder = donor.parent / where
            if not (record.exists() and folder.is_dir() and read_json(record).get("key") == key):
                continue
            problem = verify(folder) if verify is not None else None
            if problem:
                self.console.print(
                    f"[yellow]note:[/yellow] stage {name}: not copied from {folder}: {problem}"
                )
                continue
            return record, folder
        return None

    def _copy(self, name: str, donor: tuple[Path, Path], outputs: Path) -> Any:
        record, folder = donor
        study = record.parent.parent.name
        self.planned.append((name, "copy"))
        if self.dry_run:
            return read_json(record).get("result")
        self.console.print(f"[bold cyan]stage[/bold cyan] {name}: copied from study {study}")
        shutil.rmtree(outputs, ignore_errors=True)  # a run cut short leaves a partial folder
        partial = outputs.with_name(outputs.name + ".copying")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(folder, partial)
        partial.rename(outputs)
        donated = read_json(record)
        write_json(self.record(name), {**donated, "copied_from": str(record)})
        return donated.get("result")


__all__ = ["StageCache", "StaleStage"]
