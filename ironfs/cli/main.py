"""`ironfs`: the server-side command line (volumes, and later the server itself)."""
import json
import os
import sys
from importlib.metadata import entry_points

import click

from ironfs.cli.edge import print_json, print_snapshots, read_timeout_option, run_cli
from ironfs.errors import UsageError, WrongSecret
from ironfs.format.verify import verify_volume
from ironfs.format.volume import Volume, is_volume
from ironfs.store.accounts import check_account_name
from ironfs.store.dataroot import DataRoot
from ironfs.store.sets import LEASE_SECONDS, SetStore
from ironfs.format.snapshots import snapshot_name
from ironfs.store.sizes import format_size, parse_size

data_root_option = click.option("--data-root", envvar="IRONFS_DATA_ROOT", required=True,
                                type=click.Path(file_okay=False),
                                help="The server's data root (or IRONFS_DATA_ROOT).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Ironcore backup server tools."""


def read_password(password_stdin: bool) -> bytes:
    if password_stdin:
        line = sys.stdin.buffer.readline().rstrip(b"\r\n")
        if line:
            return line
        raise UsageError("--password-stdin was given but standard input held no password.")
    if os.environ.get("IRONFS_PASSWORD"):
        return os.environ["IRONFS_PASSWORD"].encode()
    raise UsageError("Reading file contents needs the set's password or key.",
                     "Give it with --password-stdin or the IRONFS_PASSWORD environment variable.")


def verify_one(volume: Volume, read_data: bool, as_json: bool) -> dict:
    report = verify_volume(volume, read_data=read_data)
    volume.close()
    if as_json:
        return report
    click.echo(f"{report['volume']}: {report['commits']} commits, {report['packs']} packs, "
               f"{report['blobs']} blobs" + (f", {report['contents_checked']} contents read" if read_data else ""))
    for w in report["warnings"]:
        click.echo(f"  note: {w}")
    for e in report["errors"]:
        click.echo(f"  ERROR: {e}")
    for a in report["affected"]:
        until = a["until_snapshot"] or "now"
        click.echo(f"  damaged file: {a['path']} (snapshots {a['from_snapshot']} to {until})")
    click.echo("clean" if not report["errors"] else f"{len(report['errors'])} problems found")
    return report


@cli.command()
@click.argument("target")
@click.argument("set_name", required=False)
@click.option("--data-root", envvar="IRONFS_DATA_ROOT", type=click.Path(file_okay=False),
              help="The server's data root, for the ACCOUNT [SET] form (or IRONFS_DATA_ROOT).")
@click.option("--read-data", is_flag=True, help="Also decrypt every blob and check every file's hash (needs the key).")
@click.option("--password-stdin", is_flag=True, help="Read the set's password or key from standard input.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(target, set_name, data_root, read_data, password_stdin, as_json):
    """Check a volume folder (TARGET) or the sets of account TARGET on the server
    (all, or SET_NAME): structure, pack hashes, catalog against log, and with
    --read-data every blob and file content."""
    if is_volume(target) and set_name is None:
        dirs = [target]
    else:
        if not data_root:
            raise UsageError(f"{target} is not a volume folder.",
                             "Give a folder that holds volume.json, or an account (and set) with --data-root.")
        sets = SetStore(DataRoot(data_root))
        root_account = check_account_name(target)
        dirs = [sets.volume_dir(root_account, n) for n in ([set_name] if set_name else sets.names(root_account))]
        if set_name:
            sets.require(root_account, set_name)
    secret = read_password(password_stdin) if read_data else None
    reports = []
    for folder in dirs:
        volume = Volume(folder)
        if secret is not None:
            volume.unlock(secret)
        reports.append(verify_one(volume, read_data, as_json))
    if as_json:
        print_json(reports[0] if len(reports) == 1 and set_name is None and is_volume(target) else reports)
    if any(r["errors"] for r in reports):
        sys.exit(1)


def new_password(password_stdin: bool) -> tuple[str, bool]:
    """(password, generated): from stdin, a terminal prompt, or made up and shown once."""
    if password_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise UsageError("--password-stdin was given but standard input held no password.")
        return line, False
    if sys.stdin.isatty():
        return click.prompt("Password", hide_input=True, confirmation_prompt=True), False
    import secrets
    return secrets.token_urlsafe(18), True


@cli.command()
@data_root_option
@click.option("--admin", "admin_name", default="admin", show_default=True, help="Name of the admin account.")
@click.option("--password-stdin", is_flag=True, help="Read the admin password from standard input.")
def init(data_root, admin_name, password_stdin):
    """Make a new data root: settings, a self-signed TLS certificate, an admin account."""
    password, generated = new_password(password_stdin)
    root = DataRoot.init(data_root, admin_name, password)
    click.echo(f"Data root {root.path} is ready.")
    click.echo(f"TLS certificate SHA-256 fingerprint (clients pin it): {root.fingerprint()}")
    if generated:
        click.echo(f"Admin account {admin_name!r}, password (shown only now): {password}")
    root.close()


@cli.group()
def account():
    """Add, list and change accounts."""


@account.command("add")
@click.argument("name")
@data_root_option
@click.option("--quota", default="unlimited", show_default=True, help="Storage quota, e.g. 500M, 10G, 1T.")
@click.option("--admin", is_flag=True, help="Make it an admin account.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def account_add(name, data_root, quota, admin, password_stdin):
    """Add account NAME."""
    root = DataRoot(data_root)
    size = parse_size(quota)
    password, generated = new_password(password_stdin)
    root.accounts.add(name, password, size, admin)
    click.echo(f"Account {name} added (quota {format_size(size)}).")
    if generated:
        click.echo(f"Password (shown only now): {password}")
    root.close()


@account.command("list")
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def account_list(data_root, as_json):
    """List the accounts."""
    root = DataRoot(data_root)
    accounts = root.accounts.list()
    root.close()
    if as_json:
        print_json(accounts)
        return
    for a in accounts:
        click.echo(f"{a['name']:<24} quota {format_size(a['quota']):<12} {'admin' if a['admin'] else ''}")


@account.command("passwd")
@click.argument("name")
@data_root_option
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input.")
def account_passwd(name, data_root, password_stdin):
    """Set the password of account NAME."""
    root = DataRoot(data_root)
    password, generated = new_password(password_stdin)
    root.accounts.set_password(name, password)
    click.echo(f"Password of {name} changed." + (f" New password (shown only now): {password}" if generated else ""))
    if SetStore(root).names(name):
        click.echo(f"The 'login' key slots of {name}'s sets still open with the old password; they are re-wrapped "
                   f"when {name} next runs 'ironcore login' on a machine that holds the sets' keys. "
                   f"('ironcore passwd' changes the password and re-wraps at once.)")
    root.close()


@account.command("quota")
@click.argument("name")
@click.argument("size")
@data_root_option
def account_quota(name, size, data_root):
    """Set the quota of account NAME (e.g. 10G, or 'unlimited')."""
    root = DataRoot(data_root)
    quota = parse_size(size)
    root.accounts.set_quota(name, quota)
    click.echo(f"Quota of {name} is now {format_size(quota)}.")
    root.close()


@account.command("remove")
@click.argument("name")
@data_root_option
@click.option("--yes", is_flag=True, help="Confirm: the account stops at once; its data stays until 'ironfs gc'.")
def account_remove(name, data_root, yes):
    """Remove account NAME (its data stays until 'ironfs gc')."""
    if not yes:
        raise UsageError(f"Removing {name} stops it at once.", "Add --yes to confirm; its data stays until 'ironfs gc'.")
    root = DataRoot(data_root)
    root.accounts.remove(name)
    click.echo(f"Account {name} removed; its data stays until 'ironfs gc'.")
    root.close()


@cli.command()
@data_root_option
@click.option("--listen", default="0.0.0.0:8443", show_default=True, help="HOST:PORT to serve on (port 0: any free).")
@click.option("--plain-http", is_flag=True, help="Serve without TLS (loopback addresses only).")
@click.option("--lease-seconds", default=LEASE_SECONDS, show_default=True, type=click.IntRange(1, 86400),
              help="How long a backup's hold on its set outlives the last sign of life from its machine.")
@click.option("--read-only", is_flag=True, help="Serve restores only (a replica's data root): no backups, no changes.")
def serve(data_root, listen, plain_http, lease_seconds, read_only):
    """Serve the sync API over TLS until SIGTERM."""
    from ironfs.server.serve import serve as run_server
    root = DataRoot(data_root)
    run_server(root, listen, plain_http, lease_seconds=lease_seconds, read_only=read_only,
               announce=lambda line: click.echo(line, nl=True) or sys.stdout.flush())


def admin_sets(data_root: str, account_name: str) -> SetStore:
    root = DataRoot(data_root)
    root.accounts.get(check_account_name(account_name))
    return SetStore(root)


@cli.command("sets")
@click.argument("account_name")
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def sets_command(account_name, data_root, as_json):
    """List the backup sets of ACCOUNT_NAME."""
    sets = admin_sets(data_root, account_name)
    rows = []
    for name in sets.names(account_name):
        info = sets.info(account_name, name)
        snaps = sets.volume(account_name, name).refresh().snapshots()
        rows.append({"name": name, "snapshots": len(snaps), "last_backup_ns": snaps[-1]["time_ns"] if snaps else None,
                     "slots": [s["name"] for s in info["volume"]["slots"]], "settings": info["settings"],
                     "machines": info["machines"]})
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo(f"{account_name} has no sets.")
    for r in rows:
        last = snapshot_name(r["last_backup_ns"]) if r["last_backup_ns"] else "never"
        click.echo(f"{r['name']:<24} {r['snapshots']:>5} snapshots  last {last}  keys: {', '.join(r['slots'])}")
    click.echo(f"usage {format_size(sets.usage(account_name))}")


@cli.command("snapshots")
@click.argument("account_name")
@click.argument("set_name")
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def snapshots_command(account_name, set_name, data_root, as_json):
    """List the snapshots of set SET_NAME of ACCOUNT_NAME."""
    snaps = admin_sets(data_root, account_name).volume(account_name, set_name).refresh().snapshots()
    print_snapshots(snaps, as_json)


@cli.command()
@click.argument("account_name")
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False))
@data_root_option
@click.option("--foreground", is_flag=True, help="Stay in the foreground (default: detach once mounted).")
@click.option("--allow-other", is_flag=True, help="Let other users in too (the stored modes and POSIX ACLs still apply).")
@read_timeout_option
@click.option("--password-stdin", is_flag=True,
              help="Read the account password or a set's key from standard input, to read file contents.")
def mount(account_name, mountpoint, data_root, foreground, allow_other, read_timeout, password_stdin):
    """Mount the sets of ACCOUNT_NAME read-only at MOUNTPOINT: <set>/latest and
    <set>/snapshots/<UTC name>. Without a secret (stdin or IRONFS_PASSWORD) names
    and sizes are shown but file contents cannot be read."""
    from ironfs.fuse.snapshot_fs import SnapshotFS, mount_and_serve
    from ironfs.server.serve import log_to_data_root
    sets = admin_sets(data_root, account_name)
    secret = None
    if password_stdin or os.environ.get("IRONFS_PASSWORD"):
        secret = read_password(password_stdin)
    volumes, opened = {}, []
    for name in sets.names(account_name):
        volume = Volume(sets.volume_dir(account_name, name))
        if secret is not None:
            try:
                volume.unlock(secret)
                opened.append(name)
            except WrongSecret:
                pass
        volumes[name] = volume
    if secret is not None and not opened and volumes:
        raise WrongSecret("The secret opens none of the account's sets.",
                          "Give the account password (login key slots) or a set's private key.")
    click.echo(f"Mounting {len(volumes)} sets of {account_name} at {mountpoint}"
               + (f"; contents readable for: {', '.join(opened)}" if opened else "; names and sizes only") + ".")
    mount_and_serve(lambda: SnapshotFS(volumes, read_timeout), mountpoint, foreground, allow_other,
                    lambda: log_to_data_root(sets.root))


@cli.group()
def retention():
    """Apply the sets' retention policies."""


@retention.command("apply")
@click.argument("target")
@click.argument("set_name", required=False)
@click.option("--data-root", envvar="IRONFS_DATA_ROOT", type=click.Path(file_okay=False),
              help="The server's data root, for the ACCOUNT SET form (or IRONFS_DATA_ROOT).")
@click.option("--policy", "policy_json", default=None,
              help='For a volume folder: the policy as JSON, e.g. \'{"daily": 7, "weekly": 4}\' (RETENTION.md).')
@click.option("--dry-run", is_flag=True, help="Show what would go; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def retention_apply(target, set_name, data_root, policy_json, dry_run, as_json):
    """List every snapshot of set SET_NAME of account TARGET (or of the volume
    folder TARGET) with the rules that keep it or why it goes, and forget those
    that go (a `forget` commit; gc frees their data)."""
    from ironfs.store import retention as policy
    if is_volume(target) and set_name is None:
        if not policy_json:
            raise UsageError("A volume folder holds no policy.", "Give one with --policy JSON (see RETENTION.md).")
        try:
            settings = json.loads(policy_json)
        except ValueError:
            raise UsageError("--policy is not JSON.") from None
        report = policy.apply_to_volume(Volume(target), settings, dry_run=dry_run)
    else:
        if not data_root or not set_name:
            raise UsageError("Give ACCOUNT SET with --data-root, or a volume folder with --policy.")
        report = policy.apply(admin_sets(data_root, target), target, set_name, dry_run=dry_run)
    if as_json:
        print_json(report)
        return
    for v in report["snapshots"]:
        why = ("keep: " + ", ".join(v["kept_by"])) if v["keep"] else ("goes: " + v["reason"])
        click.echo(f"{v['seq']:>6}  {snapshot_name(v['time_ns'])}  {why}")
    gone = [v for v in report["snapshots"] if not v["keep"]]
    if dry_run:
        click.echo(f"{len(gone)} snapshots would go (dry run: nothing changed).")
    else:
        click.echo(f"{len(gone)} snapshots forgotten" + (f" in commit {report['commit']}." if gone else "."))


@cli.command()
@click.argument("account_name")
@click.argument("set_name", required=False)
@data_root_option
@click.option("--dry-run", is_flag=True, help="Show what would be freed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def gc(account_name, set_name, data_root, dry_run, as_json):
    """Free the data that no listed snapshot uses, in the sets of ACCOUNT_NAME (all, or SET_NAME)."""
    from ironfs.store.gc import collect
    sets = admin_sets(data_root, account_name)
    names = [set_name] if set_name else sets.names(account_name)
    reports = [collect(sets, account_name, name, dry_run) for name in names]
    if as_json:
        print_json(reports)
        return
    for r in reports:
        click.echo(f"{r['set']}: {len(r['dropped'])} packs dropped, {len(r['repacked'])} rewritten into "
                   f"{len(r['new_packs'])} ({len(r['damaged_retired'])} damaged and healed), "
                   f"{len(r['orphans'])} orphan packs removed, {r['dead_contents']} file versions' data released"
                   + (" (dry run: nothing changed)" if dry_run else f", {format_size(max(r['bytes_freed'], 0))} freed"))
    click.echo(f"usage of {account_name}: {format_size(sets.usage(account_name))}")


@cli.command("import-seed")
@click.argument("account_name")
@click.argument("set_name")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def import_seed_command(account_name, set_name, folder, data_root, as_json):
    """Load the seed in FOLDER (made by 'ironcore seed-load SET_NAME --to FOLDER')
    as the first backup of set SET_NAME of ACCOUNT_NAME; the client's next backup
    over the network sends only what changed since."""
    from ironfs.store.seed import import_seed
    sets = admin_sets(data_root, account_name)
    report = import_seed(sets, account_name, set_name, folder, sets.root.accounts.get(account_name)["quota"])
    if as_json:
        print_json(report)
        return
    click.echo(f"Seed imported into {account_name}/{set_name}: {report['commits']} commits, {report['packs']} packs, "
               f"{format_size(report['bytes'])}; the set has {report['snapshots']} snapshots.")


@cli.command("export")
@click.argument("account_name")
@click.argument("set_name")
@click.argument("folder", type=click.Path(file_okay=False))
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def export_command(account_name, set_name, folder, data_root, as_json):
    """Copy set SET_NAME of ACCOUNT_NAME into FOLDER (new or empty), e.g. on a
    removable disk for a huge restore: the owner runs 'ironcore decrypt FOLDER
    --to OUT' with the set's key. The copy holds ciphertext only."""
    from ironfs.store.seed import export
    report = export(admin_sets(data_root, account_name), account_name, set_name, folder)
    if as_json:
        print_json(report)
        return
    click.echo(f"Exported {account_name}/{set_name} to {report['folder']}: {report['snapshots']} snapshots, "
               f"{report['packs']} packs, {format_size(report['bytes'])} (verified).")


def add_plugins(group: click.Group) -> None:
    """Commands the other packages of the distribution add (`ironfs replica`), found by
    entry point so that this package imports none of them."""
    for entry in entry_points(group="ironfs.commands"):
        group.add_command(entry.load(), entry.name)


def main():
    add_plugins(cli)
    run_cli(cli)
