"""Feature pairs and fused selections of them, as types; their text forms exist only where a file
or a command line needs them (store.json, pair file names, CSV and JSON results, card.json, --pair).

A pair is one feature array of a store: a diffusion block read at one timestep (`dec2@16/t=5`),
or a block without a timestep: a baseline network's (`layer3@8`, `pool`, MAE's `block4`) or the
raw pixels (`pixels`). A selection is what a probe reads: one pair, or several concatenated in
order (a fused top-k), written `dec2@16/t=5+enc2@16/t=5`. Results and classifiers written before
these types existed used exactly these strings, so they parse unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

TIMESTEP = "/t="  # between a diffusion pair's block and its timestep
FUSE = "+"  # between the pairs of a fused selection
# A block name: what `list_blocks` and the baselines' `feature_blocks` produce (letters, digits,
# '@' before a resolution, '.' before a sub-block, '_' and '-'); never a separator above.
_BLOCK = re.compile(r"[A-Za-z0-9_@.\-]+")
_EXAMPLES = "e.g. 'dec2@16/t=5', or 'layer3@8' for a block without a timestep"


@dataclass(frozen=True, order=True)
class Pair:
    """One (block, timestep) feature array; `t` None for a baseline block or the raw pixels."""

    block: str
    t: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.block, str) or not _BLOCK.fullmatch(self.block):
            raise ValueError(f"pair block {self.block!r}: not a block name ({_EXAMPLES})")
        if self.t is not None and (isinstance(self.t, bool) or not isinstance(self.t, int) or self.t < 0):
            raise ValueError(f"pair {self.block!r}: timestep {self.t!r} is not a whole number >= 0")

    @property
    def name(self) -> str:
        """The text form, as store.json, result tables and card.json write it."""
        return self.block if self.t is None else f"{self.block}{TIMESTEP}{self.t}"

    @property
    def file_name(self) -> str:
        """The pair's array in a store's `pairs/` folder: '/' and '=' are not plain file name parts."""
        return self.name.replace("/", "__").replace("=", "") + ".npy"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, text: str) -> Pair:
        """`dec2@16/t=5` or `layer3@8`; anything else is a one-line ValueError naming the text."""
        block, sep, t = str(text).partition(TIMESTEP)
        if sep and not (t.isascii() and t.isdigit()):
            raise ValueError(
                f"pair {text!r}: the timestep after '{TIMESTEP}' is not a whole number ({_EXAMPLES})"
            )
        if not _BLOCK.fullmatch(block):
            raise ValueError(f"pair {text!r}: not '<block>' or '<block>{TIMESTEP}<timestep>' ({_EXAMPLES})")
        return cls(block, int(t) if sep else None)


RAW_PIXELS = Pair("pixels")


@dataclass(frozen=True)
class Selection:
    """The pairs a probe reads, concatenated in this order; one pair, or a fused top-k."""

    pairs: tuple[Pair, ...]

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ValueError("a selection needs at least one feature pair")
        seen: set[Pair] = set()
        for pair in self.pairs:
            if pair in seen:
                raise ValueError(f"pair {pair.name} listed twice in {self.name!r}")
            seen.add(pair)

    @classmethod
    def of(cls, pairs: Selection | Pair | str | Iterable[Pair | str]) -> Selection:
        """From a selection, one pair, its text (`a+b`), or pairs given one by one (each a Pair or
        a pair's text, as `--pair` repeats them)."""
        if isinstance(pairs, Selection):
            return pairs
        if isinstance(pairs, Pair):
            return cls((pairs,))
        if isinstance(pairs, str):
            return cls.parse(pairs)
        return cls(tuple(p if isinstance(p, Pair) else Pair.parse(p) for p in pairs))

    @classmethod
    def parse(cls, text: str) -> Selection:
        """`a` or `a+b+…`, each part a pair's text; a bad part is named with the whole text."""
        try:
            return cls(tuple(Pair.parse(part) for part in str(text).split(FUSE)))
        except ValueError as error:
            raise ValueError(f"selection {text!r}: {error}") from None

    @property
    def name(self) -> str:
        return FUSE.join(p.name for p in self.pairs)

    @property
    def names(self) -> list[str]:
        """Each pair's text, in order: the keys a store's arrays and a probe's features go by."""
        return [p.name for p in self.pairs]

    @property
    def fused(self) -> bool:
        return len(self.pairs) > 1

    @property
    def first(self) -> Pair:
        return self.pairs[0]

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __str__(self) -> str:
        return self.name


__all__ = ["FUSE", "RAW_PIXELS", "TIMESTEP", "Pair", "Selection"]
