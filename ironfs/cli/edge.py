"""The edge between typed errors and people: one plain message and a next step,
no traceback, and the error's exit code. Shared by `ironfs` and `ironcore`."""
import json
import logging
import os
import sys

import click

from ironfs.errors import IroncoreError


def print_json(data) -> None:
    click.echo(json.dumps(data, indent=1, default=lambda o: o.hex() if isinstance(o, bytes) else str(o)))


def print_snapshots(snaps: list[dict], as_json: bool) -> None:
    """A set's snapshots, for `ironcore snapshots` and `ironfs snapshots` alike."""
    if as_json:
        print_json(snaps)
        return
    if not snaps:
        click.echo("No snapshots yet.")
        return
    width = max(len(s["name"]) for s in snaps)
    click.echo(f"{'SEQ':>6}  {'NAME (UTC)':<{width}}  {'HOST':<16} SOURCES")
    for s in snaps:
        click.echo(f"{s['seq']:>6}  {s['name']:<{width}}  {s.get('host') or '':<16} {', '.join(s.get('sources', []))}")


MOUNT_READ_TIMEOUT = 20.0   # seconds; docs/OPERATIONS.md "Mounting snapshots as folders"

read_timeout_option = click.option(
    "--read-timeout", type=click.FloatRange(min=1), default=MOUNT_READ_TIMEOUT, show_default=True,
    metavar="SECONDS", help="A read through the mount that waits longer than this for its data "
                            "(a server outage) fails with EIO.")


def setup_logging() -> None:
    level = os.environ.get("IRONCORE_LOG", "WARNING").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def run_cli(group: click.Group) -> None:
    setup_logging()
    try:
        group.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except IroncoreError as exc:
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(exc.hint, err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted; nothing half-written was kept.", err=True)
        sys.exit(130)
    sys.exit(0)
