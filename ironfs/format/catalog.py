"""The catalog: a SQLite (WAL) index of a volume, derived from its commit log and
pack indexes, and rebuildable from them at any time.

It is a temporal tree. `paths` gives every name ever seen a stable id under its
parent; `versions` holds each state of a path with the range of commit numbers
in which it lives: a version is part of snapshot S when born <= S < died (died
NULL while live). Listing a folder at any snapshot is one indexed query, and an
unchanged file costs nothing per snapshot."""
import hashlib
import os
import sqlite3
from dataclasses import dataclass

import msgpack

from ironfs.errors import CorruptData, MissingData, VolumeFormatError
from ironfs.format.snapshots import name_snapshots

SCHEMA_VERSION = 1
ROOT = 0  # the implicit root folder; top-level entries have parent 0

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS commits(seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, time_ns INTEGER, host TEXT, info BLOB);
CREATE TABLE IF NOT EXISTS snapshots(seq INTEGER PRIMARY KEY, time_ns INTEGER NOT NULL, host TEXT,
    forgotten INTEGER NOT NULL DEFAULT 0, info BLOB);
CREATE TABLE IF NOT EXISTS packs(name TEXT PRIMARY KEY, size INTEGER NOT NULL, added INTEGER NOT NULL, dropped INTEGER);
CREATE TABLE IF NOT EXISTS blobs(id BLOB PRIMARY KEY, pack TEXT NOT NULL, offset INTEGER NOT NULL,
    length INTEGER NOT NULL, raw_length INTEGER NOT NULL, type INTEGER NOT NULL,
    damaged INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_pack ON blobs(pack);
CREATE TABLE IF NOT EXISTS contents(id BLOB PRIMARY KEY, size INTEGER NOT NULL, extents BLOB NOT NULL,
    sig BLOB, block_size INTEGER) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS paths(id INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name BLOB NOT NULL, UNIQUE(parent, name));
CREATE TABLE IF NOT EXISTS versions(id INTEGER PRIMARY KEY, path INTEGER NOT NULL, born INTEGER NOT NULL, died INTEGER,
    kind TEXT NOT NULL, mode INTEGER, uid INTEGER, gid INTEGER, user TEXT, grp TEXT, mtime_ns INTEGER,
    size INTEGER, content BLOB, target BLOB, xattrs BLOB, rdev INTEGER, link INTEGER);
CREATE INDEX IF NOT EXISTS versions_path ON versions(path, born);
CREATE INDEX IF NOT EXISTS versions_content ON versions(content);
CREATE TABLE IF NOT EXISTS checked_commits(seq INTEGER PRIMARY KEY, size INTEGER NOT NULL, trailer BLOB NOT NULL);
"""

# Tables whose rows are derived from the log; `verify` compares them with a rebuild.
DERIVED_TABLES = {
    "commits": "seq", "snapshots": "seq", "packs": "name", "blobs": "id", "contents": "id",
    "paths": "id", "versions": "id",
}

VERSION_COLUMNS = "kind, mode, uid, gid, user, grp, mtime_ns, size, content, target, xattrs, rdev, link"
# hard-link groups: only linked files have a `link`, so the index stays small
LINK_INDEX = "CREATE INDEX IF NOT EXISTS versions_link ON versions(link) WHERE link IS NOT NULL"


@dataclass(frozen=True)
class Entry:
    """One path as it stands in one snapshot."""

    path_id: int
    name: bytes
    kind: str
    mode: int
    uid: int
    gid: int
    user: str | None
    group: str | None
    mtime_ns: int
    size: int
    content: bytes | None
    target: bytes | None
    xattrs: list
    rdev: int | None
    born: int
    link: int | None = None   # hard-link group: files of a snapshot with the same one are one file

    @classmethod
    def from_row(cls, row) -> "Entry":
        (path_id, name, born, kind, mode, uid, gid, user, grp, mtime_ns, size, content, target, xattrs, rdev,
         link) = row
        return cls(path_id, bytes(name), kind, mode, uid, gid, user, grp, mtime_ns, size,
                   content, target, msgpack.unpackb(xattrs) if xattrs else [], rdev, born, link)


ENTRY_SELECT = ("SELECT p.id, p.name, v.born, v.kind, v.mode, v.uid, v.gid, v.user, v.grp, v.mtime_ns, v.size, "
                "v.content, v.target, v.xattrs, v.rdev, v.link FROM paths p JOIN versions v ON v.path = p.id ")
LIVE_AT = "v.born <= :s AND (v.died IS NULL OR v.died > :s)"
# contents that some snapshot still listed (not forgotten) uses: what gc keeps
LIVE_CONTENTS = ("SELECT DISTINCT v.content FROM versions v WHERE v.content IS NOT NULL AND EXISTS ("
                 "SELECT 1 FROM snapshots s WHERE s.forgotten = 0 AND s.seq >= v.born "
                 "AND (v.died IS NULL OR s.seq < v.died))")


def split_path(path: bytes) -> list[bytes]:
    """Split a stored path into names, refusing anything that could escape a folder."""
    parts = path.split(b"/")
    for part in parts:
        if part in (b"", b".", b"..") or b"\x00" in part:
            raise CorruptData(f"Catalog path {path!r} has an unsafe component {part!r}.")
    return parts


def add_missing_column(db, table: str, column: str) -> None:
    """Give a table made by an older version the column (declared as "name TYPE")
    that SCHEMA now ends it with; its rows get NULL."""
    name = column.split()[0]
    if name in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
        return
    try:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    except sqlite3.OperationalError as exc:   # another process added it first
        if "duplicate column" not in str(exc):
            raise


def check_link_group(rec: dict) -> int | None:
    """The hard-link group of a version record: absent, or a file's number in 1 .. 2^63-1."""
    link = rec.get("h")
    if link is not None and (type(link) is not int or not 0 < link < 1 << 63 or rec.get("k") != "f"):
        raise CorruptData(f"Version record of {rec.get('p')!r} has a link group {link!r} that is not a file's "
                          "number.")
    return link


class Catalog:
    """One SQLite connection to a volume's catalog. Not shared between threads:
    each thread opens its own (WAL lets readers run beside the one writer)."""

    def __init__(self, path: str):
        self.path = path
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=OFF")
        self.db.executescript(SCHEMA)
        add_missing_column(self.db, "versions", "link INTEGER")   # a catalog from before link groups: NULL, right
        self.db.execute(LINK_INDEX)
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self.db.execute("INSERT OR IGNORE INTO meta VALUES('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise VolumeFormatError(f"Catalog schema {row[0]} is not {SCHEMA_VERSION}.")
        self._dir_ids: dict[bytes, int] = {}
        self._made: set[int] = set()   # path ids inserted by the commit being applied

    def close(self) -> None:
        self.db.close()

    def prefetch(self) -> None:
        """Ask the kernel to read the catalog files ahead: a restore or listing then
        finds its lookups in memory instead of waiting on one random read each."""
        for suffix in ("", "-wal"):
            try:
                fd = os.open(self.path + suffix, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    # --- state ---------------------------------------------------------------
    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else row[0]

    @property
    def applied_seq(self) -> int:
        return int(self.get_meta("applied_seq", 0))

    # --- applying commits ------------------------------------------------------
    def apply(self, seq: int, records, load_pack_index) -> bool:
        """Apply one commit's records in one transaction, with `applied_seq`; False if
        another process applied it first. `load_pack_index(name)` returns a pack's index."""
        if not self.begin_apply(seq):
            return False
        try:
            self.apply_records(seq, records, load_pack_index)
            self.end_apply(seq)
            return True
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def begin_apply(self, seq: int) -> bool:
        """Open the transaction of commit `seq`; False (and none open) if it is
        applied already. Then apply_records, as often as needed, and end_apply;
        or ROLLBACK."""
        self._dir_ids.clear()
        self._made.clear()
        self.db.execute("BEGIN IMMEDIATE")
        applied = self.applied_seq
        if applied == seq - 1:
            return True
        self.db.execute("ROLLBACK")
        if applied >= seq:
            return False
        raise CorruptData(f"Commit {seq} applied out of order (catalog is at {applied}).")

    def apply_records(self, seq: int, records, load_pack_index) -> None:
        for rec in records:
            handler = getattr(self, "_rec_" + rec["t"], None)
            if handler is None:
                raise VolumeFormatError(f"Commit {seq} has a record of unknown type {rec['t']!r}.")
            handler(seq, rec, load_pack_index)

    def end_apply(self, seq: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES('applied_seq', ?)", (seq,))
        self.db.execute("COMMIT")

    def _rec_commit(self, seq, rec, _):
        if rec.get("seq") != seq:
            raise CorruptData(f"Commit file {seq} says it is commit {rec.get('seq')}.")
        info = {k: v for k, v in rec.items() if k not in ("t", "format", "seq", "kind", "time_ns", "host")}
        self.db.execute("INSERT INTO commits VALUES(?,?,?,?,?)",
                        (seq, rec["kind"], rec.get("time_ns"), rec.get("host"), msgpack.packb(info)))
        if rec["kind"] == "snapshot":
            self.db.execute("INSERT INTO snapshots(seq, time_ns, host, info) VALUES(?,?,?,?)",
                            (seq, rec["time_ns"], rec.get("host"), msgpack.packb(info)))

    def _rec_pack(self, seq, rec, load_pack_index):
        """A pack joins the volume. Replaying an old commit may name a pack that gc has
        since dropped and deleted: it joins without blobs (the later drop removes it;
        verify reports a missing pack that no commit drops)."""
        name = rec["name"]
        try:
            entries = load_pack_index(name)
        except MissingData:
            entries = []
        self.db.execute("INSERT INTO packs(name, size, added) VALUES(?,?,?) ON CONFLICT(name) DO UPDATE "
                        "SET dropped=NULL, added=excluded.added", (name, rec["size"], seq))
        self._insert_blobs(name, entries)

    def _insert_blobs(self, name: str, entries) -> None:
        """Rows for a pack's blobs: a blob some pack holds already keeps its row
        unless that copy is damaged."""
        self.db.executemany(
            "INSERT INTO blobs(id, pack, offset, length, raw_length, type) VALUES(?,?,?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET pack=excluded.pack, offset=excluded.offset, length=excluded.length, "
            "raw_length=excluded.raw_length, type=excluded.type, damaged=0 WHERE blobs.damaged=1",
            ((e.blob_id, name, e.offset, e.length, e.raw_length, e.type) for e in entries))

    # --- checking itself against the pack indexes -----------------------------------
    def packs_without_blobs(self) -> list[str]:
        """Live packs that no blob row points to (one indexed probe per pack). A
        sound catalog has none, or only packs whose every blob another pack holds."""
        return [name for (name,) in self.db.execute(
            "SELECT name FROM packs WHERE dropped IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM blobs WHERE blobs.pack = packs.name)")]

    def restore_blobs(self, name: str, entries) -> int:
        """Insert the rows of a listed pack's blobs that the catalog lacks, from the
        pack's index, in one transaction; how many there were."""
        missing = [e for e in entries if not self.has_blob(e.blob_id)]
        if missing:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self._insert_blobs(name, missing)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return len(missing)

    def _rec_content(self, seq, rec, _):
        cid = rec["id"]
        self.db.execute("INSERT OR REPLACE INTO contents VALUES(?,?,?,?,?)",
                        (cid, rec["size"], msgpack.packb(rec["ext"]), msgpack.packb(rec.get("sig") or []),
                         rec.get("bs")))

    def _path_id(self, path: bytes, create: bool) -> int | None:
        return self._find_path(path, create)[0]

    def _find_path(self, path: bytes, create: bool) -> tuple[int | None, bool]:
        """(path id, made now). Below a folder made in this commit a name is inserted
        at once (it is new unless this commit named it before: then the insert does
        nothing and the row is looked up), which saves a lookup per new file."""
        parts = split_path(path)
        parent = ROOT
        prefix = b""
        made = False
        for i, name in enumerate(parts):
            prefix = prefix + b"/" + name if prefix else name
            cached = self._dir_ids.get(prefix)
            if cached is not None:
                parent = cached
                made = False
                continue
            row = None
            if create and parent in self._made:
                cur = self.db.execute("INSERT INTO paths(parent, name) VALUES(?,?) "
                                      "ON CONFLICT(parent, name) DO NOTHING", (parent, name))
                if cur.rowcount == 1:
                    parent, made = cur.lastrowid, True
                    self._remember_made(parent)
                else:
                    row = self.db.execute("SELECT id FROM paths WHERE parent=? AND name=?", (parent, name)).fetchone()
                    parent, made = row[0], False
            else:
                row = self.db.execute("SELECT id FROM paths WHERE parent=? AND name=?", (parent, name)).fetchone()
                if row is None:
                    if not create:
                        return None, False
                    parent = self.db.execute("INSERT INTO paths(parent, name) VALUES(?,?)", (parent, name)).lastrowid
                    made = True
                    self._remember_made(parent)
                else:
                    parent, made = row[0], False
            if i < len(parts) - 1:
                if len(self._dir_ids) >= 100_000:   # bounded memory on huge trees
                    self._dir_ids.clear()
                self._dir_ids[prefix] = parent
        return parent, made

    def _remember_made(self, pid: int) -> None:
        if len(self._made) >= 100_000:   # bounded memory; forgetting only costs lookups
            self._made.clear()
        self._made.add(pid)

    def _rec_ver(self, seq, rec, _):
        pid, made = self._find_path(rec["p"], create=True)
        if not made:   # a path made just now has no versions yet (path ids are never reused)
            self.db.execute("UPDATE versions SET died=? WHERE path=? AND died IS NULL", (seq, pid))
        xattrs = rec.get("x")
        link = check_link_group(rec)
        self.db.execute(
            f"INSERT INTO versions(path, born, {VERSION_COLUMNS}) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (pid, seq, rec["k"], rec.get("mode"), rec.get("uid"), rec.get("gid"), rec.get("user"),
             rec.get("group"), rec.get("mtime_ns"), rec.get("size", 0), rec.get("c"), rec.get("target"),
             msgpack.packb(xattrs) if xattrs else None, rec.get("rdev"), link))

    def _rec_del(self, seq, rec, _):
        pid = self._path_id(rec["p"], create=False)
        if pid is not None:
            self.db.execute("UPDATE versions SET died=? WHERE path=? AND died IS NULL", (seq, pid))

    def _rec_stats(self, seq, rec, _):
        row = self.db.execute("SELECT info FROM snapshots WHERE seq=?", (seq,)).fetchone()
        if row is None:
            raise CorruptData(f"Commit {seq} has run statistics but is not a snapshot.")
        info = msgpack.unpackb(row[0])
        info["stats"] = {k: v for k, v in rec.items() if k != "t"}
        self.db.execute("UPDATE snapshots SET info=? WHERE seq=?", (msgpack.packb(info), seq))

    def _rec_damaged(self, seq, rec, _):
        self.db.executemany("UPDATE blobs SET damaged=1 WHERE id=?", ((b,) for b in rec["blobs"]))

    def _rec_forget(self, seq, rec, _):
        self.db.executemany("UPDATE snapshots SET forgotten=? WHERE seq=?", ((seq, s) for s in rec["snapshots"]))

    def _rec_uncontent(self, seq, rec, _):
        self.db.executemany("DELETE FROM contents WHERE id=?", ((cid,) for cid in rec["ids"]))

    def _rec_drop(self, seq, rec, _):
        self.db.execute("UPDATE packs SET dropped=? WHERE name=?", (seq, rec["name"]))
        self.db.execute("DELETE FROM blobs WHERE pack=?", (rec["name"],))

    # --- queries ------------------------------------------------------------------
    def snapshots(self, include_forgotten: bool = False) -> list[dict]:
        """The snapshots by seq, each with its unique name (named over the whole history)."""
        rows = self.db.execute("SELECT seq, time_ns, host, forgotten, info FROM snapshots ORDER BY seq").fetchall()
        history = [{"seq": r[0], "time_ns": r[1], "host": r[2], "forgotten": r[3], **msgpack.unpackb(r[4])}
                   for r in rows]
        name_snapshots(history)
        return history if include_forgotten else [s for s in history if not s["forgotten"]]

    def list_dir(self, parent: int, snapshot: int, after: bytes | None = None, limit: int | None = None) -> list[Entry]:
        """Children of `parent` at `snapshot`, by name; `after`/`limit` page through huge folders."""
        sql = ENTRY_SELECT + "WHERE p.parent = :p AND " + LIVE_AT
        args = {"p": parent, "s": snapshot}
        if after is not None:
            sql += " AND p.name > :a"
            args["a"] = after
        sql += " ORDER BY p.name"
        if limit is not None:
            sql += " LIMIT :l"
            args["l"] = limit
        return [Entry.from_row(r) for r in self.db.execute(sql, args)]

    def iter_dir(self, parent: int, snapshot: int, page: int = 2000):
        after = None
        while True:
            batch = self.list_dir(parent, snapshot, after, page)
            yield from batch
            if len(batch) < page:
                return
            after = batch[-1].name

    def entry(self, path_id: int, snapshot: int) -> Entry | None:
        """A path, by its id, as it stands in a snapshot."""
        row = self.db.execute(ENTRY_SELECT + "WHERE p.id = :id AND " + LIVE_AT, {"id": path_id, "s": snapshot}).fetchone()
        return Entry.from_row(row) if row else None

    def child(self, parent: int, name: bytes, snapshot: int) -> Entry | None:
        row = self.db.execute(ENTRY_SELECT + "WHERE p.parent = :p AND p.name = :n AND " + LIVE_AT,
                              {"p": parent, "n": name, "s": snapshot}).fetchone()
        return Entry.from_row(row) if row else None

    def lookup(self, path: bytes, snapshot: int) -> Entry | None:
        parent = ROOT
        entry = None
        for name in split_path(path):
            entry = self.child(parent, name, snapshot)
            if entry is None:
                return None
            parent = entry.path_id
        return entry

    def path_versions(self, path: bytes) -> list[tuple[Entry, int | None]]:
        """Every version `path` has had over the whole history, oldest first, each with
        the commit that ended it (None: it still lives); one indexed query, whatever the
        number of snapshots. Empty if the path never existed."""
        pid = self._path_id(path, create=False)
        if pid is None:
            return []
        rows = self.db.execute(ENTRY_SELECT.replace(" FROM ", ", v.died FROM ", 1)
                               + "WHERE p.id = ? ORDER BY v.born", (pid,))
        return [(Entry.from_row(r[:-1]), r[-1]) for r in rows]

    def link_group(self, link: int, snapshot: int) -> tuple[int, int]:
        """(how many paths of hard-link group `link` live in `snapshot`, the smallest
        of their path ids): a file's link count, and one inode number for the group."""
        count, first = self.db.execute("SELECT count(*), min(v.path) FROM versions v WHERE v.link = :l AND "
                                       + LIVE_AT, {"l": link, "s": snapshot}).fetchone()
        return count, first

    def content(self, cid: bytes):
        row = self.db.execute("SELECT size, extents, sig, block_size FROM contents WHERE id=?", (cid,)).fetchone()
        if row is None:
            return None
        return {"id": cid, "size": row[0], "ext": msgpack.unpackb(row[1]), "sig": msgpack.unpackb(row[2]) if row[2] else [],
                "bs": row[3]}

    def contents(self, cids) -> dict:
        """content id -> content, as `content()` gives it, for many at once."""
        ids = list(cids)
        out = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for cid, size, ext, sig, bs in self.db.execute(
                    "SELECT id, size, extents, sig, block_size FROM contents "
                    f"WHERE id IN ({','.join('?' * len(part))})", part):
                out[cid] = {"id": cid, "size": size, "ext": msgpack.unpackb(ext),
                            "sig": msgpack.unpackb(sig) if sig else [], "bs": bs}
        return out

    def has_content(self, cid: bytes) -> bool:
        return self.db.execute("SELECT 1 FROM contents WHERE id=?", (cid,)).fetchone() is not None

    def damaged_blobs(self) -> set[bytes]:
        return {r[0] for r in self.db.execute("SELECT id FROM blobs WHERE damaged=1")}

    def contents_using(self, blob_ids: set[bytes], missing: bool = False, live_only: bool = False) -> set[bytes]:
        """Contents whose data or signature uses any of `blob_ids` (and, with
        `missing`, any blob that no pack holds); with `live_only`, only contents of
        snapshots still listed. One pass over all contents: only for the rare damaged
        volume and for verify."""
        if not blob_ids and not missing:
            return set()
        known = None
        if missing:
            known = {r[0] for r in self.db.execute("SELECT id FROM blobs")}
        out = set()
        for cid, ext, sig in self.db.execute("SELECT id, extents, sig FROM contents"
                                             + (f" WHERE id IN ({LIVE_CONTENTS})" if live_only else "")):
            for blob, _, _ in msgpack.unpackb(ext) + (msgpack.unpackb(sig) if sig else []):
                if blob is not None and (blob in blob_ids or (known is not None and blob not in known)):
                    out.add(cid)
                    break
        return out

    def blob(self, blob_id: bytes):
        """(pack, offset, length, raw_length) of a sound blob, or None."""
        return self.db.execute("SELECT pack, offset, length, raw_length FROM blobs WHERE id=? AND damaged=0",
                               (blob_id,)).fetchone()

    def blob_locations(self, blob_ids) -> dict:
        """blob id -> (pack, offset, length, raw_length) for the sound ones among blob_ids."""
        ids = list(blob_ids)
        out = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for row in self.db.execute("SELECT id, pack, offset, length, raw_length FROM blobs WHERE damaged=0 "
                                       f"AND id IN ({','.join('?' * len(part))})", part):
                out[row[0]] = row[1:]
        return out

    def has_blob(self, blob_id: bytes) -> bool:
        return self.db.execute("SELECT 1 FROM blobs WHERE id=? AND damaged=0", (blob_id,)).fetchone() is not None

    def live_blob_ids(self):
        """Every blob id that a listed snapshot's file data or signatures use (with repeats)."""
        for ext, sig in self.db.execute(f"SELECT extents, sig FROM contents WHERE id IN ({LIVE_CONTENTS})"):
            for blob, _, _ in msgpack.unpackb(ext) + (msgpack.unpackb(sig) if sig else []):
                if blob is not None:
                    yield blob

    def dead_contents(self):
        """Content ids no listed snapshot uses (gc drops them with their data)."""
        for (cid,) in self.db.execute(f"SELECT id FROM contents WHERE id NOT IN ({LIVE_CONTENTS})"):
            yield cid

    def live_packs(self) -> list[tuple[str, int]]:
        return self.db.execute("SELECT name, size FROM packs WHERE dropped IS NULL ORDER BY name").fetchall()

    def paths_of_content(self, cid: bytes, limit: int = 50) -> list[tuple[bytes, int, int | None]]:
        """(full path, born, died) of versions that use a content, for damage reports."""
        out = []
        for pid, born, died in self.db.execute(
                "SELECT path, born, died FROM versions WHERE content=? ORDER BY born LIMIT ?", (cid, limit)):
            out.append((self.full_path(pid), born, died))
        return out

    def full_path(self, pid: int) -> bytes:
        names = []
        while pid != ROOT:
            parent, name = self.db.execute("SELECT parent, name FROM paths WHERE id=?", (pid,)).fetchone()
            names.append(bytes(name))
            pid = parent
        return b"/".join(reversed(names))

    def table_digest(self, table: str) -> str:
        """A digest of a derived table's rows in key order, for comparing with a rebuild."""
        h = hashlib.sha256()
        for row in self.db.execute(f"SELECT * FROM {table} ORDER BY {DERIVED_TABLES[table]}"):
            h.update(msgpack.packb(list(row)))
        return h.hexdigest()



def remove_catalog_files(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass
