"""`ironcore`: the backup client's command line."""
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading

import click

from client import config, keys, remote, reports as run_reports, schedule
from client.backup import Backup
from client.remote_volume import RemoteVolume
from client.progress import maybe_progress
from client.restore import Restore
from ironfs.format.retention import Policy, weekday
from ironfs.format.snapshots import resolve_snapshot
from ironfs.cli.edge import print_json, print_snapshots, read_timeout_option, run_cli
from ironfs.errors import NotFound, UsageError
from ironfs.format.volume import Volume, is_volume
from ironfs.store.sets import check_set_name
from ironfs.store.sizes import format_size, parse_size

password_stdin = click.option("--password-stdin", is_flag=True,
                              help="Read the set's password from standard input (for a set on a server: "
                                   "the account password or the set's key).")
account_password_stdin = click.option("--password-stdin", is_flag=True,
                                      help="Read the account password from standard input.")
ALLOW_EMPTY_HELP = ("Back up a source that is missing, or empty where the last snapshot had files, as removed "
                    "(default: refuse, so an unmounted disk or a renamed share fails the run; "
                    "--refuse-empty-source in 'set edit' restores that).")
json_flag = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Ironcore backup client: back up sets of folders, list snapshots, restore."""


@cli.group("set")
def set_group():
    """Add and list backup sets."""


@set_group.command("add")
@click.argument("name")
@click.option("--source", "sources", multiple=True, required=True, type=click.Path(exists=True),
              help="A folder or file to back up (repeatable).")
@click.option("--to", "destination", default=None,
              help="file:///DIR for a local volume; left out, the server this machine is logged in to.")
@click.option("--exclude", "excludes", multiple=True, help="A glob of names or paths to skip (repeatable).")
@click.option("--allow-empty-source", is_flag=True, help=ALLOW_EMPTY_HELP)
@click.option("--schedule", "schedules", multiple=True,
              help="On a server: when the daemon runs the set, e.g. 'daily 02:00', 'weekly mon,fri 22:00', "
                   "'monthly 1 03:00', 'every 2 hours' (repeatable; see docs/DAEMON.md).")
@click.option("--private-key-file", type=click.File("rb"), default=None,
              help="On a server: encrypt with the key in this file, which the server never sees "
                   "(default: the account password, so the server can show files on the web).")
@password_stdin
def set_add(name, sources, destination, excludes, allow_empty_source, schedules, private_key_file, password_stdin):
    """Create backup set NAME and its encrypted volume."""
    check_set_name(name)
    sources = [os.path.abspath(s) for s in sources]
    if os.path.exists(config.set_path(name)):
        raise UsageError(f"A set named {name!r} exists already.", "Pick another name.")
    rules = [schedule.parse_rule(r) for r in schedules]
    if destination is None or destination.startswith(("https://", "http://")):
        add_server_set(name, sources, destination, list(excludes), private_key_file, password_stdin, rules,
                       allow_empty_source)
        return
    if rules:
        raise UsageError("Schedules are settings of sets on a server (the daemon runs those).",
                         "Log in to a server and leave --to out, or run 'ironcore backup' from cron.")
    bset = config.BackupSet(name=name, sources=sources, destination=config.check_destination(destination),
                            excludes=list(excludes), allow_empty_source=allow_empty_source)
    secret = config.read_secret(password_stdin, confirm=True)
    if is_volume(bset.volume_dir):
        Volume(bset.volume_dir).unlock(secret)   # attach to an existing volume we hold the key of
        click.echo(f"Set {name} uses the existing volume at {bset.volume_dir}.")
    else:
        Volume.create(bset.volume_dir, {"private": secret}).close()
        click.echo(f"Set {name} created; its volume is {bset.volume_dir}.")
    config.save_set(bset)
    click.echo("Keep the password safe: without it nobody, including you, can restore this data.")


def add_server_set(name, sources, destination, excludes, private_key_file, password_stdin, rules=(),
                   allow_empty_source=False):
    """The set's settings and a new volume go to the server; the key stays here too."""
    state = remote.load_state()
    if destination and destination.rstrip("/") != state["url"]:
        raise UsageError(f"This machine is logged in to {state['url']}, not {destination}.",
                         f"Log in there first with 'ironcore login --server {destination} --account NAME'.")
    if private_key_file is not None:
        slots = {"private": private_key_file.read().strip()}
        if len(slots["private"]) < 8:
            raise UsageError("The private key file must hold at least 8 bytes.")
    else:
        password = config.read_secret(password_stdin, prompt="Account password: ")
        remote.check_password(state, password.decode())
        slots = {"login": password}
    with tempfile.TemporaryDirectory(dir=config.home()) as tmp:
        volume = Volume.create(os.path.join(tmp, "volume"), slots)
        server = remote.connect(remote.INTERACTIVE_RETRY_SECONDS)
        server.call("PUT", f"/api/v1/sets/{name}", json={
            "settings": {"sources": sources, "excludes": excludes, **({"schedule": list(rules)} if rules else {}),
                         **({"allow_empty_source": True} if allow_empty_source else {})},
            "volume": volume.config}).json()
        keys.save_key(volume.id, volume.key)
        server.call("PUT", f"/api/v1/sets/{name}/machines/{config.host_name()}", json={"scheduled": True})
    click.echo(f"Set {name} created on {state['url']}; every machine logged in to {state['account']} sees it.")
    if private_key_file is not None:
        click.echo("Keep the key file safe: without it nobody, including you, can restore this data.")


