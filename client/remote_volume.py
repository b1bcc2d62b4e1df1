"""A set's volume on a server, worked on through a local mirror of its metadata.

    $IRONCORE_HOME/volumes/<volume id>/volume.json      as the server holds it
    $IRONCORE_HOME/volumes/<volume id>/log/             the commit log, fetched
    $IRONCORE_HOME/volumes/<volume id>/index/<pack>     pack indexes, fetched or kept from uploads
    $IRONCORE_HOME/volumes/<volume id>/packs/           packs written by a run, until uploaded
    $IRONCORE_HOME/volumes/<volume id>/catalog.db       built from the mirrored log, as locally

The backup and restore engines run unchanged on it: the catalog answers every
question locally, packs are uploaded as soon as they are written, the commit
goes up last, and file data is read back with ranged requests. Nothing here
can remove anything on the server; the server checks all it receives."""
import contextlib
import json
import logging
import os
import struct
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from client import config
from client.keys import open_volume_key
from client.remote import ServerClient, ServerError
from ironfs.errors import CorruptData, IroncoreError, MissingData, VolumeBusy
from ironfs.format import log as commitlog, pack as packfmt
from ironfs.format.fsutil import fsync_dir, publish, raise_if_full, tmp_name, write_atomic
from ironfs.format.volume import ReadShape, Volume, VolumeWriter

logger = logging.getLogger(__name__)

SIZE = struct.Struct("<Q")
READ_CACHE_BYTES = 64 << 20     # decrypted restores re-read little; this bounds memory, not speed
UPLOADS_AHEAD = 2               # packs written but not yet uploaded: bounds the local spool
LEASE_HEADER = "Ironcore-Lease"


