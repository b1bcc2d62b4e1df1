"""The stored form of a set's daemon settings, checked by the server before it
keeps them (the client's `schedule` module computes run times from them):

    "schedule": [{"every": 30, "unit": "minutes"},            # off-line backup: every N minutes or hours
                 {"daily": ["02:00", "13:30"]},
                 {"weekly": ["monday", "friday"], "at": ["22:00"]},
                 {"monthly": 1, "at": ["03:00"]}]              # day 29-31: the month's last day when shorter
    "hooks": {"pre":  {"command": "pg_dump ... > /var/dump.sql", "timeout": 600, "continue_on_error": false},
              "post": {"command": "...", "timeout": 600}}
    "local_copy": "/mnt/usb/docs-copy"                         # also write the packs and commits here
    "bandwidth_limit": 1048576                                 # upload bytes per second

Times are the client machine's local time. Commands run with /bin/sh -c."""
import re

from ironfs.errors import UsageError
from ironfs.format.retention import WEEKDAYS
UNITS = {"minutes": 60, "hours": 3600}
TIME_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
MIN_INTERVAL_S = 1.0            # "every 0.05 minutes" is allowed (tests, busy servers); less is not
MAX_INTERVAL_S = 366 * 86400
MAX_RULES = 32
HOOK_TIMEOUT_DEFAULT = 600
HOOK_TIMEOUT_MAX = 86400
MIN_BANDWIDTH = 1024            # bytes per second


def _bad(message: str) -> UsageError:
    return UsageError(message, "See docs/DAEMON.md for the forms settings take.")


def check_times(value, what: str) -> list[str]:
    if not isinstance(value, list) or not value or len(value) > 48 \
            or not all(isinstance(t, str) and TIME_RE.fullmatch(t) for t in value):
        raise _bad(f"{what} must be a list of times HH:MM (24-hour clock).")
    return value


def check_rule(rule) -> dict:
    if not isinstance(rule, dict):
        raise _bad("A schedule rule must be an object.")
    kinds = {"every", "daily", "weekly", "monthly"} & rule.keys()
    if len(kinds) != 1:
        raise _bad("A schedule rule has exactly one of every, daily, weekly, monthly.")
    kind = kinds.pop()
    allowed = {"every": {"every", "unit"}, "daily": {"daily"}, "weekly": {"weekly", "at"},
               "monthly": {"monthly", "at"}}[kind]
    if not set(rule) <= allowed:
        raise _bad(f"A {kind} rule takes only the keys {', '.join(sorted(allowed))}.")
    if kind == "every":
        n, unit = rule["every"], rule.get("unit")
        if unit not in UNITS or isinstance(n, bool) or not isinstance(n, (int, float)) \
                or not MIN_INTERVAL_S <= n * UNITS[unit] <= MAX_INTERVAL_S:
            raise _bad("An interval is {\"every\": N, \"unit\": \"minutes\" or \"hours\"}, "
                       "at least a second and at most a year.")
    elif kind == "daily":
        check_times(rule["daily"], "daily")
    elif kind == "weekly":
        days = rule["weekly"]
        if not isinstance(days, list) or not days or not all(d in WEEKDAYS for d in days):
            raise _bad("weekly must be a list of weekdays (monday ... sunday).")
        check_times(rule.get("at"), "at")
    else:
        day = rule["monthly"]
        if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= 31:
            raise _bad("monthly must be a day of the month, 1 to 31.")
        check_times(rule.get("at"), "at")
    return rule


def check_schedule(value) -> list:
    if not isinstance(value, list) or len(value) > MAX_RULES:
        raise _bad(f"schedule must be a list of at most {MAX_RULES} rules.")
    for rule in value:
        check_rule(rule)
    return value


def check_hook(value, name: str) -> dict:
    allowed = {"command", "timeout"} | ({"continue_on_error"} if name == "pre" else set())
    if not isinstance(value, dict) or not set(value) <= allowed or not isinstance(value.get("command"), str) \
            or not value["command"].strip() or len(value["command"]) > 8192:
        raise _bad(f"The {name}-backup command must be {{\"command\": \"...\"}} with "
                   f"{', '.join(sorted(allowed - {'command'}))} optional.")
    timeout = value.get("timeout", HOOK_TIMEOUT_DEFAULT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= HOOK_TIMEOUT_MAX:
        raise _bad(f"A command's timeout is a number of seconds, at most {HOOK_TIMEOUT_MAX}.")
    if not isinstance(value.get("continue_on_error", False), bool):
        raise _bad("continue_on_error is true or false.")
    return value


def check_daemon_settings(settings: dict) -> None:
    """UsageError unless schedule, hooks, local_copy and bandwidth_limit (those present) are well formed."""
    if settings.get("schedule") is not None:
        check_schedule(settings["schedule"])
    hooks = settings.get("hooks")
    if hooks is not None:
        if not isinstance(hooks, dict) or not set(hooks) <= {"pre", "post"}:
            raise _bad("hooks is an object with pre and/or post.")
        for name, hook in hooks.items():
            check_hook(hook, name)
    local = settings.get("local_copy")
    if local is not None and (not isinstance(local, str) or not local.startswith("/") or len(local) > 4096):
        raise _bad("local_copy is an absolute folder path, or null for none.")
    limit = settings.get("bandwidth_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < MIN_BANDWIDTH):
        raise _bad(f"bandwidth_limit is bytes per second, at least {MIN_BANDWIDTH}, or null for none.")