def server_sets() -> list[dict]:
    """The sets on the server this machine is logged in to (none when it is not)."""
    try:
        remote.load_state()
    except UsageError:
        return []
    return remote.connect(remote.INTERACTIVE_RETRY_SECONDS).call("GET", "/api/v1/sets").json()


@set_group.command("list")
@json_flag
def set_list(as_json):
    """List the backup sets of this machine and of the server it is logged in to."""
    sets = [dict(vars(s), on_server=False) for s in config.list_sets()]
    host = config.host_name()
    for info in server_sets():
        sets.append({"name": info["name"], "sources": info["settings"].get("sources", []),
                     "excludes": info["settings"].get("excludes", []), "destination": remote.load_state()["url"],
                     "on_server": True, "keys": info["slots"],
                     "scheduled_here": info["machines"].get(host, {}).get("scheduled", False),
                     "schedule": [schedule.rule_text(r) for r in info["settings"].get("schedule") or []]})
    if as_json:
        print_json(sets)
        return
    for s in sets:
        here = ("  scheduled here" if s["scheduled_here"] else "  not scheduled here") if s["on_server"] else ""
        if s.get("schedule"):
            here += " (" + "; ".join(s["schedule"]) + ")"
        click.echo(f"{s['name']}\t{s['destination']}\t{', '.join(s['sources'])}{here}")


@set_group.command("edit")
@click.argument("name")
@click.option("--source", "sources", multiple=True, type=click.Path(exists=True),
              help="Replace the sources with these (repeatable).")
@click.option("--exclude", "excludes", multiple=True, help="Replace the exclude patterns with these (repeatable).")
@click.option("--allow-empty-source/--refuse-empty-source", default=None, help=ALLOW_EMPTY_HELP)
@click.option("--schedule-here/--no-schedule-here", default=None,
              help="Whether this computer runs the set's scheduled backups (each machine has its own switch).")
@click.option("--keep-daily", type=click.IntRange(0), help="Retention: the last snapshot of each of N days.")
@click.option("--keep-weekly", type=click.IntRange(0), help="... of each of N weeks (on --weekly-on).")
@click.option("--weekly-on", callback=lambda ctx, param, value: value and weekday(value),
              help="The weekday of the weekly rule, e.g. sat or saturday (default saturday).")
@click.option("--keep-monthly", type=click.IntRange(0), help="... of each of N months (on --monthly-on).")
@click.option("--monthly-on", type=click.IntRange(1, 28), help="The day of the monthly rule (default 1).")
@click.option("--keep-quarterly", type=click.IntRange(0), help="... of each of N quarters.")
@click.option("--keep-yearly", type=click.IntRange(0), help="... of each of N years.")
@click.option("--remove-overlap", is_flag=True, default=None,
              help="Drop a snapshot kept only by a finer rule when a coarser rule keeps a newer one.")
