"""A backup's commit applied to the catalog beside the backup, in a process of its own.

Applying a snapshot's records to the SQLite catalog costs about 40 µs a file
(paths, versions, contents): for 20,000 files most of a second, which came
after everything else and alone. Here a process forked with the backup's
workers applies the records batch by batch while the commit is written, inside
one transaction that it commits once the commit file is published. A crash at
any moment leaves the catalog at the previous commit (the transaction dies
with the process) and the next open catches up from the log, as before. If
anything goes wrong in the process, the backup applies the published commit
from its file itself, the usual way. (A thread doing the same under the
backup's GIL measured slower than waiting for the work at the end.)"""
import logging
import multiprocessing
import os

import msgpack

from client.worker_process import become_worker
from ironfs.format.catalog import Catalog

logger = logging.getLogger(__name__)


class CatalogProcess:
    """The applier VolumeWriter.apply_live takes. Forks at once: make it while
    this process has no other thread (client.worker_process.safe_to_fork)."""

    def __init__(self, volume):
        self._conn, child = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("fork").Process(
            target=_serve, args=(child, os.getpid(), volume), name="catalog", daemon=True)
        self._process.start()
        child.close()
        self._broken = False

    def _send(self, message) -> None:
        if self._broken:
            return
        try:
            self._conn.send(message)
        except OSError as exc:   # the process is gone: the commit is applied the usual way
            logger.warning("the catalog process stopped (%s); the catalog is brought up to date at the end", exc)
            self._broken = True

    def begin(self, seq: int) -> None:
        self._send(("begin", seq))

    def feed(self, packed: bytes) -> None:
        self._send(("records", packed))

    def finish(self) -> bool:
        """The commit is published: True once the process has committed it."""
        self._send(("end",))
        if self._broken:
            return False
        try:
            error = self._conn.recv()
        except (EOFError, OSError) as exc:
            error = f"it stopped ({exc!r})"
            self._broken = True
        if error is not None:
            logger.warning("the catalog process could not apply the commit: %s; applying it from the log", error)
        return error is None

    def abort(self) -> None:
        self._send(("abort",))

    def close(self) -> None:
        self._send(("close",))
        self._conn.close()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _serve(conn, parent: int, volume) -> None:
    """The process: one transaction per commit, from "begin" to "end" or "abort".
    After an error it rolls back at once (the backup's own apply needs the
    write lock) and reports the error at "end"."""
    if not become_worker(parent):
        return
    catalog, seq, error, open_ = None, None, None, False
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        op = message[0]
        try:
            if op == "begin":
                seq, error = message[1], None
                catalog = catalog or Catalog(volume.catalog_path)
                open_ = catalog.begin_apply(seq)
                if not open_:
                    error = f"commit {seq} was applied already"
            elif op == "records" and open_:
                unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(message[1]), 1 << 20))
                unpacker.feed(message[1])
                catalog.apply_records(seq, (r for r in unpacker if r["t"] != "end"), volume.pack_index)
            elif op == "end":
                if open_:
                    open_ = False
                    catalog.end_apply(seq)
                conn.send(error)
            elif op == "abort" and open_:
                open_ = False
                catalog.db.execute("ROLLBACK")
            elif op == "close":
                return
        except Exception as exc:  # noqa: BLE001 - reported at "end"; the backup applies the commit itself
            error = error or f"{type(exc).__name__}: {exc}"
            if open_:
                open_ = False
                if catalog.db.in_transaction:   # SQLite may have rolled it back itself
                    catalog.db.execute("ROLLBACK")
            if op == "end":
                conn.send(error)
