"""A backup's commit applied to the catalog beside the backup, in a process of its own.

Applying a snapshot's records to the SQLite catalog costs about 40 µs a file
(paths, versions, contents): for 20,000 files most of a second, which came
after everything else and alone. Here a worker process (client.worker_process),
forked with the backup's other workers, applies the records batch by batch
while the commit is written, inside one transaction that it commits once the
commit file is published. A crash at any moment leaves the catalog at the
previous commit (the transaction dies with the process) and the next open
catches up from the log, as before. If anything goes wrong in the process, the
backup applies the published commit from its file itself, the usual way. (A
thread doing the same under the backup's GIL measured slower than waiting for
the work at the end.)"""
import logging

import msgpack

from client.worker_process import WorkerDied, Workers
from ironfs.errors import IroncoreError, MissingData
from ironfs.format.catalog import Catalog

logger = logging.getLogger(__name__)


class _Applier:
    """The worker's state: one transaction per commit, from begin to end or
    abort. After an error it rolls back at once (the backup's own apply needs
    the write lock) and reports the error at end."""

    def __init__(self, volume):
        self.volume, self.catalog, self.seq, self.error, self.open = volume, None, None, None, False

    def _fail(self, exc: Exception) -> None:
        self.error = self.error or f"{type(exc).__name__}: {exc}"
        if self.open:
            self.open = False
            if self.catalog.db.in_transaction:   # SQLite may have rolled it back itself
                self.catalog.db.execute("ROLLBACK")


def _begin(state: _Applier, seq: int) -> None:
    state.seq, state.error = seq, None
    try:
        state.catalog = state.catalog or Catalog(state.volume.catalog_path)
        state.open = state.catalog.begin_apply(seq)
        if not state.open:
            state.error = f"commit {seq} was applied already"
    except Exception as exc:  # noqa: BLE001 - reported at end; the backup applies the commit itself
        state._fail(exc)


def _run_pack_index(state: _Applier, name: str):
    """The index of a pack the run names: it is at hand (the run published or
    adopted the pack), so its absence is an error here, not a pack without blobs
    (which the catalog allows only when replaying a commit whose pack gc dropped)."""
    try:
        return state.volume.pack_index(name)
    except MissingData as exc:
        raise IroncoreError(f"the index of pack {name} of this run is not at hand ({exc.message})") from None


def _records(state: _Applier, packed: bytes) -> None:
    if not state.open:
        return
    try:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(packed), 1 << 20))
        unpacker.feed(packed)
        state.catalog.apply_records(state.seq, (r for r in unpacker if r["t"] != "end"),
                                    lambda name: _run_pack_index(state, name))
    except Exception as exc:  # noqa: BLE001 - as above
        state._fail(exc)


def _end(state: _Applier) -> str | None:
    """Commit the transaction; the error met, if any."""
    if state.open:
        state.open = False
        try:
            state.catalog.end_apply(state.seq)
        except Exception as exc:  # noqa: BLE001 - as above
            state._fail(exc)
    return state.error


def _abort(state: _Applier) -> None:
    if state.open:
        state._fail(RuntimeError("the run was given up"))


class CatalogProcess:
    """The applier VolumeWriter.apply_live takes. Forks at once: make it while
    this process has no other thread (client.worker_process.safe_to_fork)."""

    def __init__(self, volume):
        self._workers = Workers(1, lambda: _Applier(volume), name="catalog")
        self._broken = False

    def _submit(self, fn, *args):
        if self._broken:
            return None
        try:
            return self._workers.submit(fn, *args)
        except OSError as exc:   # the process is gone: the commit is applied the usual way
            logger.warning("the catalog process stopped (%s); the catalog is brought up to date at the end", exc)
            self._broken = True
            return None

    def begin(self, seq: int) -> None:
        self._submit(_begin, seq)

    def feed(self, packed: bytes) -> None:
        self._submit(_records, packed)

    def finish(self) -> bool:
        """The commit is published: True once the process has committed it."""
        job = self._submit(_end)
        if job is None:
            return False
        try:
            error = job.result()
        except (WorkerDied, OSError) as exc:
            error = f"it stopped ({exc})"
            self._broken = True
        if error is not None:
            logger.warning("the catalog process could not apply the commit: %s; applying it from the log", error)
        return error is None

    def abort(self) -> None:
        self._submit(_abort)

    def close(self) -> None:
        self._workers.shutdown()
