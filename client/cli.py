"""`ironcore`: the backup client's command line."""
import os
import sys

import click

from client import config
from client.backup import Backup
from client.progress import maybe_progress
from client.restore import Restore, resolve_snapshot, snapshot_name
from ironfs.cli.edge import print_json, run_cli
from ironfs.errors import UsageError
from ironfs.format.volume import Volume, is_volume
from ironfs.store.sizes import format_size

password_stdin = click.option("--password-stdin", is_flag=True, help="Read the set's password from standard input.")
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
@click.option("--to", "destination", required=True, help="Where the volume lives: file:///DIR.")
@click.option("--exclude", "excludes", multiple=True, help="A glob of names or paths to skip (repeatable).")
@password_stdin
def set_add(name, sources, destination, excludes, password_stdin):
    """Create backup set NAME and its encrypted volume."""
    config.check_name(name)
    if os.path.exists(config.set_path(name)):
        raise UsageError(f"A set named {name!r} exists already.", "Pick another name.")
    bset = config.BackupSet(name=name, sources=[os.path.abspath(s) for s in sources],
                            destination=config.check_destination(destination), excludes=list(excludes))
    secret = config.read_secret(password_stdin, confirm=True)
    if is_volume(bset.volume_dir):
        Volume(bset.volume_dir).unlock(secret)   # attach to an existing volume we hold the key of
        click.echo(f"Set {name} uses the existing volume at {bset.volume_dir}.")
    else:
        Volume.create(bset.volume_dir, {"private": secret}).close()
        click.echo(f"Set {name} created; its volume is {bset.volume_dir}.")
    config.save_set(bset)
    click.echo("Keep the password safe: without it nobody, including you, can restore this data.")


@set_group.command("list")
@json_flag
def set_list(as_json):
    """List the backup sets of this machine."""
    sets = config.list_sets()
    if as_json:
        print_json([vars(s) for s in sets])
        return
    for s in sets:
        click.echo(f"{s.name}\t{s.destination}\t{', '.join(s.sources)}")


def open_set_volume(name: str, password_stdin: bool, unlock: bool = True):
    bset = config.load_set(name)
    volume = Volume(bset.volume_dir)
    if unlock:
        volume.unlock(config.read_secret(password_stdin))
    return bset, volume


@cli.command()
@click.argument("name")
@json_flag
@password_stdin
def backup(name, as_json, password_stdin):
    """Back up set NAME now."""
    bset, volume = open_set_volume(name, password_stdin)
    progress = maybe_progress(not as_json, "backup", roots=bset.sources)
    cache_dir = os.path.join(config.home(), "cache")
    try:
        if progress:
            with progress:
                report = Backup(volume, bset, cache_dir, progress=progress).run()
        else:
            report = Backup(volume, bset, cache_dir).run()
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


@cli.command()
@click.argument("name")
@json_flag
def snapshots(name, as_json):
    """List the snapshots of set NAME."""
    _, volume = open_set_volume(name, False, unlock=False)
    snaps = volume.refresh().snapshots()
    volume.close()
    for s in snaps:
        s["name"] = snapshot_name(s["time_ns"])
    if as_json:
        print_json(snaps)
        return
    if not snaps:
        click.echo("No snapshots yet.")
    for s in snaps:
        click.echo(f"{s['seq']:>6}  {s['name']}  {s.get('host') or '':<16} {', '.join(s.get('sources', []))}")


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
    if as_json:
        print_json(report)
    else:
        click.echo(f"Restored snapshot {snap['seq']}: {report['files']} files, {report['dirs']} folders, "
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
@password_stdin
def login(url, account, fingerprint, password_stdin):
    """Log this machine in to a server, pinning its certificate."""
    from client import remote
    password = config.read_secret(password_stdin).decode()
    state = remote.login(url, account, password, fingerprint)
    if state["fingerprint"] and not fingerprint:
        click.echo(f"Trusting the server's certificate {state['fingerprint']} from now on.")
    click.echo(f"This machine is logged in to {state['url']} as {account}.")


def main():
    run_cli(cli)
