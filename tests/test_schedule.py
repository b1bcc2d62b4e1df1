"""Schedule rules with fixed clocks: parsing, the next run of each kind of rule,
DST nights, month ends, missed runs, and the off-line interval."""
import datetime
from zoneinfo import ZoneInfo

import pytest

from client import schedule
from client.throttle import TokenBucket, throttled
from ironfs.errors import UsageError
from ironfs.store.setoptions import check_daemon_settings

PARIS = ZoneInfo("Europe/Paris")
UTC = ZoneInfo("UTC")


def at(tz, *args) -> float:
    return datetime.datetime(*args, tzinfo=tz).timestamp()


def local(t: float, tz=PARIS) -> tuple:
    d = datetime.datetime.fromtimestamp(t, tz)
    return (d.year, d.month, d.day, d.hour, d.minute)


def test_parse_and_print_rules():
    assert schedule.parse_rule("every 30 minutes") == {"every": 30, "unit": "minutes"}
    assert schedule.parse_rule("every 1.5 hours") == {"every": 1.5, "unit": "hours"}
    assert schedule.parse_rule("daily 2:00, 13:30") == {"daily": ["02:00", "13:30"]}
    assert schedule.parse_rule("weekly Mon,fri 22:00") == {"weekly": ["monday", "friday"], "at": ["22:00"]}
    assert schedule.parse_rule("monthly 31 03:00") == {"monthly": 31, "at": ["03:00"]}
    for text in ("every 30 minutes", "daily 02:00,13:30", "weekly mon,fri 22:00", "monthly 31 03:00"):
        assert schedule.rule_text(schedule.parse_rule(text)) == text
    for bad in ("", "hourly", "every 30 seconds", "every 0.001 minutes", "daily 25:00", "daily", "weekly 22:00",
                "weekly funday 22:00", "monthly 0 03:00", "monthly 32 03:00", "every many hours"):
        with pytest.raises(UsageError):
            schedule.parse_rule(bad)


def test_settings_are_checked_as_the_server_checks_them():
    check_daemon_settings({"schedule": [{"every": 2, "unit": "hours"}, {"daily": ["02:00"]}],
                           "hooks": {"pre": {"command": "true", "timeout": 5, "continue_on_error": True},
                                     "post": {"command": "true"}},
                           "local_copy": "/mnt/copy", "bandwidth_limit": 1 << 20})
    check_daemon_settings({"hooks": None, "local_copy": None, "bandwidth_limit": None, "schedule": []})
    for bad in ({"schedule": [{"daily": ["02:00"], "every": 1}]}, {"schedule": [{"every": 1, "unit": "days"}]},
                {"hooks": {"pre": {"command": ""}}}, {"hooks": {"post": {"command": "x", "continue_on_error": True}}},
                {"hooks": {"pre": {"command": "x", "timeout": 0}}}, {"hooks": {"during": {"command": "x"}}},
                {"local_copy": "relative/dir"}, {"bandwidth_limit": 10}, {"bandwidth_limit": True}):
        with pytest.raises(UsageError):
            check_daemon_settings(bad)


def test_daily_next_time_and_the_day_after():
    rule = schedule.parse_rule("daily 02:00,13:30")
    t = schedule.next_time(rule, at(PARIS, 2026, 6, 10, 1, 0), PARIS)
    assert local(t) == (2026, 6, 10, 2, 0)
    t = schedule.next_time(rule, t, PARIS)          # strictly after: not the same time again
    assert local(t) == (2026, 6, 10, 13, 30)
    assert local(schedule.next_time(rule, t, PARIS)) == (2026, 6, 11, 2, 0)


def test_weekly_and_monthly_with_short_months():
    weekly = schedule.parse_rule("weekly mon,fri 22:00")
    t = at(PARIS, 2026, 6, 10, 12, 0)               # a Wednesday
    t = schedule.next_time(weekly, t, PARIS)
    assert local(t) == (2026, 6, 12, 22, 0)         # Friday
    assert local(schedule.next_time(weekly, t, PARIS)) == (2026, 6, 15, 22, 0)   # Monday
    monthly = schedule.parse_rule("monthly 31 03:00")
    t = schedule.next_time(monthly, at(PARIS, 2026, 1, 31, 4, 0), PARIS)
    assert local(t) == (2026, 2, 28, 3, 0)          # February has no 31st: its last day
    t = schedule.next_time(monthly, t, PARIS)
    assert local(t) == (2026, 3, 31, 3, 0)
    assert local(schedule.next_time(monthly, t, PARIS)) == (2026, 4, 30, 3, 0)


def test_daylight_saving_nights():
    rule = schedule.parse_rule("daily 02:30")
    # 29 March 2026, Paris: 02:00 -> 03:00. 02:30 does not exist: it runs at 03:30 summer time, once
    t = schedule.next_time(rule, at(PARIS, 2026, 3, 29, 0, 0), PARIS)
    assert local(t) == (2026, 3, 29, 3, 30)
    assert local(schedule.next_time(rule, t, PARIS)) == (2026, 3, 30, 2, 30)
    # 25 October 2026: 03:00 -> 02:00. 02:30 happens twice: one run
    t = schedule.next_time(rule, at(PARIS, 2026, 10, 25, 0, 0), PARIS)
    after = schedule.next_time(rule, t, PARIS)
    assert local(after) == (2026, 10, 26, 2, 30) and after - t == 25 * 3600


def test_missed_runs_run_once_at_start():
    rules = [schedule.parse_rule("daily 02:00")]
    last = at(UTC, 2026, 6, 1, 2, 0)                # ran on the 1st, then the machine was off for four days
    now = at(UTC, 2026, 6, 5, 9, 0)
    assert schedule.due_reason(rules, last, now, UTC) == "missed"
    assert schedule.next_due(rules, last, UTC) < now
    # the run starts now; from then on nothing is due until the next 02:00
    assert schedule.due_reason(rules, now, now + 60, UTC) is None
    assert schedule.next_due(rules, now, UTC) == at(UTC, 2026, 6, 6, 2, 0)
    # on time (within a poll or two) it is a scheduled run, not a missed one
    assert schedule.due_reason(rules, last, at(UTC, 2026, 6, 2, 2, 0, 30), UTC) == "schedule"


def test_interval_counts_from_the_last_run():
    rules = [schedule.parse_rule("every 2 hours")]
    last = at(UTC, 2026, 6, 1, 8, 0)
    assert schedule.due_reason(rules, last, last + 7199, UTC) is None
    assert schedule.due_reason(rules, last, last + 7200, UTC) == "interval"
    assert schedule.due_reason(rules, last, last + 3 * 86400, UTC) == "interval"   # a laptop back online
    assert schedule.next_due(rules, last, UTC) == last + 7200
    both = rules + [schedule.parse_rule("daily 09:00")]
    assert schedule.next_due(both, last, UTC) == at(UTC, 2026, 6, 1, 9, 0)
    assert schedule.next_due([], last, UTC) is None


def test_token_bucket_keeps_to_its_rate_on_a_fixed_clock():
    now = [0.0]

    def sleep(s):
        now[0] += s
    bucket = TokenBucket(100_000, clock=lambda: now[0], sleep=sleep)
    sent = sum(len(piece) for piece in throttled([b"x" * 1_000_000], bucket))
    assert sent == 1_000_000
    # the first 64 KiB go at once (the bucket starts full), the rest at 100 kB/s
    assert now[0] == pytest.approx((1_000_000 - 65536) / 100_000, rel=0.01)
