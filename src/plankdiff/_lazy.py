"""Lazy re-exports for package `__init__` modules.

A package `__init__` that imports its submodules eagerly makes `import plankdiff.<stage>` load torch,
diffusers and friends (seconds), and with them every `plankdiff … --help`. Each `__init__` instead
names what it re-exports and where it lives; the submodule is imported on first attribute access
(PEP 562), so `from plankdiff.features import extract_features` still works and costs only what it
uses.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], *, on_load: Callable[[], None] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, given {name: submodule it is defined in}.

    `on_load` runs once, before the first re-exported name is handed out (e.g. to fill a registry
    the package used to fill at import time)."""
    loaded = False

    def __getattr__(name: str) -> Any:
        nonlocal loaded
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        if on_load is not None and not loaded:
            loaded = True
            on_load()
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
