"""Capture times written into Scripps Plankton Camera file names.

ZooLake: `SPC-EAWAG-0P5X-<microseconds since 1970>-…`; PWSSC: `SPC-PWSSC-<unix seconds>-…`.
A zero or implausible value means the camera clock was not set: it becomes unknown (None),
never a wrong date.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import PurePosixPath

# SPC cameras entered service in 2013; nothing in these data can be from the future.
EARLIEST = datetime(2010, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2035, 1, 1, tzinfo=timezone.utc)

_PATTERNS = (
    (re.compile(r"^SPC-EAWAG-[^-]+-(\d+)-"), 1e-6),
    (re.compile(r"^SPC-PWSSC-(\d+)-"), 1.0),
    (re.compile(r"^SPC-[A-Z0-9]+-(\d{10})-"), 1.0),  # other SPC deployments name seconds too
)


def capture_time(path: str) -> datetime | None:
    """The UTC capture time in an SPC file name, or None when absent, zero or implausible."""
    name = PurePosixPath(path).name
    for pattern, seconds_per_unit in _PATTERNS:
        match = pattern.match(name)
        if not match:
            continue
        value = int(match.group(1))
        if value == 0:
            return None
        try:
            moment = datetime.fromtimestamp(value * seconds_per_unit, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
        return moment if EARLIEST <= moment < LATEST else None
    return None
