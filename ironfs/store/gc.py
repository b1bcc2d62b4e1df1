"""Garbage collection of a set's volume, on the server and without any key.

After retention has forgotten snapshots, their data may be used by nothing
listed. gc finds the blobs that listed snapshots use (file data and delta
signatures), drops packs with no such blob, and rewrites packs that are
mostly dead, or damaged and healed since, by copying their live blobs, still
sealed, into new packs. One `repack` commit records it: `uncontent` for
contents nothing listed uses, then `drop` for the old packs, then `pack` for
the new ones. The order on disk
keeps every step crash-safe: new packs are published before the commit (a
crash leaves orphans, which the next writer adopts or the next gc deletes,
as it deletes those of dead or refused backup runs), and old pack files are
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
        return _collect(sets, account, name, dry_run, lease["acquired"])
    finally:
        sets.release_lease(account, name, lease["lease"])


def _collect(sets, account: str, name: str, dry_run: bool, leased_at: float) -> dict:
    vol = sets.volume(account, name)
    catalog = vol.refresh()
    # Orphans: packs that no commit names, uploaded before gc took the set's lease (so by
    # runs that died or were refused; a live run would hold the lease): nothing adopts them.
    orphans = [n for n, _ in sets.orphan_packs(vol) if os.path.getmtime(vol.pack_path(n)) < leased_at]
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
              "bytes_freed": 0, "dry_run": dry_run, "commit": None,
              "orphans": orphans, "damaged_retired": []}
    healed = set(_healed_damaged_packs(vol, catalog, live))
    plans = []
    for pack, size in catalog.live_packs():
        report["packs_before"] += 1
        report["bytes_before"] += size
        blobs = catalog.db.execute("SELECT id, offset, length, raw_length, type, damaged FROM blobs WHERE pack=? "
                                   "ORDER BY offset", (pack,)).fetchall()
        is_live = [live.execute("SELECT 1 FROM b WHERE id=?", (b[0],)).fetchone() is not None for b in blobs]
        if any(b[5] and used for b, used in zip(blobs, is_live)):
            continue   # damage not healed yet: left as it is (a copy would pass the damaged blob off as sound)
        kept = [b[:5] for b, used in zip(blobs, is_live) if used and not b[5]]
        live_bytes = sum(b[2] for b in kept)
        if pack in healed:
            report["damaged_retired"].append(pack)
        if not kept:
            report["dropped"].append(pack)
        elif pack in healed or live_bytes <= (1 - DEAD_SHARE) * sum(b[2] for b in blobs):   # the index is not dead
            report["repacked"].append(pack)
            plans.append((pack, kept))
    dead_contents = list(catalog.dead_contents())
    report["dead_contents"] = len(dead_contents)
    if not dry_run:
        report["bytes_freed"] += _delete_packs(sets, account, vol, report["orphans"])
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
    report["bytes_freed"] += (_remove_dropped_files(sets, account, vol, catalog)
                              - sum(s for _, s in report["new_packs"]))
    logger.info("event=gc account=%s set=%s dropped=%d repacked=%d new=%d orphans=%d damaged_retired=%d", account,
                name, len(report["dropped"]), len(report["repacked"]), len(report["new_packs"]), len(orphans),
                len(report["damaged_retired"]))
    return report


def _healed_damaged_packs(vol, catalog, live) -> list[str]:
    """Live packs that fail their SHA-256 and hold blobs a `damage` commit recorded, each of
    which now has a sound copy in another pack (the next backup stored it again) or is used
    by no listed snapshot: rewritten without those blobs, they leave verify clean. Without
    a key gc cannot tell damaged blobs from sound ones, so a pack whose damage no
    `verify --read-data` located is left alone."""
    damaged = set()
    for (seq,) in catalog.db.execute("SELECT seq FROM commits WHERE kind='damage'").fetchall():
        for rec in commitlog.read_commit(vol.commit_path(seq)):
            if rec["t"] == "damaged":
                damaged.update(rec["blobs"])
    if not damaged:
        return []
    out = []
    for pack, _ in catalog.live_packs():
        recorded = [e.blob_id for e in vol.pack_index(pack) if e.blob_id in damaged]
        if recorded and all(_replaced(catalog, live, pack, b) for b in recorded) \
                and packfmt.file_sha256(vol.pack_path(pack)) != pack:
            out.append(pack)
    return out


def _replaced(catalog, live, pack: str, blob_id: bytes) -> bool:
    """The volume reads this blob from a sound copy elsewhere, or no listed snapshot uses it."""
    where = catalog.blob(blob_id)
    return (where is not None and where[0] != pack) or \
        live.execute("SELECT 1 FROM b WHERE id=?", (blob_id,)).fetchone() is None


def _remove_dropped_files(sets, account: str, vol, catalog) -> int:
    """Delete the files of packs the log has dropped (also those an interrupted gc left)."""
    return _delete_packs(sets, account, vol, [pack for (pack,) in catalog.db.execute(
        "SELECT name FROM packs WHERE dropped IS NOT NULL").fetchall()])


def _delete_packs(sets, account: str, vol, packs) -> int:
    """Delete these pack files (those still there) from the account's usage and the disk; the bytes freed."""
    freed = 0
    for pack in packs:
        path = vol.pack_path(pack)
        try:
            size = os.path.getsize(path)
            os.unlink(path)
        except FileNotFoundError:
            continue
        sets.count_stored(account, -size)
        freed += size
    return freed