@click.option("--keep-within", type=click.IntRange(1), help="Simple retention: the snapshots of the last N days.")
@click.option("--keep-last", type=click.IntRange(1), help="Simple retention: the newest N snapshots.")
@click.option("--timezone", help="The set's time zone for retention days (default UTC).")
@click.option("--schedule", "schedules", multiple=True,
              help="Replace the schedule with these rules: 'daily 02:00[,13:30]', 'weekly mon,fri 22:00', "
                   "'monthly 1 03:00', 'every N minutes|hours' (repeatable).")
@click.option("--no-schedule", is_flag=True, help="Remove the schedule (the daemon then leaves the set alone).")
@click.option("--pre-command", help="Run this shell command before each backup ('' removes it).")
@click.option("--pre-timeout", type=click.FloatRange(0, 86400, min_open=True),
              help="Seconds the pre-backup command may take (default 600).")
@click.option("--pre-continue-on-error/--pre-stop-on-error", default=None,
              help="Back up even when the pre-backup command fails (default: skip the backup).")
@click.option("--post-command", help="Run this shell command after each backup ('' removes it).")
@click.option("--post-timeout", type=click.FloatRange(0, 86400, min_open=True),
              help="Seconds the post-backup command may take (default 600).")
@click.option("--local-copy", type=click.Path(file_okay=False),
              help="Also keep the set's packs and commits in this folder ('' stops it).")
@click.option("--bandwidth-limit", help="Upload at most this many bytes per second, e.g. 512K or 2M "
                                        "('unlimited' removes the limit).")
def set_edit(name, sources, excludes, allow_empty_source, schedule_here, timezone, schedules, no_schedule, pre_command, pre_timeout,
             pre_continue_on_error, post_command, post_timeout, local_copy, bandwidth_limit, **retention_flags):
    """Change the settings of set NAME (kept on the server for server sets)."""
    bset, info = find_set(name)
    settings = {}
    if sources:
        settings["sources"] = [os.path.abspath(s) for s in sources]
    if excludes:
        settings["excludes"] = list(excludes)
    if allow_empty_source is not None:
        settings["allow_empty_source"] = allow_empty_source
    policy = retention_policy(retention_flags, timezone)
    if policy is not None:
        settings["retention"] = policy
    daemon_settings = daemon_edits(info["settings"] if info else {}, schedules, no_schedule, pre_command,
                                   pre_timeout, pre_continue_on_error, post_command, post_timeout, local_copy,
                                   bandwidth_limit)
    settings.update(daemon_settings)
    if not bset.on_server:
        refuse_server_settings(bset, schedule_here, policy, daemon_settings)
        config.save_set(config.BackupSet(**{**vars(bset), **settings}))
    else:
        server = remote.connect(remote.INTERACTIVE_RETRY_SECONDS)
        if settings:
            server.call("PATCH", f"/api/v1/sets/{name}", json={"settings": settings})
        if schedule_here is not None:
            server.call("PUT", f"/api/v1/sets/{name}/machines/{config.host_name()}",
                        json={"scheduled": schedule_here})
    click.echo(f"Set {name} updated.")


def refuse_server_settings(bset, schedule_here, policy, daemon_settings) -> None:
    """A local set has no daemon settings or retention: say so, and what does the same job."""
    instead = []
    if schedule_here is not None or "schedule" in daemon_settings:
        instead.append(f"to run it on a schedule, call 'ironcore backup {bset.name}' from cron or a systemd timer")
    if "hooks" in daemon_settings:
        instead.append(f"for commands before or after it, run them around 'ironcore backup {bset.name}' "
                       "in the same script")
    if "local_copy" in daemon_settings:
        instead.append("for a second copy, add another local set with the same --source and another --to")
    if "bandwidth_limit" in daemon_settings:
        instead.append("a local folder needs no bandwidth limit")
    if policy is not None:
        instead.append(f"for retention, run after each backup: ironfs retention apply {bset.volume_dir} "
                       f"--policy '{json.dumps(policy)}' (docs/RETENTION.md)")
    if instead:
        raise UsageError(f"Set {bset.name} is a local set (a folder as destination); schedules, commands, local "
                         "copies, bandwidth limits, retention and --schedule-here are settings of sets on a server.",
                         "Instead: " + "; ".join(instead) + ".")


