"""`ironfs replica …`: run a replica, show where it is, promote it, and (on a
source) make the token a replica uses. Added to `ironfs` as a plugin (entry
point "ironfs.commands"), so the server package imports nothing of this one."""
import datetime
import os
import sys
import time

import click
import trio

from ironfs.cli.edge import print_json
from ironfs.errors import IroncoreError, UsageError
from ironfs.store.dataroot import DataRoot
from replication.config import load_sources
from replication.follower import run_replica
from replication.mirror import SourceMirror, sources_dir
from replication.state import ReplicaState

replica_root_option = click.option("--data-root", envvar="IRONFS_REPLICA_ROOT", required=True,
                                   type=click.Path(file_okay=False),
                                   help="The replica's data root (or IRONFS_REPLICA_ROOT).")


@click.group()
def replica():
    """A near-real-time copy of one or more servers."""


def lock_root(root: str):
    """One `replica run` per replica root: a second would apply commits twice."""
    import fcntl
    os.makedirs(root, exist_ok=True)
    f = open(os.path.join(root, "replica.lock"), "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise IroncoreError(f"Another 'ironfs replica run' uses {root}.", "Stop it first, or use another folder.") \
            from None
    return f


@replica.command("run")
@replica_root_option
@click.option("--source", "urls", multiple=True, help="A server to follow (repeatable; all of --config if none).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML file with a [sources.NAME] table (url, token or user+password, fingerprint) per source.")
@click.option("--delete-delay", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Days to keep packs a source's gc removed (protection against a compromised source).")
def run(data_root, urls, config_path, delete_delay):
    """Follow the sources until SIGTERM; restarts resume where it stopped."""
    sources = load_sources(config_path, urls)
    lock = lock_root(data_root)
    click.echo(f"replicating {', '.join(s.url for s in sources)} into {os.path.abspath(data_root)}")
    sys.stdout.flush()
    try:
        trio.run(run_replica, os.path.abspath(data_root), sources, delete_delay)
    finally:
        lock.close()


def promoted_sources(root: str) -> set[str]:
    folder = sources_dir(root)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return {n for n in names if SourceMirror(root, n).promoted()}


def ago(ns: int | None) -> str:
    if not ns:
        return "never"
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") + \
        f" ({time.time() - ns / 1e9:.0f} s ago)"


@replica.command("status")
@replica_root_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(data_root, as_json):
    """Per source and volume: position, lag, last error."""
    if not os.path.exists(os.path.join(data_root, "replica.db")):
        raise UsageError(f"{data_root} is not a replica (no replica.db).", "Start one with 'ironfs replica run'.")
    state = ReplicaState(data_root)
    try:
        report = state.status(promoted_sources(data_root))
    finally:
        state.close()
    if as_json:
        print_json(report)
        return
    for source in report:
        flag = " (promoted: no longer followed)" if source["promoted"] else ""
        click.echo(f"{source['source']}  {source['url']}{flag}")
        click.echo(f"  last contact {ago(source['last_ok_ns'])}")
        if source["last_error"]:
            click.echo(f"  last error {ago(source['error_ns'])}: {source['last_error']}")
        if source["held_packs"]:
            click.echo(f"  holding {source['held_packs']} packs ({source['held_bytes']} bytes) the source removed")
        for v in source["volumes"]:
            line = f"  {v['account']}/{v['set']}: commit {v['position']} of {v['source_position']}"
            if v["lag_seconds"]:
                line += f", {v['lag_seconds']:.1f} s behind"
            click.echo(line)
            if v["last_error"] and v["position"] < v["source_position"]:
                click.echo(f"    last error {ago(v['error_ns'])}: {v['last_error']}")


@replica.command("promote")
@replica_root_option
@click.option("--source", "source_name", required=True, help="The name of the source that is gone.")
def promote(data_root, source_name):
    """Make the copy of a lost source a writable data root of its own."""
    mirror = SourceMirror(data_root, source_name)
    if not os.path.exists(os.path.join(mirror.root, "ironfs.json")):
        raise UsageError(f"This replica has no source named {source_name!r}.", "See 'ironfs replica status'.")
    mirror.promote()
    click.echo(f"{source_name} is promoted; a running 'ironfs replica run' stops following it.")
    click.echo(f"Serve it with: ironfs serve --data-root {mirror.root}")
    click.echo(f"Its certificate fingerprint (for 'ironcore login --fingerprint'): {DataRoot(mirror.root).fingerprint()}")


@replica.command("token")
@click.option("--data-root", envvar="IRONFS_DATA_ROOT", required=True, type=click.Path(file_okay=False),
              help="The source server's data root (or IRONFS_DATA_ROOT).")
@click.option("--name", default="replica", show_default=True, help="A name for the replica, kept with the token.")
def token(data_root, name):
    """On a source: a token that lets a replica read the replication feed, nothing else."""
    root = DataRoot(data_root)
    admins = [a["name"] for a in root.accounts.list() if a["admin"]]
    if not admins:
        raise UsageError("This data root has no admin account.")
    click.echo(root.accounts.issue_token(admins[0], f"replica:{name}", role="replica"))
