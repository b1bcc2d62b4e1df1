"""`ironfs`: the server-side command line (volumes, and later the server itself)."""
import os
import sys

import click

from ironfs.cli.edge import print_json, run_cli
from ironfs.errors import UsageError
from ironfs.format.verify import verify_volume
from ironfs.format.volume import Volume, is_volume


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


def main():
    run_cli(cli)