def daemon_edits(current: dict, schedules, no_schedule, pre_command, pre_timeout, pre_continue, post_command,
                 post_timeout, local_copy, bandwidth_limit) -> dict:
    """The settings the daemon's options of `set edit` change (the server checks them again)."""
    out = {}
    if schedules and no_schedule:
        raise UsageError("--schedule and --no-schedule contradict each other.")
    if schedules or no_schedule:
        out["schedule"] = [schedule.parse_rule(r) for r in schedules]
    hooks = {k: dict(v) for k, v in (current.get("hooks") or {}).items()}
    for which, command, timeout, extra in (("pre", pre_command, pre_timeout, pre_continue),
                                           ("post", post_command, post_timeout, None)):
        if command is None and timeout is None and extra is None:
            continue
        if command == "":
            hooks.pop(which, None)
            continue
        hook = hooks.setdefault(which, {})
        if command is not None:
            hook["command"] = command
        if "command" not in hook:
            raise UsageError(f"The set has no {which}-backup command.", f"Give one with --{which}-command.")
        if timeout is not None:
            hook["timeout"] = timeout
        if extra is not None:
            hook["continue_on_error"] = extra
        out["hooks"] = hooks
    if pre_command == "" or post_command == "":
        out["hooks"] = hooks or None
    if local_copy is not None:
        out["local_copy"] = os.path.abspath(local_copy) if local_copy else None
    if bandwidth_limit is not None:
        out["bandwidth_limit"] = parse_size(bandwidth_limit)
    return out


RETENTION_FLAGS = {"keep_daily": "daily", "keep_weekly": "weekly", "weekly_on": "weekly_on",
                   "keep_monthly": "monthly", "monthly_on": "monthly_on", "keep_quarterly": "quarterly",
                   "keep_yearly": "yearly", "remove_overlap": "remove_overlap", "keep_within": "within_days",
                   "keep_last": "last"}


def retention_policy(flags: dict, timezone: str | None) -> dict | None:
    """The policy the flags give (None if they give none), checked here as the server will."""
    policy = {RETENTION_FLAGS[k]: v for k, v in flags.items() if v is not None}
    if not policy:
        return None
    simple = {"within_days", "last"} & policy.keys()
    if simple and len(policy) > 1:
        raise UsageError("--keep-within and --keep-last are simple policies: give one of them alone, "
                         "or the --keep-daily ... rules.")
    if timezone:
        policy["timezone"] = timezone
    Policy(**policy)
    return policy


def find_set(name: str, retry_seconds: float = remote.INTERACTIVE_RETRY_SECONDS):
    """(BackupSet, server info or None): a set of this machine, else one on the server
    (tried for `retry_seconds` if it does not answer: less than a backup waits)."""
    try:
        return config.load_set(name), None
    except NotFound:
        try:
            state = remote.load_state()
        except UsageError:
            raise NotFound(f"There is no backup set named {name!r} on this machine.",
                           "List sets with 'ironcore set list' or add one with 'ironcore set add'.") from None
    check_set_name(name)
    info = remote.connect(retry_seconds).call("GET", f"/api/v1/sets/{name}").json()
    bset = config.BackupSet(name=name, sources=info["settings"].get("sources", []), destination=state["url"],
                            excludes=info["settings"].get("excludes", []),
                            allow_empty_source=info["settings"].get("allow_empty_source", False))
    return bset, info


def open_set_volume(name: str, password_stdin: bool, unlock: bool = True,
                    retry_seconds: float = remote.INTERACTIVE_RETRY_SECONDS):
    bset, info = find_set(name, retry_seconds)
    if bset.on_server:
        volume = RemoteVolume(remote.connect(retry_seconds), name, info)
        if unlock:
            volume.open_key(lambda: config.read_secret(password_stdin, prompt="Account password or set key: "))
        return bset, volume
    volume = Volume(bset.volume_dir)
    if unlock:
        volume.unlock(config.read_secret(password_stdin))
    return bset, volume


@cli.command()
@click.argument("name")
@json_flag
@password_stdin
@click.option("--reason", default="manual", hidden=True,
              type=click.Choice(["manual", "schedule", "interval", "missed"]), help="Who started the run (the daemon).")
