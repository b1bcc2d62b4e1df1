"""Garbage collection of a set's volume, on the server and without any key.

After retention has forgotten snapshots, their data may be used by nothing
listed. gc finds the blobs that listed snapshots use (file data and delta
signatures), drops packs with no such blob, and rewrites packs that are
mostly dead by copying their live blobs, still sealed, into new packs. One
`repack` commit records it: `uncontent` for contents nothing listed uses, then
`drop` for the old packs, then `pack` for the new ones. The order on disk
keeps every step crash-safe: new packs are published before the commit (a
crash leaves orphans, which the next writer adopts), and old pack files are
deleted only after the commit is durable (a crash leaves dropped files, which
the next gc deletes). gc holds the set's writer lease throughout, so no
backup runs that could still reference what it drops; the next backup's
client learns of the drops from the log before it deduplicates."""
import logging
import os
import sqlite3
import time

from ironfs.format import log as commitlog, pack as packfmt
from ironfs.format.faults import crashpoint

logger = logging.getLogger(__name__)

DEAD_SHARE = 0.1        # rewrite a pack when at least this share of its bytes is dead (restic prunes at 5%)
RECORD_BATCH = 10_000   # ids per uncontent record
GC_HOST = "ironfs gc"


def collect(sets, account: str, name: str, dry_run: bool = False) -> dict:
    lease = sets.acquire_lease(account, name, GC_HOST, pid=os.getpid())   # a killed gc frees the set at once
    try:
        return _collect(sets, account, name, dry_run)
    finally:
        sets.release_lease(account, name, lease["lease"])


def _collect(sets, account: str, name: str, dry_run: bool) -> dict:
    vol = sets.volume(account, name)
    catalog = vol.refresh()
    live = sqlite3.connect("", isolation_level=None)   # a private temporary file: memory stays bounded
    live.execute("CREATE TABLE b(id BLOB PRIMARY KEY) WITHOUT ROWID")
    batch = []
    for blob_id in catalog.live_blob_ids():
        batch.append((blob_id,))
        if len(batch) >= RECORD_BATCH:
            live.executemany("INSERT OR IGNORE INTO b VALUES(?)", batch)
            batch = []
    live.executemany("INSERT OR IGNORE INTO b VALUES(?)", batch)
    report = {"set": name, "packs_before": 0, "bytes_before": 0, "dropped": [], "repacked": [], "new_packs": [],
              "bytes_freed": 0, "dry_run": dry_run, "commit": None}
    plans = []
    for pack, size in catalog.live_packs():
        report["packs_before"] += 1
        report["bytes_before"] += size
        blobs = catalog.db.execute("SELECT id, offset, length, raw_length, type FROM blobs WHERE pack=? "
                                   "ORDER BY offset", (pack,)).fetchall()
        kept = [b for b in blobs if live.execute("SELECT 1 FROM b WHERE id=?", (b[0],)).fetchone()]
        live_bytes = sum(b[2] for b in kept)
        if not kept:
            report["dropped"].append(pack)
        elif live_bytes <= (1 - DEAD_SHARE) * sum(b[2] for b in blobs):   # blob bytes; the index is not dead
            report["repacked"].append(pack)
            plans.append((pack, kept))
    dead_contents = list(catalog.dead_contents())
    report["dead_contents"] = len(dead_contents)
    if dry_run or not (report["dropped"] or report["repacked"] or dead_contents):
        _remove_dropped_files(sets, account, vol, catalog)
        return report
    packs_dir = os.path.join(vol.root, "packs")
    writer = None
    for pack, kept in plans:
        for blob_id, offset, length, raw_length, blob_type in kept:
            if writer is None:
                writer = packfmt.PackWriter(packs_dir)
            writer.add(blob_id, blob_type, vol.read_sealed(pack, offset, length), raw_length)
            if writer.size >= vol.pack_target:
                report["new_packs"].append(writer.finish())
                writer = None
    if writer is not None:
        report["new_packs"].append(writer.finish())
    for _, size in report["new_packs"]:
        sets.count_stored(account, size)
    crashpoint("gc-packs-written")
    seq = (vol.seqs() or [0])[-1] + 1
    commit = commitlog.CommitWriter(os.path.join(vol.root, "log"), seq,
                                    {"kind": "repack", "time_ns": time.time_ns(), "host": GC_HOST})
    for i in range(0, len(dead_contents), RECORD_BATCH):
        commit.add({"t": "uncontent", "ids": dead_contents[i:i + RECORD_BATCH]})
    for pack in report["dropped"] + report["repacked"]:
        commit.add({"t": "drop", "name": pack})
    for pack, size in report["new_packs"]:
        commit.add({"t": "pack", "name": pack, "size": size})
    commit.finish()
    crashpoint("gc-committed")
    catalog = vol.refresh()
    report["commit"] = seq
    report["bytes_freed"] = _remove_dropped_files(sets, account, vol, catalog) - sum(s for _, s in report["new_packs"])
    logger.info("event=gc account=%s set=%s dropped=%d repacked=%d new=%d", account, name, len(report["dropped"]),
                len(report["repacked"]), len(report["new_packs"]))
    return report


def _remove_dropped_files(sets, account: str, vol, catalog) -> int:
    """Delete the files of packs the log has dropped (also those an interrupted gc left)."""
    freed = 0
    for (pack,) in catalog.db.execute("SELECT name FROM packs WHERE dropped IS NOT NULL").fetchall():
        path = vol.pack_path(pack)
        try:
            size = os.path.getsize(path)
            os.unlink(path)
        except FileNotFoundError:
            continue
        sets.count_stored(account, -size)
        freed += size
    return freed
