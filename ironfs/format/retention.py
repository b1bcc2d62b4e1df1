"""Which snapshots a set's retention policy keeps, and why (FAQ 2.33).

Simple policies: keep the snapshots of the last N days (`within_days`), or
the newest N (`last`). The advanced policy has rules from fine to coarse:

    daily N      the last snapshot of each of the N days before today
    weekly N     ... of each of the N latest given weekdays up to today
    monthly N    ... of each of the N latest given days of the month up to today
    quarterly N  ... of each of the N latest first days of a quarter up to today
    yearly N     ... of each of the N latest 1 January up to today

"The last snapshot of a day" is the newest one taken that day or, when none
was, the newest in the rule's period before it (a backup that ran on Friday
stands for the Saturday it missed). Days are calendar days in the set's time
zone. The newest snapshot is always kept.

With `remove_overlap`, a snapshot kept only by finer rules goes when a coarser
rule keeps a newer snapshot (the rule as the FAQ states it; its worked example
also drops 7 Jan 06, which that rule keeps: see docs/RETENTION.md)."""
import datetime
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from ironfs.errors import UsageError

RULES = ("daily", "weekly", "monthly", "quarterly", "yearly")   # fine to coarse
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def weekday(text: str) -> str:
    """A weekday as people write it (sat, Sat, saturday) to its full name, as retention
    policies and schedules store it."""
    word = text.strip().lower()
    for day in WEEKDAYS:
        if len(word) >= 3 and day.startswith(word):
            return day
    raise UsageError(f"{text!r} is not a weekday.", "Use monday ... sunday, or mon ... sun.")


@dataclass
class Policy:
    within_days: int | None = None
    last: int | None = None
    daily: int = 0
    weekly: int = 0
    weekly_on: str = "saturday"
    monthly: int = 0
    monthly_on: int = 1
    quarterly: int = 0
    yearly: int = 0
    remove_overlap: bool = False
    timezone: str = "UTC"

    def __post_init__(self):
        if self.weekly_on not in WEEKDAYS:
            raise UsageError(f"{self.weekly_on!r} is not a weekday.", "Use monday ... sunday.")
        if not 1 <= self.monthly_on <= 28:
            raise UsageError("The monthly day must be 1 to 28 (a day every month has).")
        counts = [self.within_days, self.last, self.daily, self.weekly, self.monthly, self.quarterly, self.yearly]
        if any(c is not None and c < 0 for c in counts):
            raise UsageError("Retention counts cannot be negative.")
        try:
            ZoneInfo(self.timezone)
        except (ValueError, KeyError):
            raise UsageError(f"{self.timezone!r} is not a time zone.", "Use a name such as Europe/Berlin.") from None


@dataclass
class Verdict:
    seq: int
    time_ns: int
    kept_by: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def keep(self) -> bool:
        return bool(self.kept_by)


def _marker_days(rule: str, policy: Policy, today: datetime.date, count: int) -> list[datetime.date]:
    """The days a rule keeps a snapshot for, newest first."""
    days: list[datetime.date] = []
    if rule == "daily":
        return [today - datetime.timedelta(days=i) for i in range(1, count + 1)]
    day = today
    while len(days) < count:
        if rule == "weekly":
            day -= datetime.timedelta(days=(day.weekday() - WEEKDAYS.index(policy.weekly_on)) % 7)
        elif rule == "monthly":
            if day.day < policy.monthly_on:
                day = (day.replace(day=1) - datetime.timedelta(days=1))
            day = day.replace(day=policy.monthly_on)
        elif rule == "quarterly":
            day = day.replace(month=(day.month - 1) // 3 * 3 + 1, day=1)
        else:
            day = day.replace(month=1, day=1)
        days.append(day)
        day -= datetime.timedelta(days=1)
    return days


def decide(snapshots: list[dict], policy: Policy, now: datetime.datetime) -> list[Verdict]:
    """A verdict per snapshot ({"seq", "time_ns"}), oldest first."""
    zone = ZoneInfo(policy.timezone)
    verdicts = [Verdict(s["seq"], s["time_ns"]) for s in sorted(snapshots, key=lambda s: (s["time_ns"], s["seq"]))]
    if not verdicts:
        return verdicts
    local_days = [datetime.datetime.fromtimestamp(v.time_ns / 1e9, zone).date() for v in verdicts]
    today = now.astimezone(zone).date()
    verdicts[-1].kept_by.append("newest")
    if policy.within_days is not None:
        for v, day in zip(verdicts, local_days):
            if (today - day).days < policy.within_days:
                v.kept_by.append(f"within {policy.within_days} days")
    if policy.last is not None:
        for v in verdicts[-policy.last:] if policy.last else []:
            v.kept_by.append(f"last {policy.last}")
    newest_kept: dict[str, int] = {}
    for rank, rule in enumerate(RULES):
        count = getattr(policy, rule)
        markers = _marker_days(rule, policy, today, count) if count else []
        for i, marker in enumerate(markers):
            # the newest snapshot on or before the marker day, and after the previous (older) marker
            floor = markers[i + 1] if i + 1 < len(markers) else None
            chosen = None
            for index, day in enumerate(local_days):
                if day <= marker and (floor is None or day > floor):
                    chosen = index
            if chosen is not None and rule not in verdicts[chosen].kept_by:
                verdicts[chosen].kept_by.append(rule)
                newest_kept[rule] = max(newest_kept.get(rule, -1), chosen)
    if policy.remove_overlap:
        for index, v in enumerate(verdicts[:-1]):
            kept_rules = [r for r in v.kept_by if r in RULES]
            if not kept_rules or len(kept_rules) != len(v.kept_by):
                continue   # kept by a simple rule (or not by a rule at all): overlap does not apply
            coarsest = max(RULES.index(r) for r in kept_rules)
            newer = [r for r in RULES[coarsest + 1:] if newest_kept.get(r, -1) > index]
            if newer:
                v.reason = f"{', '.join(kept_rules)} overlapped by a newer {newer[0]} snapshot"
                v.kept_by = []
    for v in verdicts:
        if not v.keep and not v.reason:
            v.reason = "no rule keeps it"
    return verdicts
