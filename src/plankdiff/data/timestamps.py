"""Capture times written into Scripps Plankton Camera and IFCB file names.

ZooLake: `SPC-EAWAG-0P5X-<microseconds since 1970>-…`; PWSSC: `SPC-PWSSC-<unix seconds>-…`.
A zero or implausible value means the camera clock was not set: it becomes unknown (None),
never a wrong date. IFCB ROIs (`D20220522T000439_IFCB134_00002`, `IFCB5_2012_028_081515_00003`)
carry their bin's start time: ROIs of one bin share it (the bin is a few minutes of sampling).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import PurePosixPath

import pandas as pd

from plankdiff.data.ifcb import IfcbError, parse_roi_name

# SPC cameras entered service in 2013; nothing in these data can be from the future.
EARLIEST = datetime(2010, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2035, 1, 1, tzinfo=timezone.utc)
IFCB_EARLIEST = datetime(2004, 1, 1, tzinfo=timezone.utc)  # IFCB prototypes sampled from 2004 on
# The sample (capture day) of an image whose name carries no capture time.
UNKNOWN_TIME = "unknown time"

_PATTERNS = (
    (re.compile(r"^SPC-EAWAG-[^-]+-(\d+)-"), 1e-6),
    (re.compile(r"^SPC-PWSSC-(\d+)-"), 1.0),
    (re.compile(r"^SPC-[A-Z0-9]+-(\d{10})-"), 1.0),  # other SPC deployments name seconds too
)


def capture_time(path: str) -> datetime | None:
    """The UTC capture time in an SPC or IFCB file name, or None when absent, zero or implausible."""
    name = PurePosixPath(path).name
    if name.startswith(("D", "IFCB")):
        try:
            moment = parse_roi_name(name)[0].timestamp
        except IfcbError:
            return None
        return moment if IFCB_EARLIEST <= moment < LATEST else None
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


def parse_capture_times(recorded: Iterable[str]) -> pd.Series:
    """A prepared dataset's `capture_time` column (ISO text, "" where unknown) as UTC datetimes (NaT
    where unknown)."""
    return pd.to_datetime(
        pd.Series(list(recorded), dtype=object).replace("", None), utc=True, errors="coerce"
    )


def capture_days(recorded: Iterable[str]) -> list[str]:
    """The UTC capture day (`2020-03-14`) of each recorded capture time, `UNKNOWN_TIME` where unknown:
    the sample a monitoring programme counts per when the images are a day's catch."""
    times = parse_capture_times(recorded)
    return [UNKNOWN_TIME if pd.isna(t) else t.date().isoformat() for t in times]