class RemoteVolume(Volume):
    read_shape = ReadShape(files=64, blobs=32, workers=4, small_workers=4, local=False)
    local_copy = None   # a client.localcopy.LocalCopy that also keeps each uploaded pack

    def __init__(self, server: ServerClient, set_name: str, info: dict | None = None):
        self.server, self.set_name = server, set_name
        self.info = info or server.call("GET", self.api("")).json()
        root = os.path.join(config.home(), "volumes", self.info["volume"]["id"])
        for sub in ("log", "packs", "index"):
            os.makedirs(os.path.join(root, sub), mode=0o700, exist_ok=True)
        write_atomic(os.path.join(root, "volume.json"), json.dumps(self.info["volume"], indent=1).encode())
        super().__init__(root)
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._cached = 0
        self._cache_lock = threading.Lock()

    def api(self, path: str) -> str:
        return f"/api/v1/sets/{self.set_name}{path}"

    # --- keys ---------------------------------------------------------------------------
    def open_key(self, read_secret) -> None:
        """The key kept on this machine, else one opened with the secret `read_secret()` gives (then kept)."""
        open_volume_key(self, read_secret)

    # --- the mirrored log --------------------------------------------------------------------
    def sync(self) -> None:
        """Fetch the commits the mirror lacks; drop local ones the server never accepted."""
        head = self.server.call("GET", self.api("/log"), params={"after": 0}).json()["head"]
        log_dir = os.path.join(self.root, "log")
        local = commitlog.list_seqs(log_dir)
        stale = [s for s in local if s > head]
        for seq in stale:
            os.unlink(self.commit_path(seq))
        if stale and os.path.exists(self.catalog_path):
            self.rebuild_catalog()
        have = set(local) - set(stale)
        for seq in range(1, head + 1):
            if seq not in have:
                self._fetch_commit(seq)

    def _fetch_commit(self, seq: int) -> None:
        data = self.server.call("GET", self.api(f"/log/{seq}")).content
        path = tmp_name(os.path.join(self.root, "log"), "fetch-")
        with open(path, "wb") as f:
            f.write(data)
        try:
            for _ in commitlog.read_commit(path, label=f"{seq} of set {self.set_name} on the server"):
                pass
        except CorruptData as exc:
            os.unlink(path)
            raise CorruptData(exc.message, "The server's administrator must repair the set's commit log "
                                           "(docs/OPERATIONS.md, 'A damaged commit log').") from None
        publish(path, self.commit_path(seq))

    def refresh(self):
        self.sync()
        return super().refresh()

    # --- packs ---------------------------------------------------------------------------
    def _index_path(self, name: str) -> str:
        return os.path.join(self.root, "index", name)

    def keep_index(self, name: str, size: int, tail: bytes, durable: bool = True) -> None:
        """Keep a pack's index here; not `durable`: renamed into place without
        fsync (the caller syncs it later with sync_index, off the backup's path)."""
        path = self._index_path(name)
        if durable:
            write_atomic(path, SIZE.pack(size) + tail)
            return
        tmp = tmp_name(os.path.dirname(path))
        try:
            with open(tmp, "wb") as f:
                f.write(SIZE.pack(size) + tail)
            os.rename(tmp, path)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise_if_full(exc, path)

    def sync_index(self, name: str) -> None:
        fd = os.open(self._index_path(name), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(os.path.join(self.root, "index"))

    def pack_index(self, name: str) -> list[packfmt.IndexEntry]:
        try:
            with open(self._index_path(name), "rb") as f:
                raw = f.read()
            return packfmt.parse_index(raw[SIZE.size:], SIZE.unpack_from(raw)[0], name)
        except FileNotFoundError:
            pass
        except (CorruptData, struct.error):   # cut short by a crash before it was synced: fetch it again
            logger.warning("the kept index of pack %s is damaged; fetching it again", name)
        try:
            response = self.server.call("GET", self.api(f"/packs/{name}/index"))
        except ServerError as exc:
            if exc.status == 404:   # dropped by gc since the commit that named it
                raise MissingData(f"Pack {name} is no longer on the server.") from None
            raise
        size, tail = int(response.headers["Ironcore-Pack-Size"]), response.content
        entries = packfmt.parse_index(tail, size, name)
        self.keep_index(name, size, tail)
        return entries

    def read_sealed(self, pack: str, offset: int, length: int) -> bytes:
        key = (pack, offset, length)
        with self._cache_lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
                return data
        response = self.server.call("GET", self.api(f"/packs/{pack}"),
                                    headers={"Range": f"bytes={offset}-{offset + length - 1}"})
        data = response.content
        if response.status_code != 206 or len(data) != length:
            raise CorruptData(f"Pack {pack} on the server is shorter than its index says.")
        with self._cache_lock:
            self._cache[key] = data
            self._cached += length
            while self._cached > READ_CACHE_BYTES:
                self._cached -= len(self._cache.popitem(last=False)[1])
        return data

    def writer(self) -> "RemoteWriter":
        return RemoteWriter(self)


class RemoteWriter(VolumeWriter):
    """The writer of a server volume: holds the set's lease (renewed while it runs),
    uploads each pack once written, and uploads the commit last."""

    def __init__(self, volume: RemoteVolume):
        self.remote = volume
        self.lease = None
        self._stop = threading.Event()
        self._uploads = ThreadPoolExecutor(1, thread_name_prefix="pack-upload")
        self._pending = []
        try:
            super().__init__(volume)
        except BaseException:
            self._end_lease()
            raise

    def claim(self) -> None:
        """Take the set's lease (after the local lock, so two runs here cannot share one).
        Holding that lock, this process knows that a lease still held by this installation
        is a dead run's (a SIGKILL, a power cut), so it asks to replace it at once instead of
        waiting for it to expire; other machines' live leases are never taken over."""
        try:
            lease = self.remote.server.call("POST", self.remote.api("/lease"), json={
                "host": config.host_name(), "machine": config.machine_id(), "pid": os.getpid(),
                "replaces_own": True}).json()
        except ServerError as exc:
            if exc.status == 409:
                raise VolumeBusy(exc.message, exc.hint) from None
            raise
        self.lease = lease["lease"]
        self._lease_headers = {LEASE_HEADER: self.lease}
        self._server_orphans = [o["name"] for o in lease["orphans"]]
        threading.Thread(target=self._renew, args=(lease["seconds"] / 3,), daemon=True).start()

    def start_commit(self, kind: str, **header) -> commitlog.CommitWriter:
        header.setdefault("host", config.host_name())
        return super().start_commit(kind, **header)

    def _renew(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.remote.server.call("PUT", self.remote.api("/lease"), headers=self._lease_headers, retry_for=every)
            except IroncoreError as exc:
                logger.warning("could not renew the lease on set %s: %s", self.remote.set_name, exc.message)

    def _adopt_orphans(self) -> None:
        """Packs a run that died left here (uploaded now) or on the server: reuse them."""
        for name, path in sorted(self.volume.all_pack_files().items()):
            self._keep_index(name, path)
            self._upload(name, path)
            self._server_orphans.append(name)
        live = {n for (n,) in self.catalog.db.execute("SELECT name FROM packs")}
        for name in sorted(set(self._server_orphans) - live):
            entries = self.volume.pack_index(name)
            size = self._pack_size(name)
            self.adopted.append((name, size))
            self._run_blobs.executemany("INSERT OR IGNORE INTO b VALUES(?)", ((e.blob_id,) for e in entries))
            for e in entries:
                self.filter.add(e.blob_id)
            logger.info("adopting pack %s (%d blobs) left by an interrupted run", name, len(entries))

    def _pack_size(self, name: str) -> int:
        with open(self.remote._index_path(name), "rb") as f:
            return SIZE.unpack(f.read(SIZE.size))[0]

    def _keep_index(self, name: str, path: str) -> None:
        """Keep a pack's index (read from its local file) in the mirror, before a
        commit names the pack: the catalog process takes the pack's blobs in from
        it while the upload may still be on its way (the server has no index yet)."""
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            f.seek(-packfmt.FOOTER.size, os.SEEK_END)
            count, _ = packfmt.FOOTER.unpack(f.read(packfmt.FOOTER.size))
            want = packfmt.FOOTER.size + count * packfmt.ENTRY.size
            f.seek(-want, os.SEEK_END)
            self.remote.keep_index(name, size, f.read(want), durable=False)   # synced by _upload

    def _publish_pack(self, writer) -> None:
        super()._publish_pack(writer)
        name, _ = self.packs[-1]
        self._keep_index(name, self.volume.pack_path(name))

    def _upload(self, name: str, path: str) -> None:
        """Send one pack (streamed from its file; its index is kept already, and
        synced here before the commit naming the pack can go up), drop the local
        copy. A pack the server rejects as damaged on the way is sent again."""
        self.remote.sync_index(name)
        for attempt in range(3):
            try:
                self._send(f"/packs/{name}", path)
                break
            except ServerError as exc:
                if exc.status != 400 or attempt == 2 or "rejected whole" not in exc.message:
                    raise
                logger.warning("pack %s was damaged on the way; sending it again", name)
        if self.remote.local_copy is not None:
            self.remote.local_copy.keep_pack(name, path)
        os.unlink(path)

    def _send(self, route: str, path: str) -> None:
        """PUT a file, streamed in bounded memory, with its length declared (the server checks both)."""
        def body():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk
        self.remote.server.call("PUT", self.remote.api(route), body=body,
                                headers={**self._lease_headers, "Content-Length": str(os.path.getsize(path))})

    def flush_pack(self) -> None:
        before = len(self.packs)
        super().flush_pack()
        if len(self.packs) > before:
            name, _ = self.packs[-1]
            self._pending.append(self._uploads.submit(self._upload, name, self.volume.pack_path(name)))
            while len(self._pending) > UPLOADS_AHEAD:
                self._pending.pop(0).result()

    def _wait_uploads(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    def publish_commit(self, commit: commitlog.CommitWriter) -> None:
        self._wait_uploads()
        path = commit.finish()
        try:
            self._send(f"/commits/{commit.seq}", path)
        except BaseException:
            os.unlink(path)
            raise

    def discard(self, remove_packs: bool) -> None:
        for fut in self._pending:
            fut.cancel()
        for fut in self._pending:
            if not fut.cancelled():
                fut.exception()
        self._pending = []
        if remove_packs:
            for name, _ in self.packs:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.remote._index_path(name))
        super().discard(remove_packs)

    def __exit__(self, exc_type, exc, tb):
        if isinstance(exc, ServerError) and exc.status == 507:   # over quota: keep nothing of this run here either
            self.discard(remove_packs=True)
            self.close()
            return False
        return super().__exit__(exc_type, exc, tb)

    def _end_lease(self) -> None:
        self._stop.set()
        self._uploads.shutdown(wait=True)
        if self.lease is None:
            return
        try:
            self.remote.server.call("DELETE", self.remote.api("/lease"), headers=self._lease_headers, retry_for=10)
        except IroncoreError as exc:
            logger.info("lease on %s not released (%s); it expires by itself", self.remote.set_name, exc.message)

    def close(self) -> None:
        self._end_lease()
        super().close()

