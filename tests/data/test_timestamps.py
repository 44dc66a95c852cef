"""Capture times in Scripps Plankton Camera file names (IFCB names: see test_ifcb.py)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from plankdiff.data.timestamps import capture_time

ZOOLAKE = "SPC-EAWAG-0P5X-1570543372901157-3725350526242-001629-055-1224-2176-84-64.jpeg"
PWSSC = "SPC-PWSSC-1459740420-000486-010-2450-1620-84-60.png"


def test_zoolake_microseconds():
    moment = capture_time(ZOOLAKE)
    assert moment == datetime(2019, 10, 8, 14, 2, 52, 901157, tzinfo=timezone.utc)
    assert moment.tzinfo is not None and moment.utcoffset().total_seconds() == 0


def test_zoolake_with_class_folder_in_the_path():
    assert capture_time(f"aphanizomenon/{ZOOLAKE}") == capture_time(ZOOLAKE)


@pytest.mark.parametrize(
    ("micros", "expected"),
    [
        (1526000000000000, datetime(2018, 5, 11, 0, 53, 20, tzinfo=timezone.utc)),
        (1590969600000000, datetime(2020, 6, 1, tzinfo=timezone.utc)),
    ],
)
def test_zoolake_years(micros, expected):
    assert capture_time(f"SPC-EAWAG-0P5X-{micros}-1-2-3.jpeg") == expected


def test_pwssc_seconds():
    assert capture_time(f"Acartia/{PWSSC}") == datetime(2016, 4, 4, 3, 27, 0, tzinfo=timezone.utc)


def test_other_spc_deployment_with_ten_digit_seconds():
    assert capture_time("SPC-UCSD-1500000000-000001-1.png") == datetime(
        2017, 7, 14, 2, 40, tzinfo=timezone.utc
    )


@pytest.mark.parametrize(
    "name",
    [
        "SPC-PWSSC-0-000836-087-324-2296-108-80.png",  # clock not set
        "SPC-EAWAG-0P5X-0-3725350526242-001629.jpeg",
        "SPC-PWSSC-86400-000001-1.png",  # 2 January 1970
        "SPC-EAWAG-0P5X-86400000000-1-2.jpeg",  # 2 January 1970, in microseconds
        "SPC-PWSSC-2200000000-000001-1.png",  # 2039
        "SPC-EAWAG-0P5X-2100000000000000-1-2.jpeg",  # 2036
        "SPC-EAWAG-0P5X-1570543372-1-2.jpeg",  # seconds where microseconds belong: 1970
        "SPC-PWSSC-99999999999999999999-1.png",  # overflows datetime
    ],
)
def test_zero_or_absurd_times_are_unknown(name):
    assert capture_time(name) is None


@pytest.mark.parametrize("name", ["100224.jpg", "copepod/100224.jpg", "SPC-PWSSC-x-1.png", "notes.txt"])
def test_names_without_a_time(name):
    assert capture_time(name) is None


def test_limits_are_inclusive_below_and_exclusive_above():
    assert capture_time("SPC-PWSSC-1262304000-1.png") == datetime(2010, 1, 1, tzinfo=timezone.utc)
    assert capture_time("SPC-PWSSC-1262303999-1.png") is None
    assert capture_time("SPC-PWSSC-2051222399-1.png") == datetime(
        2034, 12, 31, 23, 59, 59, tzinfo=timezone.utc
    )
    assert capture_time("SPC-PWSSC-2051222400-1.png") is None  # 1 January 2035