def backup(name, as_json, password_stdin, reason):
    """Back up set NAME now. A set on a server runs its pre- and post-backup
    commands, keeps its local copy and bandwidth limit, and sends its report;
    SIGTERM stops it at the next safe point."""
    bset, info = find_set(name, remote.RETRY_SECONDS)   # scheduled runs wait out a server restart
    if bset.on_server:
        backup_server_set(name, bset, info, as_json, password_stdin, reason)
        return
    bset, volume = open_set_volume(name, password_stdin)
    progress = maybe_progress(not as_json, "backup", roots=bset.sources)
    cache_dir = os.path.join(config.home(), "cache")
    try:
        backup_run = Backup(volume, bset, cache_dir, progress=progress)   # before the progress display's threads
        with progress or contextlib.nullcontext():
            report = backup_run.run()
    finally:
        volume.close()
    if as_json:
        print_json(report)
        return
    click.echo(f"Snapshot {report['snapshot']}: {report['files_new']} new, {report['files_changed']} changed, "
               f"{report['files_unchanged']} unchanged files, {report['deleted']} removed; "
               f"read {format_size(report['bytes_read'])}, stored {format_size(report['bytes_stored'])} "
               f"in {report['duration_s']:.1f} s.")
    for err in report["errors"]:
        click.echo(f"  not backed up: {err['path']}: {err['error']}", err=True)


def backup_server_set(name, bset, info, as_json, password_stdin, reason):
    from client.runner import run_server_set
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = remote.connect()
    progress = maybe_progress(not as_json, "backup", roots=bset.sources)
    def read_secret():
        if reason != "manual" and not os.environ.get("IRONCORE_PASSWORD"):
            raise UsageError(f"This machine does not keep the key of set {name}, and a scheduled run cannot ask "
                             "for it.", f"Run 'ironcore backup {name}' once by hand with the password or key (it is "
                                        "kept from then on), or log in again with 'ironcore login'.")
        return config.read_secret(password_stdin, prompt="Account password or set key: ")

    try:
        with progress or contextlib.nullcontext():
            report, engine, error = run_server_set(server, name, bset, info, read_secret, reason, stop, progress)
    finally:
        server.close()
    if as_json:
        print_json({**engine, **report})
    elif report["snapshot"]:
        click.echo(f"Snapshot {report['snapshot']}: {report['files_new']} new, {report['files_changed']} changed, "
                   f"{report['files_unchanged']} unchanged files, {report['files_deleted']} removed; "
                   f"read {format_size(report['bytes_read'])}, sent {format_size(report['bytes_sent'])} "
                   f"in {report['duration_s']:.1f} s.")
    if not as_json:
        for text in run_reports.details({**report, "error": None}):
            click.echo(text, err=True)
        for text in report.get("warnings", []):
            click.echo(f"  warning: {text}", err=True)
    if error is not None:
        raise error


@cli.command()
@click.argument("name")
@json_flag
def snapshots(name, as_json):
    """List the snapshots of set NAME."""
    _, volume = open_set_volume(name, False, unlock=False)
    snaps = volume.refresh().snapshots()
    volume.close()
    print_snapshots(snaps, as_json)


@cli.command()
@click.argument("name")
@click.option("--snapshot", default="latest", show_default=True, help="Snapshot number, name, or 'latest'.")
@click.option("--path", default=None, help="Restore only this path of the snapshot (as listed, e.g. home/me/doc).")
@click.option("--to", "target", required=True, type=click.Path(file_okay=False), help="Folder to restore into.")
@json_flag
@password_stdin
def restore(name, snapshot, path, target, as_json, password_stdin):
    """Restore set NAME (or a path in it) into a folder."""
    _, volume = open_set_volume(name, password_stdin)
    try:
        snap = resolve_snapshot(volume.refresh(), snapshot)
        progress = maybe_progress(not as_json, "restore")
        restorer = Restore(volume, snap["seq"], target, progress=progress)
        if progress:
            with progress:
                report = restorer.run(path)
        else:
            report = restorer.run(path)
    finally:
        volume.close()
    report["snapshot"] = snap["seq"]
    print_restore(report, target, as_json)


