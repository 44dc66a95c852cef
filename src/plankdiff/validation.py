"""One-line messages for pydantic validation errors, each problem blamed on what set the value:
a command-line option (named as its flag) or a key of a file."""

from __future__ import annotations

from collections.abc import Collection

from pydantic import ValidationError


def problems(
    error: ValidationError, *, source: object, what: str, flags: Collection[str] = (), under=()
) -> str:
    """`--max-minutes -1: Input should be greater than 0; tiny.yaml: invalid diffusion config: unet.x: …`.

    flags: the fields a command-line option set; a problem at `(*under, field)` with `field` in
    `flags` is reported as `--field-name VALUE`, every other problem under `source`.
    """
    named, keyed = [], []
    for e in error.errors():
        loc = [str(p) for p in e["loc"]]
        e["msg"] = e["msg"].removeprefix("Value error, ")  # our own validators' messages, as written
        if len(loc) == len(under) + 1 and tuple(loc[:-1]) == tuple(under) and loc[-1] in flags:
            named.append(f"--{loc[-1].replace('_', '-')} {e.get('input')!r}: {e['msg']}")
        else:
            keyed.append(f"{'.'.join(loc) or '(top level)'}: {e['msg']}")
    return "; ".join(named + ([f"{source}: invalid {what}: {'; '.join(keyed)}"] if keyed else []))
