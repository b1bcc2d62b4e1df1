"""The replica's own records (`<replica root>/replica.db`, SQLite): per source and
volume, how far it is, how far the source is, since when it lags and the last
error; and the packs the sources dropped that are held for --delete-delay.

The position that matters for correctness is on disk: a volume's commits are
published only after all their packs, so its log is always a prefix of the
source's. This database adds what `ironfs replica status` shows, and which
commits' post-steps (holding dropped packs) are done."""
import os
import sqlite3
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS sources(
    name TEXT PRIMARY KEY, url TEXT NOT NULL, last_ok_ns INTEGER, last_error TEXT, error_ns INTEGER);
CREATE TABLE IF NOT EXISTS volumes(
    source TEXT NOT NULL, account TEXT NOT NULL, set_name TEXT NOT NULL,
    head INTEGER NOT NULL DEFAULT 0, source_head INTEGER NOT NULL DEFAULT 0, applied INTEGER NOT NULL DEFAULT 0,
    behind_since_ns INTEGER, last_applied_ns INTEGER, last_error TEXT, error_ns INTEGER,
    PRIMARY KEY(source, account, set_name));
CREATE TABLE IF NOT EXISTS held(
    source TEXT NOT NULL, account TEXT NOT NULL, set_name TEXT NOT NULL, pack TEXT NOT NULL,
    size INTEGER NOT NULL, until_ns INTEGER NOT NULL, PRIMARY KEY(source, account, set_name, pack));
"""


class ReplicaState:
    def __init__(self, root: str):
        self.db = sqlite3.connect(os.path.join(root, "replica.db"), timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")   # status, not position: a lost last update is harmless
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- sources -----------------------------------------------------------------------
    def source_seen(self, name: str, url: str) -> None:
        self.db.execute("INSERT INTO sources(name, url) VALUES(?,?) ON CONFLICT(name) DO UPDATE SET url=excluded.url",
                        (name, url))

    def source_ok(self, name: str) -> None:
        self.db.execute("UPDATE sources SET last_ok_ns=?, last_error=NULL WHERE name=?", (time.time_ns(), name))

    def source_error(self, name: str, message: str) -> None:
        self.db.execute("UPDATE sources SET last_error=?, error_ns=? WHERE name=?", (message, time.time_ns(), name))

    # --- volumes -----------------------------------------------------------------------
    def volume_seen(self, source: str, account: str, set_name: str, head: int, source_head: int) -> None:
        """The source's head as the feed just told it; `head` is the replica's own."""
        now = time.time_ns()
        self.db.execute(
            "INSERT INTO volumes(source, account, set_name, head, source_head, behind_since_ns) VALUES(?,?,?,?,?,?) "
            "ON CONFLICT DO UPDATE SET head=excluded.head, source_head=excluded.source_head, "
            "behind_since_ns=CASE WHEN excluded.source_head <= excluded.head THEN NULL "
            "ELSE coalesce(behind_since_ns, excluded.behind_since_ns) END",
            (source, account, set_name, head, source_head, now if source_head > head else None))

    def volume_applied(self, source: str, account: str, set_name: str, seq: int) -> None:
        """Commit `seq` is published and its post-steps are done."""
        self.db.execute(
            "UPDATE volumes SET head=?, applied=?, last_applied_ns=?, last_error=NULL, "
            "behind_since_ns=CASE WHEN source_head <= ? THEN NULL ELSE behind_since_ns END "
            "WHERE source=? AND account=? AND set_name=?",
            (seq, seq, time.time_ns(), seq, source, account, set_name))

    def applied(self, source: str, account: str, set_name: str) -> int:
        row = self.db.execute("SELECT applied FROM volumes WHERE source=? AND account=? AND set_name=?",
                              (source, account, set_name)).fetchone()
        return row[0] if row else 0

    def volume_error(self, source: str, account: str, set_name: str, message: str) -> None:
        self.db.execute("UPDATE volumes SET last_error=?, error_ns=? WHERE source=? AND account=? AND set_name=?",
                        (message, time.time_ns(), source, account, set_name))

    # --- packs the source dropped --------------------------------------------------------
    def hold(self, source: str, account: str, set_name: str, pack: str, size: int, until_ns: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO held VALUES(?,?,?,?,?,?)",
                        (source, account, set_name, pack, size, until_ns))

    def expired(self, now_ns: int) -> list[tuple]:
        return self.db.execute("SELECT source, account, set_name, pack FROM held WHERE until_ns <= ?",
                               (now_ns,)).fetchall()

    def release(self, source: str, account: str, set_name: str, pack: str) -> None:
        self.db.execute("DELETE FROM held WHERE source=? AND account=? AND set_name=? AND pack=?",
                        (source, account, set_name, pack))

    # --- what `ironfs replica status` shows ------------------------------------------------
    def status(self, promoted: set[str]) -> list[dict]:
        now = time.time_ns()
        out = []
        for name, url, ok_ns, error, error_ns in self.db.execute(
                "SELECT name, url, last_ok_ns, last_error, error_ns FROM sources ORDER BY name").fetchall():
            volumes = []
            for account, set_name, head, source_head, since, applied_ns, v_error, v_error_ns in self.db.execute(
                    "SELECT account, set_name, head, source_head, behind_since_ns, last_applied_ns, last_error, "
                    "error_ns FROM volumes WHERE source=? ORDER BY account, set_name", (name,)).fetchall():
                volumes.append({"account": account, "set": set_name, "position": head, "source_position": source_head,
                                "lag_seconds": round((now - since) / 1e9, 3) if since else 0.0,
                                "last_applied_ns": applied_ns, "last_error": v_error, "error_ns": v_error_ns})
            held_n, held_bytes = self.db.execute("SELECT count(*), coalesce(sum(size), 0) FROM held WHERE source=?",
                                                 (name,)).fetchone()
            out.append({"source": name, "url": url, "promoted": name in promoted, "last_ok_ns": ok_ns,
                        "last_error": error, "error_ns": error_ns, "held_packs": held_n, "held_bytes": held_bytes,
                        "volumes": volumes})
        return out
