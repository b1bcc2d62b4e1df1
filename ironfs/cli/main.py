"""`ironfs`: the server-side command line (volumes, and later the server itself)."""
import os
import sys

import click

from ironfs.cli.edge import print_json, run_cli
from ironfs.errors import UsageError
from ironfs.format.verify import verify_volume
from ironfs.format.volume import Volume, is_volume
from ironfs.store.dataroot import DataRoot
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


@cli.command()
@click.argument("target")
@click.option("--read-data", is_flag=True, help="Also decrypt every blob and check every file's hash (needs the key).")
@click.option("--password-stdin", is_flag=True, help="Read the set's password or key from standard input.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(target, read_data, password_stdin, as_json):
    """Check a volume folder: structure, pack hashes, catalog against log, and with
    --read-data every blob and file content."""
    if not is_volume(target):
        raise UsageError(f"{target} is not a volume folder.",
                         "Give the folder that holds volume.json (account/set forms come with the server).")
    volume = Volume(target)
    if read_data:
        volume.unlock(read_password(password_stdin))
    report = verify_volume(volume, read_data=read_data)
    volume.close()
    if as_json:
        print_json(report)
    else:
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
    if report["errors"]:
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
def serve(data_root, listen, plain_http):
    """Serve the sync API over TLS until SIGTERM."""
    from ironfs.server.serve import serve as run_server
    root = DataRoot(data_root)
    run_server(root, listen, plain_http, announce=lambda line: click.echo(line, nl=True) or sys.stdout.flush())


def main():
    run_cli(cli)