def print_restore(report: dict, target: str, as_json: bool) -> None:
    """A restore's outcome (restore, decrypt); exit 1 if anything could not be restored."""
    if as_json:
        print_json(report)
    else:
        click.echo(f"Restored snapshot {report['snapshot']}: {report['files']} files, {report['dirs']} folders, "
                   f"{format_size(report['bytes'])} into {os.path.abspath(target)}.")
        for err in report["errors"]:
            click.echo(f"  FAILED: {err['path']}: {err['error']}", err=True)
    if report["errors"]:
        click.echo(f"error: {len(report['errors'])} entries could not be restored.", err=True)
        sys.exit(1)


@cli.command()
@click.option("--server", "url", required=True, help="The server, https://HOST:PORT.")
@click.option("--account", required=True, help="Your account name on that server.")
@click.option("--fingerprint", default=None, help="The SHA-256 fingerprint the administrator gave you.")
@account_password_stdin
def login(url, account, fingerprint, password_stdin):
    """Log this machine in to a server, pinning its certificate."""
    password = config.read_secret(password_stdin, prompt="Account password: ").decode()
    state = remote.login(url, account, password, fingerprint)
    if state["fingerprint"] and not fingerprint:
        click.echo(f"Trusting the server's certificate {state['fingerprint']} from now on.")
    click.echo(f"This machine is logged in to {state['url']} as {account}.")
    taken, rewrapped = keys.sync_login_slots(state, password)
    for name in taken:
        click.echo(f"Set {name}: its key is on this machine now.")
    for name in rewrapped:
        click.echo(f"Set {name}: its 'login' key slot now opens with the current password.")


@cli.command()
@click.option("--password-stdin", is_flag=True, help="Read the current and the new password, one line each.")
def passwd(password_stdin):
    """Change the account password; the sets' 'login' key slots are re-wrapped at once."""
    old = config.read_secret(password_stdin, prompt="Current password: ").decode()
    new = config.read_secret(password_stdin, confirm=True, prompt="New password: ").decode()
    result = remote.change_password(remote.load_state(), old, new)
    click.echo("Password changed." + (f" Key slots re-wrapped: {', '.join(result['rewrapped'])}."
                                      if result["rewrapped"] else ""))
    for name in result["stale"]:
        click.echo(f"  set {name}: its login slot did not open with the old password; "
                   "run 'ironcore login' on a machine that holds its key.", err=True)


