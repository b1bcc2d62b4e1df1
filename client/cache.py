"""The client's file cache: what each path looked like at the last snapshot, so an
unchanged file (same size, mtime, ctime, inode) is neither read nor sent again.

It is a SQLite file per volume under $IRONCORE_HOME/cache. Every run writes in
one transaction that commits only after the volume's commit did; a lost or stale
cache is rebuilt from the volume's catalog (then files are read and hashed once
more, and dedup keeps them from being stored again)."""
import hashlib
import os
import sqlite3

import msgpack

from ironfs.format.catalog import ROOT, add_missing_column

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS entries(path BLOB PRIMARY KEY, run INTEGER NOT NULL, kind TEXT NOT NULL,
    size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER, dev INTEGER, vdigest BLOB, content BLOB,
    link INTEGER);
CREATE INDEX IF NOT EXISTS entries_ino ON entries(dev, ino);
"""


PUT_BATCH = 1000


class FileCache:
    def __init__(self, folder: str, volume_id: bytes):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        self.path = os.path.join(folder, volume_id.hex() + ".db")
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        add_missing_column(self.db, "entries", "link INTEGER")   # a cache from before link groups
        self.volume_id = volume_id
        self._puts: dict[bytes, tuple] = {}   # rows not yet written: one executemany per PUT_BATCH
        self._empty = False                   # no entries before this run: every get() is None

    @property
    def seq(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
        return int(row[0]) if row else 0

    def begin(self) -> int:
        """Start a run's transaction; returns the run number."""
        self.db.execute("BEGIN IMMEDIATE")
        row = self.db.execute("SELECT value FROM meta WHERE key='run'").fetchone()
        run = (int(row[0]) if row else 0) + 1
        self.db.execute("INSERT OR REPLACE INTO meta VALUES('run', ?)", (run,))
        self._empty = self.db.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is None
        return run

    def _flush(self) -> None:
        if self._puts:
            rows, self._puts = self._puts.values(), {}
            self.db.executemany("INSERT OR REPLACE INTO entries VALUES(?,?,?,?,?,?,?,?,?,?,?)", rows)

    def commit(self, seq: int) -> None:
        self._flush()
        self.db.execute("INSERT OR REPLACE INTO meta VALUES('seq', ?)", (seq,))
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        self._puts = {}
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def get(self, path: bytes):
        row = self._puts.get(path)
        if row is not None:
            return row[2:]
        if self._empty:
            return None
        return self.db.execute("SELECT kind, size, mtime_ns, ctime_ns, ino, dev, vdigest, content, link FROM entries "
                               "WHERE path=?", (path,)).fetchone()

    def by_inode(self, dev: int, ino: int):
        self._flush()
        return self.db.execute("SELECT path, size, mtime_ns, content, link FROM entries WHERE dev=? AND ino=? "
                               "AND kind='f' LIMIT 1", (dev, ino)).fetchone()

    def put(self, path: bytes, run: int, kind: str, st: os.stat_result | None, vdigest: bytes, content: bytes | None,
            link: int | None = None):
        self._puts[path] = (path, run, kind, st and st.st_size, st and st.st_mtime_ns, st and st.st_ctime_ns,
                            st and st.st_ino, st and st.st_dev, vdigest, content, link)
        if len(self._puts) >= PUT_BATCH:
            self._flush()

    def keep(self, path: bytes, run: int) -> None:
        """Carry an entry (and everything below it) into this run unchanged."""
        self._flush()
        self.db.execute("UPDATE entries SET run=? WHERE path=? OR (path > ? AND path < ?)",
                        (run, path, path + b"/", path + b"0"))

    def has_below(self, path: bytes) -> bool:
        """Whether the last snapshot holds anything below folder `path` (b"": the root)."""
        self._flush()
        if not path:
            return self.db.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is not None
        return self.db.execute("SELECT 1 FROM entries WHERE path > ? AND path < ? LIMIT 1",
                               (path + b"/", path + b"0")).fetchone() is not None

    def unseen(self, run: int):
        """Paths of the previous snapshot not met in this run (a cursor: bounded memory)."""
        self._flush()
        return (r[0] for r in self.db.execute("SELECT path FROM entries WHERE run != ?", (run,)))

    def drop_unseen(self, run: int) -> None:
        self._flush()
        self.db.execute("DELETE FROM entries WHERE run != ?", (run,))

    def reset_from_catalog(self, catalog, snapshot: int, digest_of) -> None:
        """Rebuild from the volume's view of `snapshot`: no inode or ctime is known,
        so every file is read once more on the next run (and deduplicated)."""
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("DELETE FROM entries")
        if snapshot:
            stack = [(ROOT, b"")]
            while stack:
                parent, prefix = stack.pop()
                for e in catalog.iter_dir(parent, snapshot):
                    path = prefix + b"/" + e.name if prefix else e.name
                    self.db.execute("INSERT INTO entries(path, run, kind, size, mtime_ns, vdigest, content, link) "
                                    "VALUES(?,0,?,?,?,?,?,?)",
                                    (path, e.kind, e.size, e.mtime_ns, digest_of(e), e.content, e.link))
                    if e.kind == "d":
                        stack.append((e.path_id, path))
        self.db.execute("INSERT OR REPLACE INTO meta VALUES('seq', ?)", (snapshot,))
        self.db.execute("COMMIT")

    def close(self) -> None:
        self._puts = {}
        self.db.close()


def version_digest(rec: dict) -> bytes:
    """A stable digest of a version's stored fields (path excluded); the link group
    counts only where there is one, so versions recorded before groups keep theirs."""
    fields = [rec.get(k) for k in ("k", "mode", "uid", "gid", "user", "group", "mtime_ns", "size", "c", "target",
                                   "x", "rdev")]
    if rec.get("h") is not None:
        fields.append(rec["h"])
    return hashlib.blake2b(msgpack.packb(fields, use_bin_type=True), digest_size=16).digest()


def entry_digest(e) -> bytes:
    """version_digest of a catalog Entry, equal to that of the record it came from."""
    return version_digest({"k": e.kind, "mode": e.mode, "uid": e.uid, "gid": e.gid, "user": e.user, "group": e.group,
                           "mtime_ns": e.mtime_ns, "size": e.size, "c": e.content, "target": e.target,
                           "x": e.xattrs or None, "rdev": e.rdev, "h": e.link})
