"""Budget windows in a time zone (``windows``): DST days of 23 and 25 hours, 30-minute offsets,
a 30-minute DST shift, month lengths and leap years, ISO weeks; and, for any instant, exactly one
bucket per window, contiguous with the next, with an id naming it alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openai_policy_api import WINDOWS
from openai_policy_store.windows import bucket_of, current_buckets

NY = "America/New_York"
HOUR = timedelta(hours=1)


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_new_york_spring_forward_day_lasts_23_hours():
    day = bucket_of("day", at(2026, 3, 8, 12), NY)
    assert (day.start, day.end) == (at(2026, 3, 8, 5), at(2026, 3, 9, 4))
    assert day.end - day.start == timedelta(hours=23)
    # 01:00 EST is followed directly by 03:00 EDT: the hour bucket ends at the jump.
    one_am = bucket_of("hour", at(2026, 3, 8, 6, 30), NY)
    assert (one_am.start, one_am.end) == (at(2026, 3, 8, 6), at(2026, 3, 8, 7))
    assert bucket_of("hour", at(2026, 3, 8, 7), NY).id == "2026-03-08T03:00-04:00"


def test_new_york_fall_back_day_lasts_25_hours_and_its_repeated_hour_is_two_buckets():
    day = bucket_of("day", at(2026, 11, 1, 12), NY)
    assert day.end - day.start == timedelta(hours=25)
    first = bucket_of("hour", at(2026, 11, 1, 5, 30), NY)  # 01:30 EDT
    second = bucket_of("hour", at(2026, 11, 1, 6, 30), NY)  # 01:30 EST, the same wall clock
    assert (first.start, first.end) == (at(2026, 11, 1, 5), at(2026, 11, 1, 6))
    assert (second.start, second.end) == (at(2026, 11, 1, 6), at(2026, 11, 1, 7))
    assert first.id == "2026-11-01T01:00-04:00" and second.id == "2026-11-01T01:00-05:00"


def test_kolkata_hours_start_at_half_past_utc():
    hour = bucket_of("hour", at(2026, 6, 1, 10, 15), "Asia/Kolkata")
    assert (hour.start, hour.end) == (at(2026, 6, 1, 9, 30), at(2026, 6, 1, 10, 30))
    day = bucket_of("day", at(2026, 6, 1, 20), "Asia/Kolkata")  # 01:30 on June 2nd locally
    assert day.start == at(2026, 6, 1, 18, 30) and day.id == "2026-06-02T00:00+05:30"


def test_lord_howe_half_hour_daylight_saving_shifts():
    zone = "Australia/Lord_Howe"
    # 2026-10-04 02:00 +10:30 becomes 02:30 +11 (15:30 UTC on the 3rd): local hour 2 lasts 30 min.
    before = bucket_of("hour", at(2026, 10, 3, 15, 10), zone)  # 01:40 +10:30
    after = bucket_of("hour", at(2026, 10, 3, 15, 40), zone)  # 02:40 +11
    assert (before.start, before.end) == (at(2026, 10, 3, 14, 30), at(2026, 10, 3, 15, 30))
    assert (after.start, after.end) == (at(2026, 10, 3, 15, 30), at(2026, 10, 3, 16))
    assert after.id == "2026-10-04T02:30+11:00"
    day = bucket_of("day", at(2026, 10, 3, 20), zone)
    assert day.end - day.start == timedelta(hours=23, minutes=30)
    # 2026-04-05 02:00 +11 goes back to 01:30 +10:30 (15:00 UTC on the 4th): 01:30-02:00 twice.
    first = bucket_of("hour", at(2026, 4, 4, 14, 45), zone)
    again = bucket_of("hour", at(2026, 4, 4, 15, 15), zone)
    assert (first.start, first.end) == (at(2026, 4, 4, 14), at(2026, 4, 4, 15))
    assert (again.start, again.end) == (at(2026, 4, 4, 15), at(2026, 4, 4, 15, 30))
    assert first.id != again.id


@pytest.mark.parametrize(
    ("moment", "zone", "days"),
    [
        (at(2026, 2, 10), "UTC", 28),
        (at(2028, 2, 10), "UTC", 29),  # leap year
        (at(2028, 2, 10), "Europe/Paris", 29),
        (at(2026, 4, 10), "Europe/Paris", 30),
        (at(2026, 1, 31, 23, 30), "Europe/Paris", 28),  # already February in Paris
    ],
)
def test_month_lengths(moment, zone, days):
    month = bucket_of("month", moment, zone)  # none of these months holds a DST change
    assert month.end - month.start == timedelta(days=days)
    assert month.start <= moment < month.end


def test_iso_week_starts_on_monday_local_midnight():
    week = bucket_of("week", at(2026, 11, 1, 12), NY)  # a Sunday
    assert week.start == at(2026, 10, 26, 4) and week.end == at(2026, 11, 2, 5)
    assert week.end - week.start == timedelta(days=7, hours=1)  # it holds the 25-hour day
    assert bucket_of("week", at(2026, 12, 31), "UTC").id == "2026-W53"
    assert bucket_of("week", at(2027, 1, 4), "UTC").id == "2027-W01"


def test_utc_ids_keep_their_historical_form():
    ids = {b.window: b.bucket for b in current_buckets({}, at(2026, 11, 22, 14, 5))}
    assert ids == {"hour": "2026-11-22T14", "day": "2026-11-22", "week": "2026-W47", "month": "2026-11"}


ZONES = [
    "UTC",
    NY,
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Europe/London",
    "Pacific/Chatham",
    "America/Santiago",
]


@settings(max_examples=300, deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(ZONES),
    window=st.sampled_from(WINDOWS),
)
def test_every_instant_falls_in_exactly_one_bucket(moment, zone, window):
    bucket = bucket_of(window, moment, zone)
    assert bucket.start <= moment < bucket.end
    # Contiguous: the instant just before the end is still this bucket; the end starts the next.
    assert bucket_of(window, bucket.end - timedelta(microseconds=1), zone) == bucket
    following = bucket_of(window, bucket.end, zone)
    assert following.start == bucket.end and following.id != bucket.id
    preceding = bucket_of(window, bucket.start - timedelta(microseconds=1), zone)
    assert preceding.end == bucket.start and preceding.id != bucket.id
    if window == "hour":
        assert bucket.end - bucket.start <= HOUR
