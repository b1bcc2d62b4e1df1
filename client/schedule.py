"""Schedule rules: text as people write it, the stored form (ironfs.store.setoptions),
and when a set is next due. Pure functions of a clock: nothing here sleeps or
reads the time itself, so the rules are tested with fixed clocks.

    every 30 minutes · every 2 hours · every 0.5 minutes   (off-line backup: an interval)
    daily 02:00[,13:30 ...]
    weekly mon,fri 22:00[,...]
    monthly 1 03:00[,...]                                    (29-31: the last day of shorter months)

A set is due at the first scheduled time after its last run (or after the set
was made, if it never ran here). A time in the past is a run missed while the
machine was off: it is due at once, and only once however many were missed,
because the run that follows moves "last run" past all of them. An interval
is due when that much time has passed since the last run started."""
import calendar
import datetime
import os
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ironfs.errors import UsageError
from ironfs.format.retention import WEEKDAYS, weekday
from ironfs.store.setoptions import UNITS, check_rule

UNIT_WORDS = {"minute": "minutes", "minutes": "minutes", "min": "minutes", "mins": "minutes",
              "hour": "hours", "hours": "hours", "h": "hours"}
SEARCH_DAYS = 400      # a monthly rule on the 31st still meets a month within this


def parse_rule(text: str) -> dict:
    """'every 30 minutes' -> {"every": 30, "unit": "minutes"} and so on (UsageError if malformed)."""
    words = text.replace(",", " , ").split()
    hint = "Write e.g. 'every 30 minutes', 'daily 02:00', 'weekly mon,fri 22:00' or 'monthly 1 03:00'."
    if not words:
        raise UsageError("An empty schedule rule.", hint)
    kind, rest = words[0].lower(), [w for w in words[1:] if w != ","]
    try:
        if kind == "every":
            if len(rest) != 2 or rest[1].lower() not in UNIT_WORDS:
                raise ValueError
            n = float(rest[0])
            rule = {"every": int(n) if n.is_integer() else n, "unit": UNIT_WORDS[rest[1].lower()]}
        elif kind == "daily":
            rule = {"daily": rest}
        elif kind == "weekly":
            days, times = [w for w in rest if ":" not in w], [w for w in rest if ":" in w]
            rule = {"weekly": [weekday(d) for d in days], "at": times}
        elif kind == "monthly":
            rule = {"monthly": int(rest[0]), "at": rest[1:]}
        else:
            raise ValueError
        rule = {k: ([normal_time(t) for t in v] if k in ("daily", "at") else v) for k, v in rule.items()}
        return check_rule(rule)
    except (ValueError, IndexError):
        raise UsageError(f"{text!r} is not a schedule rule.", hint) from None
    except UsageError as exc:
        raise UsageError(f"{text!r}: {exc.message}", hint) from None


def normal_time(t: str) -> str:
    hours, _, minutes = t.partition(":")
    return f"{int(hours):02d}:{int(minutes):02d}" if hours.isdigit() and minutes.isdigit() else t


def rule_text(rule: dict) -> str:
    """The stored form back to the text form."""
    if "every" in rule:
        return f"every {rule['every']:g} {rule['unit']}"
    if "daily" in rule:
        return "daily " + ",".join(rule["daily"])
    if "weekly" in rule:
        return f"weekly {','.join(d[:3] for d in rule['weekly'])} {','.join(rule['at'])}"
    return f"monthly {rule['monthly']} {','.join(rule['at'])}"


def local_zone(name: str | None = None) -> datetime.tzinfo:
    """The zone rules run in: `name`, else $TZ, else this machine's /etc/localtime (with its DST rules)."""
    name = name or os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ValueError, ZoneInfoNotFoundError):
            raise UsageError(f"{name!r} is not a time zone.", "Use a name like Europe/Paris or UTC.") from None
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return datetime.datetime.now().astimezone().tzinfo


def _times(rule: dict) -> list[tuple[int, int]]:
    return [tuple(map(int, t.split(":"))) for t in rule.get("daily") or rule["at"]]


def _day_matches(rule: dict, day: datetime.date) -> bool:
    if "daily" in rule:
        return True
    if "weekly" in rule:
        return WEEKDAYS[day.weekday()] in rule["weekly"]
    last = calendar.monthrange(day.year, day.month)[1]
    return day.day == min(rule["monthly"], last)


def next_time(rule: dict, after: float, tz: datetime.tzinfo) -> float:
    """The first time the rule names strictly after `after` (a Unix time).
    Wall-clock times that a DST change skips run at the same offset as before it
    (02:30 on a spring-forward night runs at 03:30); times it repeats run once."""
    if "every" in rule:
        return after + rule["every"] * UNITS[rule["unit"]]
    start = datetime.datetime.fromtimestamp(after, tz).date() - datetime.timedelta(days=1)
    times = sorted(_times(rule))
    for i in range(SEARCH_DAYS):
        day = start + datetime.timedelta(days=i)
        if not _day_matches(rule, day):
            continue
        for hour, minute in times:
            t = datetime.datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz).timestamp()
            if t > after:
                return t
    raise AssertionError(f"rule {rule} names no time within {SEARCH_DAYS} days")   # check_rule prevents this


def next_due(rules: list[dict], last_run: float, tz: datetime.tzinfo) -> float | None:
    """When a set whose last run started at `last_run` is next due (None: no rules).
    At or before now means: run now."""
    times = [next_time(r, last_run, tz) for r in rules]
    return min(times) if times else None


def due_reason(rules: list[dict], last_run: float, now: float, tz: datetime.tzinfo) -> str | None:
    """Why the set should run at `now` ("interval", "schedule", "missed"), or None if it should not."""
    reasons = []
    for r in rules:
        t = next_time(r, last_run, tz)
        if t > now:
            continue
        if "every" in r:
            reasons.append("interval")
        else:   # a timed run more than a poll late was missed (machine off, asleep, daemon stopped)
            reasons.append("schedule" if now - t < MISSED_AFTER_S else "missed")
    for reason in ("schedule", "interval", "missed"):
        if reason in reasons:
            return reason
    return None


MISSED_AFTER_S = 120
