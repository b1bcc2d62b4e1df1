"""The retention policy engine (FAQ 2.33): the FAQ's worked example with a fixed
clock, and properties every policy must have."""
import datetime

from hypothesis import given, settings, strategies as st

from ironfs.format.retention import RULES, WEEKDAYS, Policy, decide

UTC = datetime.timezone.utc


def daily_snapshots(first: datetime.date, last: datetime.date, hour: int = 22) -> list[dict]:
    out, day, seq = [], first, 1
    while day <= last:
        t = datetime.datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
        out.append({"seq": seq, "time_ns": int(t.timestamp()) * 10**9})
        day += datetime.timedelta(days=1)
        seq += 1
    return out


def kept_days(verdicts) -> list[str]:
    return [datetime.datetime.fromtimestamp(v.time_ns / 1e9, UTC).strftime("%-d%b%y")
            for v in verdicts if v.keep]


FAQ_NOW = datetime.datetime(2006, 1, 17, 9, 0, tzinfo=UTC)                       # "today is 17 Jan 06"
FAQ_SNAPSHOTS = daily_snapshots(datetime.date(2005, 10, 1), datetime.date(2006, 1, 16))
FAQ_POLICY = dict(daily=7, weekly=4, weekly_on="saturday", monthly=3, monthly_on=1)


def test_the_faq_example_without_overlap_removal_keeps_14():
    verdicts = decide(FAQ_SNAPSHOTS, Policy(**FAQ_POLICY), FAQ_NOW)
    assert kept_days(verdicts) == ["1Nov05", "1Dec05", "24Dec05", "31Dec05", "1Jan06", "7Jan06",
                                   "10Jan06", "11Jan06", "12Jan06", "13Jan06", "14Jan06", "15Jan06", "16Jan06"]
    # 13 distinct snapshots: 14 Jan 06 is both the last daily and the last weekly one (7 + 4 + 3 = 14 keeps)
    assert sum(len([r for r in v.kept_by if r in RULES]) for v in verdicts) == 14
    gone = [v for v in verdicts if not v.keep]
    assert gone and all(v.reason == "no rule keeps it" for v in gone)


def test_the_faq_example_with_overlap_removal_follows_the_stated_rule():
    verdicts = decide(FAQ_SNAPSHOTS, Policy(**FAQ_POLICY, remove_overlap=True), FAQ_NOW)
    # the FAQ's list is 1Nov05 1Dec05 1Jan06 14Jan06 15Jan06 16Jan06; its stated rule also keeps 7Jan06,
    # which only the weekly rule keeps and which is newer than every monthly snapshot
    assert kept_days(verdicts) == ["1Nov05", "1Dec05", "1Jan06", "7Jan06", "14Jan06", "15Jan06", "16Jan06"]
    reasons = {datetime.datetime.fromtimestamp(v.time_ns / 1e9, UTC).strftime("%-d%b%y"): v.reason
               for v in verdicts}
    assert reasons["12Jan06"] == "daily overlapped by a newer weekly snapshot"
    assert reasons["31Dec05"] == "weekly overlapped by a newer monthly snapshot"


def test_simple_policies():
    snaps = daily_snapshots(datetime.date(2006, 1, 1), datetime.date(2006, 1, 16))
    assert len(kept_days(decide(snaps, Policy(last=3), FAQ_NOW))) == 3
    assert kept_days(decide(snaps, Policy(within_days=2), FAQ_NOW)) == ["16Jan06"]
    assert kept_days(decide(snaps, Policy(), FAQ_NOW)) == ["16Jan06"]   # the newest, always


policies = st.builds(
    Policy, daily=st.integers(0, 10), weekly=st.integers(0, 6), weekly_on=st.sampled_from(WEEKDAYS),
    monthly=st.integers(0, 6), monthly_on=st.integers(1, 28), quarterly=st.integers(0, 4),
    yearly=st.integers(0, 3), remove_overlap=st.booleans(),
    timezone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]))
times = st.lists(st.integers(int(datetime.datetime(2020, 1, 1, tzinfo=UTC).timestamp()),
                             int(datetime.datetime(2023, 1, 1, tzinfo=UTC).timestamp())),
                 min_size=1, max_size=120, unique=True)


@settings(max_examples=300, deadline=None)
@given(policies, times, st.integers(0, 400))
def test_every_policy_keeps_the_newest_and_never_more_than_its_counts(policy, seconds, days_later):
    snaps = [{"seq": i + 1, "time_ns": s * 10**9} for i, s in enumerate(sorted(seconds))]
    now = datetime.datetime.fromtimestamp(max(seconds), UTC) + datetime.timedelta(days=days_later)
    verdicts = decide(snaps, policy, now)
    assert [v.seq for v in verdicts] == [s["seq"] for s in snaps]
    assert verdicts[-1].keep
    kept = [v for v in verdicts if v.keep]
    assert len(kept) <= 1 + sum(getattr(policy, r) for r in RULES)
    for rule in RULES:
        assert sum(rule in v.kept_by for v in verdicts) <= getattr(policy, rule)
    assert all(v.reason for v in verdicts if not v.keep)