@cli.command()
@click.argument("name")
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--foreground", is_flag=True, help="Stay in the foreground (default: detach once mounted).")
@click.option("--allow-other", is_flag=True, help="Let other users in too (the stored modes and POSIX ACLs still apply).")
@read_timeout_option
@password_stdin
def mount(name, mountpoint, foreground, allow_other, read_timeout, password_stdin):
    """Mount set NAME read-only at MOUNTPOINT (latest and snapshots/<UTC name>),
    decrypting here with the set's key; works for private-key sets too."""
    from ironfs.fuse.snapshot_fs import SnapshotFS, mount_and_serve
    bset, volume = open_set_volume(name, password_stdin)   # the key is checked now
    if bset.on_server:   # opened again where it is served: HTTP connections must not cross a fork
        volume.close()
        volume.server.close()

    def make_fs():
        served = volume
        if bset.on_server:
            served = open_set_volume(name, password_stdin=False)[1]
            served.server.retry_seconds = read_timeout   # a read gives up after that, retries included
        return SnapshotFS({name: served}, read_timeout)

    def log_to_home():
        import logging
        handler = logging.FileHandler(os.path.join(config.home(), "mount.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
        logging.getLogger().addHandler(handler)
    mount_and_serve(make_fs, mountpoint, foreground, allow_other, log_to_home)


@cli.command("seed-load")
@click.argument("name")
@click.option("--to", "folder", required=True, type=click.Path(file_okay=False),
              help="A new or empty folder (a removable disk) for the seed.")
@json_flag
@password_stdin
def seed_load(name, folder, as_json, password_stdin):
    """Write the first backup of server set NAME to a folder instead of sending it;
    the administrator loads it with 'ironfs import-seed ACCOUNT NAME FOLDER'."""
    from client.seed import seed_load as load
    bset, info = find_set(name, remote.RETRY_SECONDS)
    if not bset.on_server:
        raise UsageError(f"Set {name} is a local set; a seed is for a set on a server.",
                         f"A local set's backups go straight to its folder: run 'ironcore backup {name}'.")
    server = remote.connect()
    progress = maybe_progress(not as_json, "seed", roots=bset.sources)
    try:
        with progress or contextlib.nullcontext():
            report = load(server, name, bset, info, folder,
                          lambda: config.read_secret(password_stdin, prompt="Account password or set key: "), progress)
    finally:
        server.close()
    if as_json:
        print_json(report)
        return
    click.echo(f"Seed of {name} written to {report['folder']}: {report['files_new']} files, "
               f"{format_size(report['bytes_stored'])}. Send the folder to the administrator, who runs "
               f"'ironfs import-seed ACCOUNT {name} FOLDER'.")
    for err in report["errors"]:
        click.echo(f"  not backed up: {err['path']}: {err['error']}", err=True)


@cli.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--to", "target", required=True, type=click.Path(file_okay=False), help="Folder to restore into.")
@click.option("--snapshot", default="latest", show_default=True, help="Snapshot number, name, or 'latest'.")
@click.option("--path", default=None, help="Restore only this path of the snapshot.")
@json_flag
@password_stdin
def decrypt(folder, target, snapshot, path, as_json, password_stdin):
    """Restore from a volume FOLDER without the server: an export ('ironfs export'),
    a set's local copy or a seed, with the set's key kept here or the secret given."""
    from client.decrypt import decrypt as run
    report = run(folder, target, snapshot, path,
                 lambda: config.read_secret(password_stdin, prompt="Account password or set key: "),
                 maybe_progress(not as_json, "restore"))
    print_restore(report, target, as_json)


@cli.command("reports")
@click.argument("name")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000), help="How many, newest last.")
@json_flag
def reports_command(name, limit, as_json):
    """Show the reports of the last runs of set NAME (kept on the server)."""
    check_set_name(name)
    if os.path.exists(config.set_path(name)):
        raise UsageError(f"Set {name} is a local set; only sets on a server keep their runs' reports.",
                         f"'ironcore backup {name}' prints its run's report (all of it with --json); keep that, "
                         "e.g. with '>> backup.log' in the cron job.")
    server = remote.connect(remote.INTERACTIVE_RETRY_SECONDS)
    try:
        found = server.call("GET", f"/api/v1/sets/{name}/reports", params={"limit": limit}).json()
    finally:
        server.close()
    if as_json:
        print_json(found)
        return
    if not found:
        click.echo(f"No runs of {name} reported yet.")
    for report in found:
        click.echo(run_reports.line(report))
        if report["status"] != "ok":
            for text in run_reports.details(report):
                click.echo(text)


@cli.command()
@click.option("--stop", is_flag=True, help="Stop the daemon that runs for this $IRONCORE_HOME, after its "
                                           "running backups reach a safe point.")
@click.option("--poll-seconds", default=60.0, show_default=True, type=click.FloatRange(0.2, 3600),
              help="How often the sets' settings are read from the server (changes apply from then on).")
@click.option("--log-size", default=1 << 20, show_default=True, type=click.IntRange(512),
              help="The daemon log (IRONCORE_HOME/logs/daemon.log) rotates at this many bytes; five old ones kept.")
@click.option("--stop-timeout", default=120.0, show_default=True, type=click.FloatRange(1, 86400),
              help="Seconds a stopping daemon waits for a running backup to reach a safe point before killing it.")
def daemon(stop, poll_seconds, log_size, stop_timeout):
    """Run the sets scheduled on this machine, on their schedules, until stopped
    (SIGTERM, or 'ironcore daemon --stop'). Runs in the foreground: systemd or a
    terminal keeps it; see deploy/systemd/ironcore.service."""
    from client import daemon as daemon_mod
    if stop:
        pid = daemon_mod.stop_daemon(stop_timeout)
        click.echo(f"Daemon {pid} stopped.")
        return
    daemon_mod.run_daemon(poll_seconds=poll_seconds, log_size=log_size, stop_timeout=stop_timeout)


def main():
    run_cli(cli)


if __name__ == "__main__":   # `python -m client.cli`: how the daemon starts each run
    main()
